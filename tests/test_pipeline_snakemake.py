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
from stfusion.config.layout import LAYOUT
from stfusion.config.loading import resolve_params

SEED0 = LAYOUT.of_seed(0)  # the tiny configuration's one supernet

TINY = REPO / "tests" / "configs" / "tiny.yaml"
pytestmark = pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")


def snakemake(*args, cwd=REPO, check=True, timeout=600, snakefile=REPO / "Snakefile"):
    cmd = ["snakemake", "-s", str(snakefile), *args]
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


#: the rules run once per seed of `seeds` (a job each)
PER_SEED_RULES = ("train_supernet", "sample_strategies", "score_strategies", "analyze")
STAGE_RULES = ("generate_builtin", "prepare", "train_supernet", "sample_strategies", "score_strategies", "analyze",
               "derive", "select_standalone", "finetune_table", "validate_ranking", "report")


@pytest.mark.parametrize("snakefile, target", [("Snakefile", "default"), ("workflow/Snakefile", "all")])
def test_dry_run_plans_every_stage(tmp_path, snakefile, target):
    """The workflow is workflow/Snakefile; the top-level Snakefile includes it. Without a params.yaml in the
    working folder the packaged defaults drive it."""
    out = snakemake("-n", "--cores", "2", "-d", str(tmp_path), snakefile=REPO / snakefile)
    jobs = planned_jobs(out.stdout + out.stderr)
    n_seeds = len(yaml.safe_load((REPO / "params.yaml").read_text())["seeds"])
    for rule in (*STAGE_RULES, "pool_seeds", target):
        assert jobs.get(rule) == (n_seeds if rule in PER_SEED_RULES else 1), (rule, jobs)


