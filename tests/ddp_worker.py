"""Worker for tests/test_ddp.py: trains the tiny template with ``fit``, single-process or under torchrun.

BatchNorm is replaced by identity here: on CPU there is no SyncBatchNorm, and per-rank batch statistics would
differ from the single-process global batch, which is not what this test is about (gradient averaging, sampler
sharding, rank-0 checkpointing).
"""

import sys

import torch
from torch import nn

sys.path.insert(0, __import__("os").path.dirname(__file__))

from conftest import TINY_PARAMS, motion_clips  # noqa: E402
from stfusion import distributed  # noqa: E402
from stfusion.models import build_model  # noqa: E402
from stfusion.train import TrainConfig, fit  # noqa: E402


def strip_bn(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm3d):
            setattr(module, name, nn.Identity())
        else:
            strip_bn(child)


def main(out_dir: str, warmup: int, gated: int) -> None:
    distributed.init_from_env()
    torch.manual_seed(0)
    model = build_model(TINY_PARAMS, 2)
    strip_bn(model)
    cfg = TrainConfig(epochs=gated, warmup_epochs=warmup, batch_size=16, lr=0.02, kl_k=5.0, device="cpu")
    fit(model, motion_clips(64, seed=5), cfg, out_dir, progress=False)
    distributed.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
