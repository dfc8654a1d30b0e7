"""What a network costs: multiply-accumulates of its conv and linear layers, and its parameters.

Convention: 1 MAC = one multiply-accumulate of a conv or linear layer (BatchNorm, ReLU, pooling and additions are
not counted). The FLOP convention of ``torch.utils.flop_counter`` counts a multiply-accumulate as 2 FLOPs, so its
figure for the same network is 2x the MACs here.

Counting uses forward hooks on the layers that actually run. :func:`strategy_costs` runs the network on the
``meta`` device, so the count costs no arithmetic and no memory, whatever the input size.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

CONVENTION = ("1 MAC = one multiply-accumulate of a conv or linear layer; torch.utils.flop_counter "
              "FLOPs = 2 x MACs")

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def module_macs(module: nn.Module, output: Tensor) -> int:
    """Multiply-accumulates of one call of a conv or linear layer that produced ``output``."""
    if isinstance(module, _CONV):
        return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


class MacCounter:
    """Counts conv / linear multiply-accumulates of a model while installed (``with MacCounter(model) as c``)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.total = 0
        self._handles: list = []

    def _hook(self, module, inputs, output):
        self.total += module_macs(module, output)

    def __enter__(self) -> MacCounter:
        self._handles = [m.register_forward_hook(self._hook) for m in self.model.modules()
                         if isinstance(m, (*_CONV, nn.Linear))]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@contextlib.contextmanager
def count_macs(model: nn.Module) -> Iterator[MacCounter]:
    """Context manager: ``with count_macs(model) as c: ...; c.total`` (multiply-accumulates executed)."""
    with MacCounter(model) as counter:
        yield counter


@torch.no_grad()
def network_costs(net: nn.Module, clip_shape: Sequence[int]) -> dict[str, int]:
    """``{"macs", "params"}`` of ``net`` for one clip of shape ``clip_shape = (3, T, H, W)``: the MACs of one
    forward in eval mode (counted on a ``meta`` copy) and the number of parameters."""
    meta = copy.deepcopy(net).to("meta").eval()
    with count_macs(meta) as counter:
        meta(torch.empty((1, *clip_shape), device="meta"))
    return {"macs": int(counter.total), "params": int(sum(p.numel() for p in net.parameters()))}


def strategy_costs(model, strategies, clip_shape: Sequence[int]) -> list[dict[str, int]]:
    """``{"macs", "params"}`` of the plain network each strategy exports to (:meth:`FusionNetwork.export`: only
    the kept convs, no gates), for one clip of shape ``(3, T, H, W)``."""
    meta = copy.deepcopy(model).to("meta")
    return [network_costs(meta.export(s), clip_shape) for s in strategies]


def add_costs(df, model, clip_shape: Sequence[int], column: str = "strategy"):
    """``df`` with ``macs`` and ``params`` columns for the strategies (text form) in ``df[column]``."""
    from stfusion.core.strategies import Strategy

    strategies = [Strategy.parse(str(t), model.n_fusion_layers) for t in df[column]]
    costs = strategy_costs(model, strategies, clip_shape)
    return df.assign(macs=[c["macs"] for c in costs], params=[c["params"] for c in costs])


__all__ = ["CONVENTION", "MacCounter", "add_costs", "count_macs", "module_macs", "network_costs", "strategy_costs"]
