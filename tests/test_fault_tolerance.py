"""kill -9 in the middle of a long stage, then the same command again: the outputs equal an uninterrupted run's.
SIGTERM in the middle of an epoch: a checkpoint at that step, exit status 75, and the rerun equals an
uninterrupted run. A checkpoint write that fails (full disk) keeps the previous checkpoint and stops with one line.
Also: two runs with the same params and seed give byte-identical ranking and preference tables."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from stfusion.config.loading import deep_merge
from stfusion.errors import EXIT_RESUME, StfusionError

from conftest import REPO, TINY_PARAMS, motion_clips

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


def _same_training(ref: Path, run: Path) -> None:
    """history.csv (no timing column) and drop_rates.csv byte-identical; final weights within the resume
    tolerance of the kill -9 test."""
    for table in TABLES:
        assert (run / table).read_bytes() == (ref / table).read_bytes(), table
    a = torch.load(ref / "checkpoints/supernet/model.pt", weights_only=False)
    b = torch.load(run / "checkpoints/supernet/model.pt", weights_only=False)
    assert a["optimizer_steps"] == b["optimizer_steps"] > 0
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6, msg=k)


def _train_checkpointing_every_step(run):
    """``stfusion train-supernet`` started in ``run`` on one thread with a checkpoint after every step (a run-only
    setting: a reference without it must come out the same); the process and its ``last.pt``."""
    cmd = [sys.executable, "-m", "stfusion.cli", "train-supernet", "--no-progress", "--params", "params.yaml",
           "--threads", "1", "--set", "compute.checkpoint_minutes=0.00001"]
    proc = subprocess.Popen(cmd, cwd=run, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, run / "checkpoints" / "supernet" / "last.pt"


def test_sigterm_mid_epoch_checkpoints_the_step_and_resumes_exactly(workdir):
    small_batches = {"supernet": {"batch_size": 4, "epochs": 2, "warmup_epochs": 1}}
    ref = _fresh_copy(workdir, "term_ref")
    (ref / "params.yaml").write_text(yaml.safe_dump(deep_merge(yaml.safe_load((ref / "params.yaml").read_text()),
                                                               small_batches)))
    _cli(["train-supernet", "--no-progress"], ref)
    assert "seconds" not in (ref / TABLES[0]).read_text().splitlines()[0]

    run = _fresh_copy(workdir, "term_run")
    (run / "params.yaml").write_text((ref / "params.yaml").read_text())
    proc, last = _train_checkpointing_every_step(run)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        try:
            ckpt = torch.load(last, weights_only=False)
        except (FileNotFoundError, EOFError, RuntimeError):
            time.sleep(0.005)
            continue
        if ckpt["epoch"] == 1 and 1 <= ckpt["step"] <= 2:  # inside the second epoch, well before its end
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_RESUME, err[-2000:]
    assert "stopped by SIGTERM at epoch 2" in err and "run the same command again" in err
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["step"] >= 2, (ckpt["epoch"], ckpt["step"])  # the step it reached
    assert ckpt["optimizer_steps"] > ckpt["step"] and ckpt["ranks"][0]["sums"]["n"] == 4 * ckpt["step"]
    assert not (run / "checkpoints/supernet/model.pt").exists()

    _cli(["train-supernet", "--no-progress"], run)  # the same command again resumes at that step
    _same_training(ref, run)


def test_ctrl_c_writes_the_checkpoint_and_says_how_to_resume(workdir):
    """`stfusion train-supernet`, Ctrl-C: the step finishes, last.pt is written and the line says so (the resume
    itself is the SIGTERM test's: the same code path)."""
    run = _fresh_copy(workdir, "ctrl_c")
    proc, last = _train_checkpointing_every_step(run)
    deadline = time.time() + 120
    while proc.poll() is None and not last.exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_RESUME, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("stfusion: stopped by SIGINT at epoch ") and line.endswith(
        "checkpoint checkpoints/supernet/last.pt written; run the same command again to resume"), line


def test_failed_checkpoint_write_keeps_the_last_good_one(tmp_path, monkeypatch):
    """torch.save refuses (ENOSPC) from the second checkpoint on: last.pt still holds epoch 1 and loads; no
    temporary file is left; the error is one line with the path and the free space."""
    import stfusion.engine.checkpoint as ck
    from stfusion.config.settings import Settings
    from stfusion.models import build_model
    from stfusion.engine.train import TrainConfig, fit

    real_save, calls = torch.save, []

    def full_disk(obj, f, *a, **kw):
        calls.append(f)
        if len(calls) > 1:
            Path(f).write_bytes(b"partial")  # what a full disk leaves behind
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(ck.torch, "save", full_disk)
    torch.manual_seed(0)
    model = build_model(Settings.for_stage(TINY_PARAMS), 2)
    cfg = TrainConfig(epochs=2, warmup_epochs=1, batch_size=16, lr=0.05, kl_k=5.0)
    with pytest.raises(StfusionError) as info:
        fit(model, motion_clips(32, seed=0), cfg, tmp_path, progress=False)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "last.pt") in message
    assert "No space left on device" in message and " free on that file system" in message
    monkeypatch.setattr(ck.torch, "save", real_save)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["step"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drop_rates.csv", "gate_stats.csv", "history.csv", "last.pt"]
