"""The Snakemake front end: dry runs and lint of the real workflow, the SLURM profile, the conda environment, and
one end-to-end run on the tiny configuration (tests/configs/tiny.yaml) in a scratch folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib

import pandas as pd
import pytest
import yaml

from conftest import REPO

TINY = REPO / "tests" / "configs" / "tiny.yaml"
pytestmark = pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")


def snakemake(*args, cwd=REPO, check=True, timeout=600):
    cmd = ["snakemake", "-s", str(REPO / "Snakefile"), *args]
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> job count from Snakemake's "Job stats" table."""
    jobs, table = {}, False
    for line in output.splitlines():
        if line.startswith("job ") and "count" in line:
            table = True
            continue
        if table:
            m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
            if m and m.group(1) != "total":
                jobs[m.group(1)] = int(m.group(2))
            elif line.strip().startswith("total"):
                break
    return jobs


def test_dry_run_plans_every_stage(tmp_path):
    out = snakemake("-n", "--cores", "2", "-d", str(tmp_path), "--configfile", str(REPO / "params.yaml"))
    jobs = planned_jobs(out.stdout + out.stderr)
    for rule in ("generate_builtin", "prepare", "train_supernet", "sample_strategies", "score_strategies",
                 "analyze", "derive", "select_standalone", "finetune_table", "validate_ranking", "report", "all"):
        assert jobs.get(rule) == 1, (rule, jobs)


