"""DDP under torchrun: 2 CPU processes (gloo) give the single-process result with the same global batch."""

import os
import subprocess
import sys

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
