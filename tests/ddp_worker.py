"""Worker for tests/test_ddp.py: trains the tiny template with ``fit``, single-process or under torchrun.

    python tests/ddp_worker.py OUT WARMUP_EPOCHS GATED_EPOCHS [cpu|cuda] [--checkpoint-minutes M] [--pid-dir D]

BatchNorm stays: ``fit`` makes it use the statistics of the global batch under DDP (GlobalBatchNorm3d over gloo
on CPU; SyncBatchNorm on CUDA, the GPU check in benchmarks/gpu_checks.sh), so several processes see what one
process sees. ``--no-bn`` replaces BatchNorm by identity.

``--pid-dir`` writes ``rank<R>-restart<N>`` (holding the process id) there at start, so a test can kill one rank
of a given torchrun attempt.
"""

import argparse
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))

from conftest import TINY_PARAMS, motion_clips  # noqa: E402
from stfusion.engine import distributed  # noqa: E402
from stfusion.config.settings import Settings
from stfusion.models import build_model  # noqa: E402
from stfusion.engine.train import TrainConfig, fit  # noqa: E402


def strip_bn(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm3d):
            setattr(module, name, nn.Identity())
        else:
            strip_bn(child)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("warmup", type=int)
    ap.add_argument("gated", type=int)
    ap.add_argument("device", nargs="?", default="cpu")
    ap.add_argument("--checkpoint-minutes", type=float, default=None)
    ap.add_argument("--pid-dir", default=None)
    ap.add_argument("--no-bn", action="store_true")
    args = ap.parse_args(argv)
    if args.pid_dir:
        name = f"rank{os.environ.get('RANK', '0')}-restart{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        Path(args.pid_dir, name).write_text(str(os.getpid()))
    distributed.init_from_env()
    torch.manual_seed(0)
    model = build_model(Settings.for_stage(TINY_PARAMS), 2)
    if args.no_bn:
        strip_bn(model)
    cfg = TrainConfig(epochs=args.gated, warmup_epochs=args.warmup, batch_size=16, lr=0.02, kl_k=5.0,
                      device=args.device, checkpoint_minutes=args.checkpoint_minutes)
    fit(model, motion_clips(64, seed=5), cfg, args.out, progress=False)
    distributed.cleanup()


if __name__ == "__main__":
    main()
