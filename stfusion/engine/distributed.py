"""PyTorch DDP plumbing for runs launched by ``torchrun`` (one process a GPU; gloo on CPU for tests).

``torchrun --nproc_per_node=4 -m stfusion.cli train-supernet ...`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``;
:func:`init_from_env` joins the process group, every rank trains on its share of each global batch
(``DistributedSampler`` with ``set_epoch``), and only rank 0 logs and writes checkpoints.

The backend is NCCL where CUDA is available and gloo otherwise; ``STFUSION_DIST_BACKEND=gloo`` overrides it
(for example to run several processes on one GPU, which NCCL refuses).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group described by torchrun's environment; ``False`` for a single-process run."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = os.environ.get("STFUSION_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart == "0":
        dist.init_process_group(backend=backend)
        return True
    # after an elastic restart the launcher's store still holds the previous attempt's addresses (a rank would
    # connect to a dead peer): this attempt's keys get their own prefix
    store, rank_, world = next(dist.rendezvous("env://"))
    dist.init_process_group(backend=backend, store=dist.PrefixStore(f"restart{restart}", store), rank=rank_,
                            world_size=world)
    return True


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def any_true(*flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over the ranks (one small all-reduce; also a barrier): every rank takes the same decision,
    e.g. to write a checkpoint or to stop, at the same step."""
    if world_size() == 1:
        return tuple(bool(f) for f in flags)
    t = torch.tensor([float(f) for f in flags])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def sum_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """``values`` summed over the ranks (one all-reduce in float64); the same dict in a single-process run."""
    if world_size() == 1:
        return dict(values)
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(values, t.tolist()))


def gather(obj) -> list:
    """``obj`` of every rank, in rank order, on every rank (``[obj]`` in a single-process run)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def elastic_run_id() -> str:
    """The id shared by every rank and every elastic restart of one ``torchrun`` launch (its rendezvous id);
    empty outside torchrun."""
    return os.environ.get("TORCHELASTIC_RUN_ID", "")


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _SumOverRanks(torch.autograd.Function):
    """``x`` summed over the ranks, with the gradient summed over the ranks in the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm3d(torch.nn.BatchNorm3d):
    """BatchNorm3d whose training-mode statistics are those of the global batch of every rank, on any backend
    (gloo on CPU included; PyTorch's SyncBatchNorm is CUDA-only). One differentiable all-reduce of the
    per-channel sums ``(C,)``, sums of squares and count a layer and step; eval mode is plain BatchNorm3d, and
    the parameters and buffers are BatchNorm3d's (same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        c, dims = x.shape[1], (0, 2, 3, 4)
        count = x.new_tensor([x.numel() / c])
        stats = _SumOverRanks.apply(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), m)
        shape = (1, c, 1, 1, 1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def global_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with every BatchNorm3d replaced, in place, by a :class:`GlobalBatchNorm3d` holding the same
    parameter and buffer tensors."""
    for name, child in module.named_children():
        if type(child) is torch.nn.BatchNorm3d:
            bn = GlobalBatchNorm3d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            for key, value in [*child.named_parameters(recurse=False), *child.named_buffers(recurse=False)]:
                setattr(bn, key, value)  # the same tensors: the optimizer keeps training them
            bn.train(child.training)
            setattr(module, name, bn)
        else:
            global_batchnorm(child)
    return module
