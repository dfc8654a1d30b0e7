"""kill -9 in the middle of a long stage, then the same command again: the outputs equal an uninterrupted run's.
Also: two runs with the same params and seed give byte-identical ranking and preference tables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from stfusion.config import deep_merge

from conftest import REPO

TABLES = ["checkpoints/supernet/history.csv", "checkpoints/supernet/drop_rates.csv"]


def _cli(args, cwd, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "stfusion.cli", *args, "--params", "params.yaml", "--threads", "1"],
                         cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch project folder holding the tiny params and a prepared clip cache."""
    root = tmp_path_factory.mktemp("fault")
    params = deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()),
                        yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text()))
    params = deep_merge(params, {"supernet": {"epochs": 10, "warmup_epochs": 1}})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    _cli(["generate", "--no-progress"], root)
    _cli(["prepare", "--no-progress"], root)
    return root


def _fresh_copy(workdir: Path, name: str) -> Path:
    run = workdir / name
    run.mkdir()
    (run / "params.yaml").write_text((workdir / "params.yaml").read_text())
    (run / "data").symlink_to(workdir / "data")
    return run


def test_supernet_training_survives_kill_9(workdir):
    ref = _fresh_copy(workdir, "uninterrupted")
    _cli(["train-supernet", "--no-progress"], ref)

    run = _fresh_copy(workdir, "killed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "stfusion.cli", "train-supernet", "--no-progress", "--params",
                             "params.yaml", "--threads", "1"], cwd=run, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "supernet" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run / "checkpoints" / "supernet" / "model.pt").exists()
    epoch_at_kill = torch.load(last, weights_only=False)["epoch"]
    assert 1 <= epoch_at_kill < 11

    _cli(["train-supernet", "--no-progress"], run)  # the same command again resumes
    for table in TABLES:
        assert (run / table).read_bytes() == (ref / table).read_bytes(), table
    a = torch.load(ref / "checkpoints/supernet/model.pt", weights_only=False)["model"]
    b = torch.load(run / "checkpoints/supernet/model.pt", weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_same_seed_gives_byte_identical_tables(workdir):
    outs = []
    for name in ("det_a", "det_b"):
        run = _fresh_copy(workdir, name)
        for stage in ("train-supernet", "sample-strategies", "score-strategies", "analyze"):
            _cli([stage, "--no-progress"], run)
        outs.append(run)
    for table in ("results/strategies/ranking.csv", "results/analysis/preference.csv", *TABLES):
        a, b = (outs[0] / table).read_bytes(), (outs[1] / table).read_bytes()
        assert a and a == b, table