def test_lint_is_clean():
    out = snakemake("--lint", check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "Congratulations" in text or "Lints for" not in text, text


@pytest.mark.parametrize("config, line", [
    ("gate:\n  kl_kk: 3\n", "stfusion: error: unknown parameter gate.kl_kk (allowed here: init_p, keep_prob, "),
    ("data:\n  dataset: ucf101\n  root: no/such/folder\n",
     "stfusion: error: dataset folder not found: no/such/folder (set data.root to the folder that holds the videos)"),
])
def test_a_bad_configfile_under_snakemake_is_one_line(tmp_path, config, line):
    """`snakemake --cores all --configfile my.yaml` with a typo or a missing dataset folder: the commands' one
    line, no traceback."""
    (tmp_path / "my.yaml").write_text(config)
    out = snakemake("-n", "--cores", "1", "--configfile", "my.yaml", cwd=tmp_path, check=False)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith(line), out.stderr
    assert "File " not in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_your_ucf101_folder_plans_the_pipeline(tmp_path):
    """README, first hour: `snakemake --cores all --config preset=ucf101 data='{dataset: ucf101, root: ...}'` on a
    UCF101 folder (videos and ucfTrainTestlist/ inside it) plans every stage from `prepare` on (a dry run: the
    preparation itself is tests/test_data_formats.py's and tests/test_videos_end_to_end.py's), with the profile
    that makes a rerun after Ctrl-C resume."""
    root = tmp_path / "UCF-101"
    (root / "ucfTrainTestlist").mkdir(parents=True)
    (root / "ucfTrainTestlist" / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 YoYo\n")
    (root / "ucfTrainTestlist" / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nYoYo/v_YoYo_g08_c01.avi 2\n")
    (root / "ucfTrainTestlist" / "testlist01.txt").write_text("YoYo/v_YoYo_g01_c01.avi\n")
    for rel in ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "YoYo/v_YoYo_g08_c01.avi", "YoYo/v_YoYo_g01_c01.avi"):
        (root / rel).parent.mkdir(exist_ok=True)
        (root / rel).write_bytes(b"")
    out = snakemake("-n", "--cores", "all", "--config", "preset=ucf101", f"data={{dataset: ucf101, root: {root}}}",
                    cwd=tmp_path)
    jobs = planned_jobs(out.stdout + out.stderr)
    assert "generate_builtin" not in jobs and all(jobs.get(r) == 1 for r in ("prepare", "pool_seeds", "report"))
    assert jobs["train_supernet"] == len(resolve_params(None, {"preset": "ucf101"})["seeds"])  # one a seed
    # after Ctrl-C the same command resumes: Snakemake finds profiles/default by itself, and it reruns the
    # interrupted job (rerun-incomplete) instead of stopping with IncompleteFilesException; the training command
    # resumes from last.pt (tests/test_fault_tolerance.py)
    assert f"workflow specific profile {REPO / 'profiles' / 'default'}" in out.stdout + out.stderr
    assert yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())["rerun-incomplete"] is True


#: one job of each training rule: their runs wait for a selection (a checkpoint), so they are asked for by name
TRAINING_TARGETS = ("all", "results/validation/runs/stb.json", "results/fidelity/runs/seed1/sst.json")
TRAINING_RULES = ("train_supernet", "train_standalone", "train_fidelity")


def _slurm_dry_run(tmp_path, *configfiles, targets=TRAINING_TARGETS, workdir=None) -> str:
    out = subprocess.run(["snakemake", "-s", str(REPO / "Snakefile"), "--profile",
                          str(REPO / "workflow/profiles/slurm"), "-n", "-d", str(workdir or tmp_path), *targets,
                          "--configfile", str(REPO / "params.yaml"), *map(str, configfiles)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout + out.stderr


def _job(text: str, rule: str) -> dict[str, str]:
    """The resources and the shell command Snakemake plans for ``rule`` (from the dry run's job listing)."""
    block = text[text.index(f"rule {rule}:"):]
    block = block[: block.index("\n\n")]
    res = re.search(r"^\s*resources: (.*)$", block, re.M).group(1)
    out = dict(kv.split("=", 1) for kv in re.split(r", (?=\w+=)", res))
    out["shell"] = re.search(r"^Shell command: (.*)$", block, re.M).group(1)
    return out


SIGNAL = "--signal=USR1@300 --ntasks-per-node=1 --requeue"


def test_slurm_profile_resolves(tmp_path):
    profile = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["retries"] == 1
    # no preemptible resubmission: a training job requeues itself (stfusion.engine.slurm), other failures retry once
    assert "preemptible-rules" not in profile and "set-threads" not in profile
    assert set(profile["set-resources"]) == {"train_supernet", "finetune", *TRAINING_RULES}
    text = _slurm_dry_run(tmp_path)
    job = _job(text, "train_supernet")
    # one GPU, one node, one task; the warning signal 300 s before the time limit; a single process
    assert job["gres"] == "gpu:1" and job["nodes"] == "1" and job["runtime"] == "720"
    assert job["slurm_extra"] == SIGNAL
    assert job["shell"].startswith("python -m stfusion.engine.slurm --launch python -m stfusion.cli train-supernet ")
    assert _job(text, "score_strategies")["gres"] == "gpu:1"
    # the stand-alone runs of the default run's check and of the fidelity study: the same request, launch and
    # preemption handling
    for rule in TRAINING_RULES[1:]:
        job = _job(text, rule)
        assert (job["gres"], job["nodes"], job["slurm_extra"], job["runtime"]) == ("gpu:1", "1", SIGNAL, "720")
        command = f"python -m stfusion.engine.slurm --launch python -m stfusion.cli {rule.replace('_', '-')} "
        assert job["shell"].startswith(command)
    assert "train-fidelity --seed-index 1 --strategy sst " in _job(text, "train_fidelity")["shell"]


def test_slurm_asks_for_no_gpu_when_the_device_is_cpu(tmp_path):
    """compute.device: cpu: no gres on any job (a CPU-only cluster refuses any); prepare's CPUs are data.workers."""
    cpu = tmp_path / "cpu.yaml"
    cpu.write_text(yaml.safe_dump({"compute": {"device": "cpu"}, "data": {"workers": 3}}))
    text = _slurm_dry_run(tmp_path, cpu)
    assert "gres=" not in text
    assert re.search(r"rule prepare:.*?\n\s*threads: 3\n", text, re.S), text[:3000]


def test_slurm_dry_run_requests_nodes_and_gpus_and_launches_torchrun(tmp_path):
    """compute.nodes: 2, gpus_per_node: 4: the sbatch request (--nodes=2 --gres=gpu:4 --ntasks-per-node=1
    --signal=USR1@300) and srun + torchrun with a c10d rendezvous, 4 processes a node with 8 / 4 threads each."""
    multi = tmp_path / "multi.yaml"
    multi.write_text(yaml.safe_dump({"compute": {"nodes": 2, "gpus_per_node": 4, "max_restarts": 5}}))
    text = _slurm_dry_run(tmp_path, multi)
    for rule, threads in zip(TRAINING_RULES, (2, 1, 1)):
        job = _job(text, rule)
        assert job["nodes"] == "2" and job["gres"] == "gpu:4", job
        assert job["slurm_extra"] == SIGNAL
        shell = job["shell"]
        assert shell.startswith("python -m stfusion.engine.slurm --launch srun --overlap --nodes=2 --ntasks-per-node=1 "
                                "python -m stfusion.engine.launch ")
        for arg in ("--nnodes=2", "--nproc-per-node=4", "--max-restarts=5", "--rdzv-backend=c10d",
                    f"-m stfusion.cli {rule.replace('_', '-')}", f"--threads {threads}"):
            assert arg in shell, (arg, shell)


def test_default_profile_parses():
    profile = yaml.safe_load((REPO / "workflow/profiles/default/config.yaml").read_text())
    assert profile["cores"] == "all"


def test_conda_env_installs_this_version_of_stfusion():
    """`snakemake --use-conda` in a folder written by `stfusion init` (no package there): the environment holds
    stfusion itself, at the version of the workflow (its dependencies come with it)."""
    from stfusion import __version__

    env = yaml.safe_load((REPO / "workflow/envs/stfusion.yaml").read_text())
    deps = env["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert "pip" in deps and any(str(d).startswith("python=") for d in deps)
    assert pip == [f"stfusion=={__version__}"]
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"] == __version__


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
    assert ranking["exposure"].between(0, 1).all() and (ranking["exposure_joint"] <= ranking["exposure"]).all()
    assert (ranking["extrapolated"] == (ranking["exposure"] < 0.05)).all()
    pref = pd.read_csv(res / "analysis" / "preference.csv")
    assert {"P(S)", "P(ST)", "P(S+ST)", "P(none)", "p_S", "p_ST", "keep_prob_rule"} <= set(pref.columns)
    assert len(pref) == 3  # tiny template: 1 + 2 fusion layers
    for png in (LAYOUT.preference_plot, LAYOUT.scatter_plot, SEED0.drop_rates_plot, SEED0.preference_plot):
        assert (work / png).read_bytes()[:4] == b"\x89PNG"
    fid = json.loads((res / "validation" / "ranking_fidelity.json").read_text())
    assert {"kendall_tau", "spearman_rho", "n"} <= set(fid) and fid["n"] >= 6
    derived = pd.read_csv(res / "derived" / "strategies.csv")
    finetuned = pd.read_csv(res / "finetune" / "accuracy.csv")
    assert set(finetuned["id"]) == set(derived["id"])
    metrics = json.loads((res / "metrics.json").read_text())
    assert metrics["seed"] == 0 and "torch" in json.loads((res / "versions.json").read_text())
    report = (res / "report.md").read_text()
    for heading in ("Checks (docs/method.md §9)", "Motion vs appearance", "Layer level", "Ranking fidelity",
                    "Time per stage"):
        assert heading in report
    assert len(re.findall(r"\*\*(PASS|FAIL)\*\*", report)) >= 5
    for stage in ("train_supernet", "score_strategies", "finetune", "validate_ranking"):
        assert re.search(rf"\| {stage}\s+\|", report), stage
    for log in ("prepare", "train_supernet/seed0", "score_strategies/seed0", "report"):
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
    text = out.stdout + out.stderr
    jobs = planned_jobs(text)  # the plan before the selection checkpoint: its training jobs come after it
    assert jobs.get("select_fidelity") == 1 and jobs.get("fidelity") == 1, jobs
    assert len(re.findall(r"^(?:local)?rule train_fidelity:", text, re.M)) == 8
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
    # on a cluster (the SLURM profile, GPUs as in params.yaml), `snakemake -n fidelity` plans the study's 8
    # training jobs with the request, launch and preemption handling of train_supernet
    gpus = work / "gpus.yaml"
    gpus.write_text(yaml.safe_dump({"compute": {"device": "auto"}}))

    def plan(*targets):
        return _slurm_dry_run(work, TINY, gpus, workdir=work, targets=(*targets, "--rerun-triggers", "mtime"))

    text = plan("fidelity", "-R", "train_fidelity")
    assert planned_jobs(text).get("train_fidelity") == 8, planned_jobs(text)
    supernet = _job(plan(SEED0.supernet, "-R", "train_supernet"), "train_supernet")
    job = _job(text, "train_fidelity")
    assert [job[k] for k in ("gres", "nodes", "slurm_extra")] == [supernet[k] for k in ("gres", "nodes", "slurm_extra")]
    assert job["gres"] == "gpu:1" and job["runtime"] == supernet["runtime"]
    assert job["shell"].startswith("python -m stfusion.engine.slurm --launch python -m stfusion.cli train-fidelity "
                                   "--seed-index ")


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


# ------------------------------------------------------------- what the tiny run gives a user (issue 11)
@pytest.mark.slow
def test_tiny_run_prints_where_to_look(tiny_run):
    work, out = tiny_run
    tail = (out.stdout + out.stderr).splitlines()
    lines = [line for line in tail if line.startswith("stfusion: ")]
    assert lines[-3:][0] == "stfusion: read results/report.md first (checks, tables, figures)"
    assert lines[-2] == "stfusion: HTML report: snakemake --report results/report.zip"
    assert re.match(r"stfusion: best strategy \S+ \(validation top-1 \d\.\d{3}\); all-S gap on motion ", lines[-1])
    assert "snakemake --report results/report.zip" in (work / "results" / "report.md").read_text()


@pytest.mark.slow
def test_tiny_run_curves_costs_and_metrics(tiny_run):
    work, _ = tiny_run
    res = work / "results"
    hist = pd.read_csv(work / SEED0.history)
    for col in ("val_top1", "val_loss", "val_top1_most_probable_paper", "entropy_paper", "entropy_plain"):
        assert hist[col].notna().all(), col  # eval_every 1: every epoch
    assert hist["val_top1"].between(0, 1).all() and (hist["entropy_paper"] > 0).all()
    for kind in ("finetune", "validation"):
        best = pd.read_csv(res / kind / "best_history.csv")
        assert {"epoch", "train_top1", "val_top1", "val_loss", "id"} <= set(best.columns) and len(best) == 1
    pred = pd.read_csv(res / "finetune" / "best_test_predictions.csv")
    manifest = pd.read_csv(work / "data" / "cache" / "manifest.csv")
    assert len(pred) == int((manifest["split"] == "test").sum()) and {"actual", "predicted"} <= set(pred.columns)
    tables = {"ranking": res / "strategies" / "ranking.csv", "network": res / "analysis" / "network.csv",
              "derived": res / "derived" / "strategies.csv", "finetune": res / "finetune" / "accuracy.csv",
              "standalone": res / "validation" / "standalone.csv"}
    costs = {}
    for name, path in tables.items():
        df = pd.read_csv(path)
        assert (df["macs"] > 0).all() and (df["params"] > 0).all(), name
        costs[name] = dict(zip(df["strategy"], df["macs"]))
    # one strategy, one cost, whichever table lists it
    for name, by_strategy in costs.items():
        for text, macs in by_strategy.items():
            assert costs["ranking"].get(text, macs) == macs, (name, text)
    ranking = pd.read_csv(tables["ranking"]).set_index("name")
    assert ranking.at["all-S", "macs"] < ranking.at["all-ST", "macs"] < ranking.at["all-S+ST", "macs"]
    metrics = json.loads((res / "metrics.json").read_text())
    assert all(isinstance(v, (int, float)) for v in metrics.values()), metrics
    for name in ("ranking", "network", "preference", "derived", "finetune", "standalone"):
        assert "<table" in (res / "report" / f"{name}.html").read_text()


@pytest.mark.slow
def test_tiny_run_snakemake_report_zip(tiny_run):
    import zipfile

    work, _ = tiny_run
    snakemake("--configfile", str(TINY), "-d", str(work), "--report", str(work / "results" / "report.zip"),
              cwd=work)
    with zipfile.ZipFile(work / "results" / "report.zip") as z:
        names = z.namelist()
        html = z.read(next(n for n in names if n.endswith("report/report.html"))).decode()
    shown = {n.rsplit("/", 1)[-1] for n in names if "/data/raw/" in n}
    assert {"preference.png", "scatter.png", "drop_rates.png", "ranking_fidelity.png", "ranking.html",
            "preference.html", "derived.html", "finetune.html", "network.html", "standalone.html",
            "pareto_network.png", "pareto_derived.png", "confusion.png", "curves.png"} <= shown, shown
    for text in ("Probability space", "Derived networks", "Ranking fidelity", "Pareto front",
                 "Variational DropPath"):
        assert text in html, text


@pytest.mark.slow
def test_tiny_run_exports_a_finetuned_network(tiny_run, monkeypatch, capfd):
    """`stfusion export --strategy best [--format onnx]`: the best derived strategy's finetuned network, named in
    the log, and nothing else on the console (no exporter noise). pt2 through torch.export, loaded back; ONNX
    through onnxruntime where the onnx extra is installed; both against the PyTorch network on real clips of the
    test split, within stfusion.stages.export.TOLERANCE."""
    import torch

    from stfusion.analysis.derive import best_finetuned
    from stfusion.cli import app as cli
    from stfusion.config.loading import load_params
    from stfusion.config.settings import Settings
    from stfusion.data.transforms import normalize
    from stfusion.stages.export import TOLERANCE, load_network, run_exported
    from stfusion.stages.common import clip_dataset

    work, _ = tiny_run
    best = best_finetuned(pd.read_csv(work / "results" / "finetune" / "accuracy.csv"))
    kw = dict(checkpoint=work / SEED0.supernet, finetuned_dir=work / "checkpoints" / "finetune")
    net, info = load_network(str(best["id"]), **kw)
    assert info["weights"].endswith(f"{best['id']}/model.pt")  # the finetuned weights, not the supernet's
    params = load_params(next((work / ".snakemake" / "stfusion").glob("params-*.yaml")))  # the run's own
    test = clip_dataset(Settings.from_params(params), work / "data" / "cache", "test", train=False)
    clips = normalize(torch.stack([test[i][0] for i in range(min(5, len(test)))]), torch.device("cpu"))
    with torch.no_grad():
        expected = net(clips)
    formats = ["pt2"] + (["onnx"] if _has("onnxruntime") and _has("onnxscript") else [])
    monkeypatch.chdir(work)
    for fmt in formats:
        capfd.readouterr()
        assert cli.main(["export", "--strategy", "best", "--format", fmt, "--no-progress"]) == 0
        lines = capfd.readouterr().err.strip().splitlines()
        assert lines[0].startswith(f"INFO: best derived strategy: {best['id']} ({best['strategy']})"), lines
        assert len(lines) == 2 and lines[1].startswith(f"INFO: exported {best['id']} "), lines  # nothing else
        out = work / "results" / "export" / f"{best['id']}.{fmt}"
        record = json.loads(out.with_name(out.name + ".json").read_text())
        assert record["id"] == best["id"] and record["macs"] == best["macs"] and record["params"] == best["params"]
        assert (run_exported(out, fmt, clips) - expected).abs().max() <= TOLERANCE, fmt
        assert record["classes"][0]
    assert (work / "results" / "export" / f"{best['id']}.pt2").stat().st_size > 0


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_catalog_layout_license_and_formatting():
    """What the snakemake-workflow catalog looks for, a LICENSE matching pyproject.toml, snakefmt formatting."""
    catalog = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())
    assert catalog["usage"]["software-stack-deployment"]["conda"] is True and catalog["usage"]["report"] is True
    assert (REPO / "workflow" / "Snakefile").is_file() and list((REPO / "workflow" / "rules").glob("*.smk"))
    readme = (REPO / "README.md").read_text().lower()
    assert "snakemake" in readme and "workflow" in readme
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT" and project["project"]["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    if shutil.which("snakefmt") is None:
        pytest.skip("snakefmt is not installed (it is in the test extra)")
    assert project["tool"]["snakefmt"]["line_length"] == 120
    out = subprocess.run(["snakefmt", "--check", "Snakefile", "workflow"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_train_rule_with_two_processes_gives_the_single_process_result(tmp_path):
    """compute.gpus_per_node: 2 on CPU: the rule runs torchrun (gloo, GlobalBatchNorm3d) and the gate-free
    warm-up equals a single-process run of the same rule within the DDP test's tolerance; the gated epoch (its
    masks are drawn per rank) completes with the same optimizer step count."""
    tiny = yaml.safe_load(TINY.read_text())
    runs = {}
    for procs in (1, 2):
        work = tmp_path / f"p{procs}"
        work.mkdir()
        shutil.copy(REPO / "params.yaml", work / "params.yaml")
        cfg = {**tiny, "supernet": {**tiny["supernet"], "warmup_epochs": 2},
               "compute": {**tiny["compute"], "gpus_per_node": procs}}
        (work / "cfg.yaml").write_text(yaml.safe_dump(cfg))
        out = snakemake("--cores", "2", "--configfile", str(work / "cfg.yaml"), "-d", str(work), "-p",
                        SEED0.supernet, cwd=work)
        launched = "stfusion.engine.launch --nproc-per-node=2" in out.stdout + out.stderr
        assert launched == (procs == 2)
        runs[procs] = work / SEED0.supernet_dir
    h1, h2 = (pd.read_csv(runs[p] / "history.csv") for p in (1, 2))
    assert list(h1["steps"]) == list(h2["steps"]) and list(h1["phase"]) == list(h2["phase"])
    warm1, warm2 = h1[h1.phase == "warmup"], h2[h2.phase == "warmup"]
    for col in ("lr", "loss", "ce", "train_top1"):
        assert warm1[col].to_numpy() == pytest.approx(warm2[col].to_numpy(), rel=1e-4, abs=1e-5), col


@pytest.mark.slow
def test_tiny_run_with_a_second_seed_pools_both(tiny_run, tmp_path):
    """seeds: [0, 1] over a copy of the tiny run: only seed 1's supernet trains (seed 0's is reused), both seeds
    score the union of their lists, and the report pools them: intervals, stability, "k of n" on every check."""
    work = tmp_path / "two"
    shutil.copytree(tiny_run[0], work, symlinks=True)
    out = snakemake("--cores", "2", "--configfile", str(TINY), "--config", "seeds=[0, 1]", "-d", str(work),
                    cwd=work, timeout=900)
    jobs = planned_jobs(out.stdout + out.stderr)
    assert jobs["train_supernet"] == 1 and jobs["score_strategies"] == 2 and jobs["pool_seeds"] == 1, jobs
    seed1 = LAYOUT.of_seed(1)
    ids = [set(pd.read_csv(work / run.ranking)["id"]) for run in (SEED0, seed1)]
    assert ids[0] == ids[1]  # every strategy of either list scored in both supernets
    ranking = pd.read_csv(work / LAYOUT.ranking)
    assert set(ranking["id"]) == ids[0] and (ranking["n_seeds"] == 2).all()
    assert (ranking["top1 low"] <= ranking["top1"]).all() and (ranking["top1"] <= ranking["top1 high"]).all()
    assert ranking["best_in_seeds"].sum() == 2
    stability = json.loads((work / LAYOUT.stability).read_text())
    assert stability["seeds"] == [0, 1] and stability["interval"] == "t" and stability["n_layers"] == 3
    report = (work / LAYOUT.report).read_text()
    checks = re.findall(r"^\| \d\w?\. .*$", report, re.M)
    pooled = [c for c in checks if c.count("|") == 5]  # check | result | holds in | numbers
    assert pooled and all(re.search(r"\| (\d of 2|n/a) \|", c) for c in pooled), pooled
    assert "| check | seed 0 | seed 1 |" in report and "## Seeds: how far the findings replicate" in report
    metrics = json.loads((work / LAYOUT.metrics).read_text())
    assert metrics["n_seeds"] == 2 and "best_sampled_top1_seed_low" in metrics