def test_lint_is_clean():
    out = snakemake("--lint", check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "Congratulations" in text or "Lints for" not in text, text


def test_slurm_profile_resolves(tmp_path):
    profile = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    res = profile["set-resources"]["train_supernet"]
    assert {"mem_mb", "runtime", "cpus_per_task"} <= set(res) and ("gres" in res or "gpu" in res)
    out = subprocess.run(["snakemake", "-s", str(REPO / "Snakefile"), "--profile",
                          str(REPO / "workflow/profiles/slurm"), "-n", "-d", str(tmp_path), "--configfile",
                          str(REPO / "params.yaml")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "gres=gpu:1" in out.stdout + out.stderr


def test_default_profile_parses():
    profile = yaml.safe_load((REPO / "workflow/profiles/default/config.yaml").read_text())
    assert profile["cores"] == "all"


def _requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_conda_env_lists_the_project_dependencies():
    env = yaml.safe_load((REPO / "workflow/envs/stfusion.yaml").read_text())
    deps = env["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    conda_names = {_requirement_name(d.split("=")[0]) for d in deps if isinstance(d, str)}
    assert "python" in conda_names and "pip" in conda_names
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(_requirement_name(p) for p in pip) == sorted(_requirement_name(p) for p in project)
    assert sorted(p.replace(" ", "") for p in pip) == sorted(p.replace(" ", "") for p in project)


# ------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The whole workflow on the tiny configuration, given as --configfile over a copy of params.yaml."""
    work = tmp_path_factory.mktemp("snakemake_tiny")
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    out = snakemake("--cores", "2", "--configfile", str(TINY), "-d", str(work), cwd=work, timeout=900)
    return work, out


@pytest.mark.slow
def test_tiny_pipeline_outputs(tiny_run):
    work, _ = tiny_run
    res = work / "results"
    ranking = pd.read_csv(res / "strategies" / "ranking.csv")
    assert {"strategy", "log_prob", "top1", "rank", "source", "top1_motion", "top1_appearance", "top1_test",
            "top1_plain_bn", "top1_recal"} <= set(ranking.columns)
    assert list(ranking["rank"]) == list(range(1, len(ranking) + 1))
    assert ranking["top1"].is_monotonic_decreasing
    assert {"all-S", "all-ST", "all-S+ST"} <= set(ranking["name"])
    pref = pd.read_csv(res / "analysis" / "preference.csv")
    assert {"P(S)", "P(ST)", "P(S+ST)", "P(none)", "p_S", "p_ST", "keep_prob_rule"} <= set(pref.columns)
    assert len(pref) == 3  # tiny template: 1 + 2 fusion layers
    for png in ("preference.png", "scatter.png", "drop_rates.png"):
        assert (res / "analysis" / png).read_bytes()[:4] == b"\x89PNG"
    fid = json.loads((res / "validation" / "ranking_fidelity.json").read_text())
    assert {"kendall_tau", "spearman_rho", "n"} <= set(fid) and fid["n"] >= 6
    derived = pd.read_csv(res / "derived" / "strategies.csv")
    finetuned = pd.read_csv(res / "finetune" / "accuracy.csv")
    assert set(finetuned["id"]) == set(derived["id"])
    metrics = json.loads((res / "metrics.json").read_text())
    assert metrics["seed"] == 0 and "torch" in metrics["versions"]
    report = (res / "report.md").read_text()
    for heading in ("Checks (METHOD.md §9)", "Motion vs appearance", "Layer level", "Ranking fidelity",
                    "Time per stage"):
        assert heading in report
    assert len(re.findall(r"\*\*(PASS|FAIL)\*\*", report)) >= 5
    for stage in ("train_supernet", "score_strategies", "finetune", "validate_ranking"):
        assert re.search(rf"\| {stage}\s+\|", report), stage
    for log in ("prepare", "train_supernet", "score_strategies", "report"):
        assert (work / "logs" / f"{log}.log").stat().st_size > 0
    assert any((work / "logs" / "finetune").glob("*.log"))
    # --configfile changed the configuration: the commands read the effective copy, not params.yaml
    assert list((work / ".snakemake" / "stfusion").glob("params-*.yaml"))


@pytest.mark.slow
def test_tiny_pipeline_reruns_only_what_a_parameter_changes(tiny_run):
    work, _ = tiny_run
    out = snakemake("-n", "--cores", "2", "--configfile", str(TINY), "-d", str(work), cwd=work)
    assert "Nothing to be done" in out.stdout + out.stderr
    tiny = yaml.safe_load(TINY.read_text())
    changed = work / "changed.yaml"
    tiny["scoring"]["calib_batches"] = 2
    changed.write_text(yaml.safe_dump(tiny))
    out = snakemake("-n", "--cores", "2", "--configfile", str(changed), "-d", str(work), cwd=work)
    jobs = planned_jobs(out.stdout + out.stderr)
    assert "score_strategies" in jobs and "report" in jobs
    for upstream in ("generate_builtin", "prepare", "train_supernet", "sample_strategies"):
        assert upstream not in jobs, jobs


@pytest.mark.slow
def test_tiny_pipeline_states_the_checks(tiny_run):
    """What the tiny run can show: every check is stated, and the product structure of the marginals holds."""
    work, _ = tiny_run
    report = (work / "results" / "report.md").read_text()
    rows = {m.group(1): m.group(2)
            for m in re.finditer(r"^\| (\d\w?)\. [^|]*\| (\*\*PASS\*\*|\*\*FAIL\*\*|n/a) \|", report, re.M)}
    assert {"1", "2", "3a", "3b", "3c", "4", "5"} <= set(rows), rows
    assert rows["5"] == "**PASS**"  # the product structure holds whatever the training did
    ranking = pd.read_csv(work / "results" / "strategies" / "ranking.csv")
    all_s = ranking[ranking["name"] == "all-S"].iloc[0]
    assert 0.0 <= all_s["top1_motion"] <= 1.0 and 0.0 <= all_s["top1_appearance"] <= 1.0


@pytest.mark.slow
def test_tiny_fidelity_study_is_its_own_target(tiny_run):
    """`snakemake fidelity`: 4 strategies x 2 seeds (1 epoch each) on the tiny run, nothing else rerun."""
    work, _ = tiny_run
    out = snakemake("--cores", "2", "--configfile", str(TINY), "-d", str(work), "fidelity", cwd=work)
    jobs = planned_jobs(out.stdout + out.stderr)
    assert jobs.get("train_fidelity") == 8 and jobs.get("fidelity") == 1, jobs
    assert "train_supernet" not in jobs and "report" not in jobs
    res = work / "results" / "fidelity"
    study = json.loads((res / "fidelity.json").read_text())
    assert study["n_strategies"] == 4 and study["n_seeds"] == 2
    assert {"supernet", "plain_bn", "log_prob", "ceiling", "topk_overlap", "regret", "differences"} <= set(study)
    assert study["train_seconds"] > 0 and study["wall_seconds"] > 0
    table = pd.read_csv(res / "table.csv")
    assert {"seed0", "seed1", "standalone_mean", "supernet_top1_recal"} <= set(table.columns)
    assert table[["seed0", "seed1"]].notna().all().all()
    assert {"all-S", "all-ST", "all-S+ST"} <= set(table["name"])
    assert (res / "fidelity.png").read_bytes()[:4] == b"\x89PNG"
    assert "Kendall tau-b" in (res / "fidelity.md").read_text()
    assert len(list((work / "checkpoints" / "fidelity").glob("seed*/*/model.pt"))) == 8


# ----------------------------------------------------------------------------------- the real default run
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("STFUSION_SLOW"),
                    reason="the default pipeline takes minutes: set STFUSION_SLOW=1")
def test_default_pipeline_means_something(tmp_path):
    """The default configuration on the built-in benchmark shows what the method should show."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    snakemake("--cores", "all", "-d", str(tmp_path), cwd=tmp_path, timeout=1800)
    res = tmp_path / "results"
    ranking = pd.read_csv(res / "strategies" / "ranking.csv")
    all_s = ranking[ranking["name"] == "all-S"].iloc[0]
    assert ranking["top1_motion"].max() - all_s["top1_motion"] >= 0.15, "all-S is not clearly below on motion"
    pref = pd.read_csv(res / "analysis" / "preference.csv")
    assert (pref[["P(ST)", "P(S+ST)"]].max(axis=1) > pref["P(S)"]).any()
    fid = json.loads((res / "validation" / "ranking_fidelity.json").read_text())
    assert fid["n"] >= 6 and fid["kendall_tau"] is not None
