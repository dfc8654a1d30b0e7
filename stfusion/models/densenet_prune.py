"""Minimal exported DenseNets: a dense layer exported as ``none`` adds no channels at all.

In the template a ``none`` layer contributes zero channels, and every later consumer of its block's concatenation
(the later layers' paths, the transition, or ``norm5`` and the classifier after the last block) still computes on
them. They are not without effect: each consumer starts with BN -> ReLU, which maps a zero channel to the constant
``r = ReLU(beta - gamma * mean / sqrt(var + eps))`` (evaluation mode). :func:`prune_dead_channels` removes them and
keeps that effect exactly:

* a consumer path BN -> ReLU -> conv keeps BN and conv for the live channels and gets one extra input channel of
  ones whose kernel is ``sum_k r_k W[:, k]`` over the dead channels ``k`` (zero padding treats a ones channel as it
  treats the constant maps, so borders stay exact): ``C_live + 1`` input channels instead of ``C_live + C_dead``;
* after the last block, ``norm5`` keeps the live channels and the classifier's bias takes ``W[:, dead] @ r``.

The output in evaluation mode is unchanged; the MACs fall by the dead channels' share of each consumer conv.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stfusion.core.strategies import NONE


class ReLUAndOnes(nn.Module):
    """``(N, C, T, H, W) -> (N, C + 1, T, H, W)``: ReLU, then one channel of ones (the removed constant channels)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x.relu(), x.new_ones(x.shape[0], 1, *x.shape[2:])], 1)


def _bn_subset(bn: nn.BatchNorm3d, keep: list[int]) -> nn.BatchNorm3d:
    out = nn.BatchNorm3d(len(keep), eps=bn.eps, momentum=bn.momentum)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(out, name).copy_(getattr(bn, name)[keep])
    return out


def _constant(bn: nn.BatchNorm3d, dead: list[int]) -> Tensor:
    """``(len(dead),)``: ``ReLU(BN(0))`` of the dead channels in evaluation mode."""
    scale = bn.weight[dead] / torch.sqrt(bn.running_var[dead] + bn.eps)
    return (bn.bias[dead] - scale * bn.running_mean[dead]).relu()


@torch.no_grad()
def _prune_path(path: nn.Sequential, live: list[int], dead: list[int]) -> None:
    """BN -> ReLU -> conv over all channels becomes BN(live) -> ReLU + ones -> conv(live + 1)."""
    bn, conv = path[0], path[2]
    w = conv.weight
    ones = (w[:, dead] * _constant(bn, dead).view(1, -1, 1, 1, 1)).sum(1, keepdim=True)
    new = nn.Conv3d(len(live) + 1, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    bias=False)
    new.weight.copy_(torch.cat([w[:, live], ones], 1))
    path[0], path[1], path[2] = _bn_subset(bn, live), ReLUAndOnes(), new


@torch.no_grad()
def _prune_head(net, live: list[int], dead: list[int]) -> None:
    norm5, fc = net.features.norm5, net.classifier
    fc.bias.add_(fc.weight[:, dead] @ _constant(norm5, dead))
    fc.weight = nn.Parameter(fc.weight[:, live].clone())
    fc.in_features = len(live)
    net.features.norm5 = _bn_subset(norm5, live)


def prune_dead_channels(net) -> None:
    """Remove the channels of ``none`` layers from an exported DenseNet (module docstring), in place."""
    from stfusion.models.densenet import DenseBlock3d, Transition3d

    dead: list[int] = []
    width = 0
    for module in net.features.children():
        if isinstance(module, DenseBlock3d):
            dead, width = [], None
            for layer in module.values():
                if width is None:
                    width = layer.conv_in_channels
                if layer.paths.state == NONE:
                    dead += range(width, width + layer.growth)
                    layer.drop()
                elif dead:
                    _prune_consumer(layer.paths, width, dead)
                width += layer.growth
        elif isinstance(module, Transition3d) and dead:
            _prune_consumer(module.paths, width, dead)
            dead = []
    if dead:
        _prune_head(net, [i for i in range(width) if i not in set(dead)], dead)
    net.train(net.training)  # the new modules take the network's mode


def _prune_consumer(paths, width: int, dead: list[int]) -> None:
    dead_set = set(dead)
    live = [i for i in range(width) if i not in dead_set]
    for path in (paths.s, paths.st):
        if path is not None:
            _prune_path(path, live, dead)
