"""Worker for tests/test_ddp.py: trains the tiny template with ``fit``, single-process or under torchrun.

    python tests/ddp_worker.py OUT WARMUP_EPOCHS GATED_EPOCHS [cpu|cuda]

On CPU, BatchNorm is replaced by identity: there is no SyncBatchNorm on CPU, and per-rank batch statistics would
differ from the single-process global batch, which is not what this test is about (gradient averaging, sampler
sharding, rank-0 checkpointing). On CUDA (the GPU check in benchmarks/gpu_checks.sh) BatchNorm stays and ``fit``
converts it to SyncBatchNorm, so several processes again see the statistics of the global batch.
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


def main(out_dir: str, warmup: int, gated: int, device: str = "cpu") -> None:
    distributed.init_from_env()
    torch.manual_seed(0)
    model = build_model(TINY_PARAMS, 2)
    if device == "cpu":
        strip_bn(model)
    cfg = TrainConfig(epochs=gated, warmup_epochs=warmup, batch_size=16, lr=0.02, kl_k=5.0, device=device)
    fit(model, motion_clips(64, seed=5), cfg, out_dir, progress=False)
    distributed.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:5])
