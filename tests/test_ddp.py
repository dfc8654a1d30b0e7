"""DDP under torchrun: 2 CPU processes (gloo) give the single-process result with the same global batch; a lost
rank is restarted by torchrun and the run completes from the last checkpoint."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import torch

from conftest import REPO

WORKER = REPO / "tests" / "ddp_worker.py"


def _run(out, warmup, gated, nproc):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), str(out), str(warmup), str(gated)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               "29533", str(WORKER), str(out), str(warmup), str(gated)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    _run(tmp_path / "one", 2, 0, 1)
    _run(tmp_path / "two", 2, 0, 2)
    a = torch.load(tmp_path / "one" / "model.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "two" / "model.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    # rank 0 alone wrote the tables: one row an epoch
    assert len(pd.read_csv(tmp_path / "two" / "history.csv")) == 2


def test_gated_phase_uses_every_parameter_under_ddp(tmp_path):
    """The worker raises if any parameter misses a gradient in the first DDP step; gates must also move."""
    _run(tmp_path / "gated", 0, 1, 2)
    state = torch.load(tmp_path / "gated" / "model.pt", weights_only=False)["model"]
    logits = [v for k, v in state.items() if k.endswith("p_logit")]
    assert logits and any(abs(torch.sigmoid(v).item() - 0.1) > 1e-5 for v in logits)


def test_elastic_restart_after_a_lost_rank_completes_the_run(tmp_path):
    """torchrun --max-restarts=1: rank 1 is killed (SIGKILL) mid-run; torchrun restarts both ranks, which resume
    from the last checkpoint (one after every step here); the run ends with the uninterrupted step count and
    weights."""
    _run(tmp_path / "one", 3, 0, 1)  # gate-free: the masks of one process and of two would differ
    pids = tmp_path / "pids"
    pids.mkdir()
    out = tmp_path / "elastic"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--max-restarts", "1", str(WORKER), str(out), "3", "0", "--checkpoint-minutes", "0.00001",
           "--pid-dir", str(pids)]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline, killed_at = time.time() + 120, None
    while proc.poll() is None and time.time() < deadline and killed_at is None:
        try:
            ckpt = torch.load(out / "last.pt", weights_only=False)
        except (FileNotFoundError, EOFError, RuntimeError):
            time.sleep(0.005)
            continue
        if ckpt["optimizer_steps"] >= 2 and (pids / "rank1-restart0").exists():
            os.kill(int((pids / "rank1-restart0").read_text()), signal.SIGKILL)
            killed_at = ckpt["optimizer_steps"]
    _, err = proc.communicate(timeout=240)
    assert killed_at is not None, "the run ended before a rank could be killed"
    assert proc.returncode == 0, err[-3000:]
    assert (pids / "rank0-restart1").exists() and (pids / "rank1-restart1").exists()  # both ranks restarted
    ref = torch.load(tmp_path / "one" / "model.pt", weights_only=False)
    got = torch.load(out / "model.pt", weights_only=False)
    assert got["optimizer_steps"] == ref["optimizer_steps"] == 3 * 4  # 3 epochs of 64 clips in batches of 16
    for k in ref["model"]:
        torch.testing.assert_close(got["model"][k], ref["model"][k], rtol=1e-4, atol=1e-5, msg=k)
    hist = pd.read_csv(out / "history.csv")
    assert list(hist["steps"]) == [4, 8, 12]
