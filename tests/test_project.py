"""The package on its own: packaged defaults under params.yaml / --params, `stfusion init`, and a non-editable
install in a temporary folder that runs init, generate, prepare and train-supernet away from the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO
from stfusion.config.loading import DEFAULTS_PATH, deep_merge, load_params
from stfusion.errors import StfusionError
from stfusion.stages.project import init_project

TINY = REPO / "tests" / "configs" / "tiny.yaml"


def test_packaged_defaults_are_the_checkout_params():
    assert DEFAULTS_PATH.read_text() == (REPO / "params.yaml").read_text()


def test_params_yaml_overrides_the_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    defaults = yaml.safe_load(DEFAULTS_PATH.read_text())
    assert load_params() == defaults  # no params.yaml here: the packaged defaults alone
    (tmp_path / "params.yaml").write_text("scoring:\n  n_samples: 3\n")
    params = load_params()
    assert params["scoring"]["n_samples"] == 3 and params["scoring"]["top_k"] == defaults["scoring"]["top_k"]
    (tmp_path / "other.yaml").write_text("seed: 7\n")
    params = load_params(tmp_path / "other.yaml")
    assert params["seed"] == 7 and params["scoring"]["n_samples"] == defaults["scoring"]["n_samples"]
    with pytest.raises(StfusionError, match="params file not found: .*missing.yaml"):
        load_params(tmp_path / "missing.yaml")


def test_init_writes_the_project_and_refuses_to_overwrite(tmp_path):
    written = init_project(tmp_path / "p", workflow=True)
    names = {p.relative_to(tmp_path / "p").as_posix() for p in written}
    assert {"params.yaml", "Snakefile", "dvc.yaml", ".gitignore", ".dvcignore", "profiles/default/config.yaml",
            "workflow/Snakefile",
            "workflow/rules/common.smk",
            "workflow/profiles/slurm/config.yaml", "workflow/envs/stfusion.yaml",
            "workflow/report/workflow.rst"} <= names
    assert (tmp_path / "p" / "params.yaml").read_text().startswith("# The parameters of stfusion")
    with pytest.raises(StfusionError, match="params.yaml already exists"):
        init_project(tmp_path / "p")
    init_project(tmp_path / "p", force=True)


@pytest.mark.slow  # git, dvc and the tiny benchmark's generation: 15-30 s
@pytest.mark.skipif(shutil.which("dvc") is None or shutil.which("git") is None, reason="dvc and git are needed")
def test_init_project_runs_under_dvc(tmp_path):
    """`stfusion init proj --workflow`, then `git init && dvc init && dvc repro generate` there: the stage runs
    (no dependency on a checkout's code) and the project's .gitignore keeps the data out of git."""
    proj = tmp_path / "proj"
    init_project(proj, workflow=True)
    # DVC reads its parameters from params.yaml alone: the file init wrote, every key, with the tiny values
    params = deep_merge(yaml.safe_load((proj / "params.yaml").read_text()), yaml.safe_load(TINY.read_text()))
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(REPO)}
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro", "generate"]):
        out = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"{cmd}: {out.stdout[-2000:]}{out.stderr[-2000:]}"
    assert (proj / "data" / "builtin" / "annotations.csv").is_file()
    assert subprocess.run(["git", "check-ignore", "-q", "data/builtin"], cwd=proj).returncode == 0


@pytest.mark.slow
def test_non_editable_install_runs_anywhere(tmp_path):
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(site), str(REPO)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-3000:]
    assert (site / "stfusion" / "config" / "defaults" / "params.yaml").is_file()
    assert (site / "stfusion" / "project" / "workflow" / "Snakefile").is_file()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    work = tmp_path / "work"
    work.mkdir()

    def stfusion(*args, cwd):
        out = subprocess.run([sys.executable, "-m", "stfusion.cli", *args, "--no-progress"], cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"{args}: {out.stderr[-3000:]}"
        return out

    where = subprocess.run([sys.executable, "-c", "import stfusion; print(stfusion.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True)
    assert where.stdout.startswith(str(site)), where.stdout
    stfusion("init", "proj", "--workflow", cwd=work)
    proj = work / "proj"
    assert (proj / "workflow" / "rules" / "supernet.smk").is_file() and (proj / "Snakefile").is_file()
    # a user's project: only the keys that change, over the packaged defaults
    tiny = yaml.safe_load(TINY.read_text())
    tiny["supernet"].update(epochs=1, warmup_epochs=1)
    (proj / "params.yaml").write_text(yaml.safe_dump(tiny))
    plan = subprocess.run(["snakemake", "-n", "--cores", "1"], cwd=proj, env=env, capture_output=True, text=True,
                          timeout=300)  # the packaged workflow resolves its rules, schema and captions here
    assert plan.returncode == 0 and "train_supernet" in plan.stdout, plan.stderr[-3000:]
    stfusion("generate", cwd=proj)
    stfusion("prepare", cwd=proj)
    stfusion("train-supernet", cwd=proj)
    hist = pd.read_csv(proj / "checkpoints" / "supernet" / "history.csv")
    assert len(hist) == 2 and hist["val_top1"].between(0, 1).all()
    ckpt = torch.load(proj / "checkpoints" / "supernet" / "model.pt", weights_only=False)
    effective = deep_merge(yaml.safe_load(DEFAULTS_PATH.read_text()), tiny)
    assert ckpt["build"]["model"]["widths"] == effective["model"]["widths"] == [8, 16]
    assert ckpt["build"]["clip_shape"] == [3, tiny["data"]["frames"], tiny["data"]["size"], tiny["data"]["size"]]
