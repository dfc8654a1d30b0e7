"""The DVC front end: its parameter lists agree with the stages' own, and, in a temporary git repository with a
local DVC remote, `dvc repro` runs the tiny configuration end to end, `dvc push` / `dvc pull` restore
checkpoints and tables in a fresh clone, and `dvc exp run -S` of a scoring parameter does not retrain."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import REPO
from stfusion.config.loading import deep_merge
from stfusion.config.layout import STAGE_PARAMS

TINY = REPO / "tests" / "configs" / "tiny.yaml"
pytestmark = pytest.mark.skipif(shutil.which("dvc") is None or shutil.which("git") is None,
                                reason="dvc and git are needed")
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "DVC_NO_ANALYTICS": "1"}


def test_dvc_params_match_the_stages():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    study = yaml.safe_load((REPO / "studies" / "fidelity" / "dvc.yaml").read_text())["stages"]
    assert not set(stages) & set(study) and all(s["wdir"] == "../.." for s in study.values())
    for name, stage in {**stages, **study}.items():
        listed = sorted(stage.get("params", []))
        assert listed == sorted(STAGE_PARAMS.get(name, [])), name
        assert stage["cmd"], name


def test_dvc_outputs_do_not_overlap():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    outs = [o if isinstance(o, str) else next(iter(o)) for s in stages.values()
            for o in s.get("outs", []) + s.get("metrics", [])]
    assert len(outs) == len(set(outs))
    for a in outs:
        for b in outs:
            assert a == b or not b.startswith(a.rstrip("/") + "/"), (a, b)


def run(cmd, cwd, timeout=900):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **GIT_ENV})
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out.stdout + out.stderr


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w-]+)'", output))


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory):
    """A git + DVC repository holding the project (tiny parameters) with a local remote, after `dvc repro`."""
    base = tmp_path_factory.mktemp("dvc")
    repo, remote = base / "repo", base / "remote"
    repo.mkdir()
    remote.mkdir()
    shutil.copytree(REPO / "stfusion", repo / "stfusion", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", "pyproject.toml"):
        shutil.copy(REPO / name, repo / name)
    if (REPO / ".dvcignore").exists():
        shutil.copy(REPO / ".dvcignore", repo / ".dvcignore")
    params = deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()), yaml.safe_load(TINY.read_text()))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "remote", "add", "-d", "local", str(remote)], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "project"], repo)
    out = run(["dvc", "repro"], repo)
    return repo, base, out


@pytest.mark.slow
def test_dvc_repro_end_to_end(dvc_repo):
    repo, _, out = dvc_repo
    stages = set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    assert ran_stages(out) == stages
    for path in ("results/strategies/ranking.csv", "results/analysis/preference.csv", "results/analysis/preference.png",
                 "results/validation/ranking_fidelity.json", "results/metrics.json", "results/report.md",
                 "checkpoints/supernet/model.pt", "results/finetune/accuracy.csv"):
        assert (repo / path).is_file(), path
    shown = run(["dvc", "metrics", "show"], repo)
    assert "seed" in shown and "checks_passed" in shown and "torch" not in shown  # numbers only
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo)


@pytest.mark.slow
def test_dvc_plots_show_renders_every_plot(dvc_repo):
    repo, base, _ = dvc_repo
    out = base / "plots"
    run(["dvc", "plots", "show", "-o", str(out)], repo)
    html = (out / "index.html").read_text()
    declared = yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]
    for plot in declared:
        name = plot if isinstance(plot, str) else next(iter(plot))
        assert name in html, name  # every plot is rendered (images by path, data plots by id)
    templates = {next(iter(p.values()))["template"] for p in declared if isinstance(p, dict)}
    assert templates == {"linear", "scatter", "confusion"}
    assert '"predicted"' in html and '"val_top1"' in html  # the data of the confusion matrix and of the curves


@pytest.mark.slow
def test_dvc_push_pull_restores_outputs(dvc_repo):
    repo, base, _ = dvc_repo
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "results"], repo)
    run(["dvc", "push"], repo)
    clone = base / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], base)
    assert not (clone / "checkpoints").exists()
    assert md5(clone / "results" / "metrics.json") == md5(repo / "results" / "metrics.json")  # git, not DVC
    run(["dvc", "pull"], clone)
    for path in ("checkpoints/supernet/model.pt", "checkpoints/supernet/history.csv", "data/cache/manifest.csv",
                 "results/strategies/ranking.csv", "results/analysis/preference.csv", "results/metrics.json",
                 "results/validation/ranking_fidelity.json", "results/report.md"):
        assert md5(clone / path) == md5(repo / path), path
    assert any((clone / "checkpoints" / "finetune").iterdir())
    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone)


@pytest.mark.slow
def test_dvc_exp_run_scoring_parameter_does_not_retrain(dvc_repo):
    repo, _, _ = dvc_repo
    run(["git", "add", "-A"], repo)
    if subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=repo).returncode:
        run(["git", "commit", "-qm", "results"], repo)
    model = repo / "checkpoints" / "supernet" / "model.pt"
    before = (md5(model), model.stat().st_mtime_ns)
    out = run(["dvc", "exp", "run", "-S", "scoring.calib_batches=2"], repo)
    ran = ran_stages(out)
    assert "score_strategies" in ran and "report" in ran
    assert not ran & {"generate", "prepare", "train_supernet", "sample_strategies"}, ran
    assert (md5(model), model.stat().st_mtime_ns) == before
    assert yaml.safe_load((repo / "params.yaml").read_text())["scoring"]["calib_batches"] == 2
