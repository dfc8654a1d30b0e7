"""Prefix-shared strategy scoring: the same numbers as :func:`stfusion.scoring.naive.score_strategies`, computed once
per shared prefix instead of once per strategy.

A template network exposes itself as a chain of modules (:meth:`FusionNetwork.sequence`) whose composition is
``forward`` and where every fusion layer lies inside exactly one module. The output of module ``i`` depends only on
the input batch and on the states of the fusion layers inside modules ``0..i``, so strategies that agree on those
states share it. The strategies are arranged as a prefix tree over the chain (node at depth ``i`` = the states of
the fusion layers in modules ``0..i``) and the tree is walked depth-first; each node runs its module once on its
parent's cached outputs.

BatchNorm recalibration stays per strategy and exact. The naive scorer calls
:func:`torch.optim.swa_utils.update_bn`: every BN is reset, the whole network runs in train mode over the fixed
calibration batches (each BN normalises with *batch* statistics and accumulates a cumulative average,
``momentum=None``), then the network is evaluated in eval mode. Here, per node:

1. the node's module is reset the same way and run in train mode over the parent's *train-mode* outputs of the
   calibration batches: its BN statistics are now exactly those ``update_bn`` would give every strategy below the
   node (they depend only on the prefix), and its train-mode outputs feed the children's calibration;
2. the module then runs in eval mode, with those statistics, over the parent's *eval-mode* outputs of the
   validation batches; the leaves turn logits into the same metrics as :func:`stfusion.scoring.naive.evaluate`.

With ``recalibrate=False`` only the eval-mode chain runs, on the template's own statistics.

Memory: the cached outputs along one root-to-leaf path, for the calibration batches and for ``chunk_batches``
validation batches at a time (the tree is walked once per chunk; the calibrated BN statistics of every node are
kept, a few vectors each, so later chunks do not recalibrate). Compute does not depend on the chunk size.

Requirements on the modules of the chain (true of every backbone in stfusion): they do not modify their input in
place (checked; a violation raises instead of returning wrong numbers), and they hold no randomness in train mode
(no dropout), so the calibration pass is deterministic as in the naive scorer.

Work is counted as multiply-accumulates of the conv and linear layers actually executed (forward hooks): the
returned table carries ``attrs["macs_executed"]`` (everything run, including ``attrs["macs_check"]``: one clip through
the whole network, which checks once that the chain composes to ``forward``) and ``attrs["macs_naive"]`` (what
running every strategy through the whole network would execute, summed from the same per-node counts;
:func:`stfusion.core.costs.count_macs` measures a naive run directly; the convention is in :mod:`stfusion.core.costs`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence

import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm import tqdm

from stfusion.data.transforms import average_views, normalize
from stfusion.core.costs import MacCounter
from stfusion.errors import StfusionError
from stfusion.models.base import FusionNetwork
from stfusion.engine.evaluation import Metrics
from stfusion.scoring.naive import bn_state, result_row, score_strategies
from stfusion.core.strategies import Strategy

log = logging.getLogger(__name__)

class _Chain:
    """The module chain of a network with, per module, the fusion layers inside it and its BatchNorms."""

    def __init__(self, model: FusionNetwork, modules: Sequence[nn.Module]):
        self.modules = list(modules)
        fusion = model.fusion_layers
        index = {id(f): i for i, f in enumerate(fusion)}
        self.layers: list[list[int]] = []
        seen: list[int] = []
        for m in self.modules:
            inside = [index[id(s)] for s in m.modules() if id(s) in index]
            self.layers.append(inside)
            seen.extend(inside)
        if sorted(seen) != list(range(len(fusion))):
            missing = sorted(set(range(len(fusion))) - set(seen))
            twice = sorted({i for i in seen if seen.count(i) > 1})
            raise StfusionError(
                f"{type(model).__name__}.sequence() does not hold every fusion layer exactly once "
                f"(missing {missing}, repeated {twice})"
            )
        self.fusion = fusion
        self.bns = [[s for s in m.modules() if isinstance(s, _BatchNorm)] for m in self.modules]
        # the fusion layers that decide the output of module i: those in modules 0..i
        self.prefix: list[tuple[int, ...]] = []
        acc: list[int] = []
        for inside in self.layers:
            acc = sorted(acc + inside)
            self.prefix.append(tuple(acc))

    def __len__(self) -> int:
        return len(self.modules)

    def key(self, depth: int, strategy: Strategy) -> tuple[int, ...]:
        return tuple(strategy.states[j] for j in self.prefix[depth])

    def set_states(self, depth: int, strategy: Strategy) -> None:
        for j in self.layers[depth]:
            self.fusion[j].set_state(strategy.states[j])


class _NotTheForward(StfusionError):
    """The chain's output differs from ``model(x)``."""


def _run(module: nn.Module, xs: Sequence[Tensor], counter: MacCounter, depth: int) -> tuple[list[Tensor], int]:
    """``module`` over every tensor of ``xs``; checks that no cached input was modified in place."""
    before = counter.total
    out = []
    for x in xs:
        version = x._version
        out.append(module(x))
        if x._version != version:
            raise StfusionError(
                f"module {depth} of the sequence ({type(module).__name__}) modifies its input in place, so its "
                "input cannot be shared between strategies; make that op out-of-place or use the naive scorer"
            )
    return out, counter.total - before


def _bn_snapshot(bns: Sequence[_BatchNorm]) -> list[tuple]:
    return [(b.running_mean.clone() if b.running_mean is not None else None,
             b.running_var.clone() if b.running_var is not None else None,
             b.num_batches_tracked.clone() if b.num_batches_tracked is not None else None) for b in bns]


def _bn_restore(bns: Sequence[_BatchNorm], snap: Sequence[tuple]) -> None:
    for b, (mean, var, count) in zip(bns, snap):
        for buf, val in ((b.running_mean, mean), (b.running_var, var), (b.num_batches_tracked, count)):
            if buf is not None:
                buf.copy_(val)


def _chunks(loader: Iterable, size: int | None, device: torch.device) -> Iterator[list[tuple[Tensor, Tensor, int]]]:
    """Chunks of ``(network input, labels, views per video)``: test views ``(N, V, 3, T, H, W)`` run as
    ``N * V`` clips, their logits averaged at the leaves."""
    chunk: list[tuple[Tensor, Tensor, int]] = []
    for x, y in loader:
        views = x.shape[1] if x.ndim == 6 else 1
        x = normalize(x, device)
        chunk.append((x.flatten(0, 1) if x.ndim == 6 else x, y.to(device), views))
        if size is not None and len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _PrefixWalk:
    """One depth-first walk of the prefix tree per chunk of validation batches (see the module docstring): the
    cached outputs along the path, the per-node BatchNorm statistics (``node_bn``) and MACs (``node_macs``),
    every strategy's :class:`Metrics`, and the one check that the chain composes to ``forward``."""

    def __init__(self, model: FusionNetwork, chain: _Chain, unique: list[Strategy], metrics: dict,
                 recalibrate: bool, node_bn: dict, counter: MacCounter, bar):
        self.model, self.chain, self.metrics, self.recalibrate = model, chain, metrics, recalibrate
        self.node_bn, self.counter, self.bar = node_bn, counter, bar
        self.calibrated = {(d, chain.key(d, s)) for s in unique for d in range(len(chain))} <= node_bn.keys()
        self.node_macs: dict[tuple[int, tuple[int, ...]], int] = {}
        self.checked, self.check_macs = False, 0
        self.root_input: list[Tensor] = []

    def visit(self, depth: int, group: list[Strategy], parent_calib: list[Tensor], parent_eval: list[Tensor],
              ys: list[tuple[Tensor, int]], first_chunk: bool) -> None:
        """Run the node of ``group`` (strategies sharing the prefix down to ``depth``) on its parent's outputs,
        then its children; a leaf adds its logits to every strategy of ``group``."""
        chain = self.chain
        module, rep = chain.modules[depth], group[0]
        node = (depth, chain.key(depth, rep))
        chain.set_states(depth, rep)
        calib_out, macs = self._calibrate(depth, node, parent_calib, first_chunk)
        module.eval()
        eval_out, m = _run(module, parent_eval, self.counter, depth)
        self.node_macs[node] = self.node_macs.get(node, 0) + macs + m
        if depth == len(chain) - 1:
            if not self.checked:
                self.check_forward(self.root_input[0], eval_out[0])
            for s in dict.fromkeys(group):
                for logits, (y, views) in zip(eval_out, ys):
                    self.metrics[s].update(average_views(logits, views), y)
            self.bar.update(1)
            return
        children: dict[tuple[int, ...], list[Strategy]] = {}
        for s in group:
            children.setdefault(chain.key(depth + 1, s), []).append(s)
        for child in children.values():
            self.visit(depth + 1, child, calib_out, eval_out, ys, first_chunk)

    def _calibrate(self, depth: int, node: tuple, parent_calib: list[Tensor],
                   first_chunk: bool) -> tuple[list[Tensor], int]:
        """The node's BatchNorm statistics: recalibrated over the parent's train-mode calibration outputs (the
        first time), else restored. Returns its own train-mode outputs and the MACs run."""
        if not self.recalibrate:
            return [], 0
        module, bns = self.chain.modules[depth], self.chain.bns[depth]
        if not first_chunk or self.calibrated:
            _bn_restore(bns, self.node_bn[node])
            return [], 0
        momenta = [b.momentum for b in bns]
        for b in bns:
            b.reset_running_stats()
            b.momentum = None
        module.train()
        calib_out, macs = _run(module, parent_calib, self.counter, depth)
        for b, mom in zip(bns, momenta):
            b.momentum = mom
        self.node_bn[node] = _bn_snapshot(bns)
        return calib_out, macs

    def check_forward(self, x: Tensor, logits: Tensor) -> None:
        """Once, at the first leaf (every module then holds that strategy's state and statistics): the chain
        must give what ``model(x)`` gives, or its numbers would not be the network's."""
        before = self.counter.total
        self.model.eval()
        x, logits = x[:1], logits[:1]  # eval mode treats samples independently: one clip is enough
        ref = self.model(x)
        self.check_macs = self.counter.total - before  # one batch through the network: counted as executed
        self.checked = True
        # On a GPU a batch of one and the full batch run different convolution kernels (TF32 on Ampere and
        # later), so agreement is looser there; a chain that skips or repeats a module is off by far more.
        tol = 1e-4 if x.device.type == "cpu" else 2e-2
        if ref.shape != logits.shape or not torch.allclose(ref, logits, rtol=tol, atol=tol * 0.1):
            raise _NotTheForward(f"{type(self.model).__name__}.sequence() does not compose to its forward()")


@torch.no_grad()
def score_strategies_prefix(
    model: FusionNetwork,
    strategies: Sequence[Strategy],
    val_loader: Iterable,
    num_classes: int,
    *,
    calib_batches: Sequence[torch.Tensor] | None = None,
    recalibrate: bool = True,
    groups: dict[str, Sequence[int]] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    chunk_batches: int | None = 8,
    bn_cache: dict | None = None,
) -> pd.DataFrame:
    """Score every strategy with the template's shared weights, sharing the work of common prefixes.

    Same arguments and the same table as :func:`stfusion.scoring.naive.score_strategies` (one row a strategy, in the
    order given: ``strategy``, ``id``, ``top1``, ``top5``, ``loss``, ``n``, ``top1_<group>``), equal to it within
    float rounding. ``chunk_batches`` bounds the cached validation batches (``None``: all at once). The table's
    ``attrs`` hold ``macs_executed``, ``macs_naive`` and ``prefix_shared`` (False when the network exposes no
    module chain and the naive scorer ran instead, logged).

    ``bn_cache``: a dict kept between calls with the same model and calibration batches (racing scores the same
    strategies on successive clip sets): the recalibrated statistics of every tree node go into it, and a call
    whose nodes are all in it skips the calibration passes (the statistics are identical).
    """
    device = torch.device(device)
    naive = (model, strategies, val_loader, num_classes, calib_batches, recalibrate, groups, device, progress)
    chain = _chain_or_none(model)
    if chain is None:
        return _naive(*naive)
    if recalibrate and not calib_batches:
        raise ValueError("recalibrate=True needs calibration batches")
    model.to(device)
    strategies = list(strategies)
    if not strategies:
        df = pd.DataFrame([])
        df.attrs.update(prefix_shared=True, macs_executed=0, macs_naive=0, macs_check=0, nodes=0, strategies=0,
                        unique_strategies=0)
        return df
    for s in dict.fromkeys(strategies):  # the naive scorer's checks and messages, before any work
        model.set_strategy(s)
    metrics = {s: Metrics(num_classes) for s in strategies}
    calib = [normalize(x, device) for x in calib_batches] if recalibrate else []
    unique = list(dict.fromkeys(strategies))
    try:
        walk = _walk_tree(model, chain, unique, metrics, calib, recalibrate, bn_cache,
                          _chunks(val_loader, chunk_batches, device), progress)
    except _NotTheForward as exc:
        log.warning("%s; scoring strategies one by one", exc)
        return _naive(*naive)
    df = pd.DataFrame([result_row(s, metrics[s].result(), groups) for s in strategies])
    return _with_work(df, walk, strategies, unique)


def _chain_or_none(model: FusionNetwork) -> _Chain | None:
    """The network's module chain, or None (logged) where it exposes none or one the prefix walk cannot use."""
    try:
        return _Chain(model, model.sequence())
    except NotImplementedError:
        log.info("%s exposes no module chain (sequence()); scoring strategies one by one", type(model).__name__)
    except StfusionError as exc:
        log.warning("%s; scoring strategies one by one", exc)
    return None


def _walk_tree(model: FusionNetwork, chain: _Chain, unique: list[Strategy], metrics: dict, calib: list[Tensor],
               recalibrate: bool, bn_cache: dict | None, chunks: Iterable, progress: bool) -> _PrefixWalk:
    """Every chunk of validation batches down the prefix tree of ``unique``, counting MACs; the model's BN state
    and strategy are restored afterwards, also when the chain turns out not to be the forward."""
    saved = bn_state(model)
    bar = tqdm(desc="score (prefix)", disable=not progress, leave=False)
    try:
        with MacCounter(model) as counter:
            walk = _PrefixWalk(model, chain, unique, metrics, recalibrate, {} if bn_cache is None else bn_cache,
                               counter, bar)
            for ci, chunk in enumerate(chunks):
                walk.root_input[:] = [x for x, _, _ in chunk]
                walk.visit(0, unique, calib, walk.root_input, [(y, v) for _, y, v in chunk], ci == 0)
        return walk
    finally:
        bar.close()
        model.load_state_dict(saved, strict=False)
        model.set_strategy(None)
        model.eval()


def _with_work(df: pd.DataFrame, walk: _PrefixWalk, strategies: list[Strategy], unique: list[Strategy]):
    """``df`` with the work done in ``attrs`` (MACs executed, one by one, of the check; nodes), logged."""
    chain, node_macs = walk.chain, walk.node_macs
    executed = int(sum(node_macs.values())) + walk.check_macs
    naive = int(sum(node_macs.get((d, chain.key(d, s)), 0) for s in strategies for d in range(len(chain))))
    df.attrs.update(prefix_shared=True, macs_executed=executed, macs_naive=naive, macs_check=walk.check_macs,
                    nodes=len(node_macs), strategies=len(strategies), unique_strategies=len(unique))
    log.info("prefix scoring: %d strategies (%d distinct), %d tree nodes, conv/linear MACs %.3g executed vs "
             "%.3g one by one (ratio %.3f)", len(strategies), len(unique), len(node_macs), executed, naive,
             executed / naive if naive else float("nan"))
    return df


def _naive(model, strategies, val_loader, num_classes, calib_batches, recalibrate, groups, device, progress):
    with MacCounter(model) as counter:
        df = score_strategies(model, strategies, val_loader, num_classes, calib_batches=calib_batches,
                              recalibrate=recalibrate, groups=groups, device=device, progress=progress)
    df.attrs.update(prefix_shared=False, macs_executed=counter.total, macs_naive=counter.total,
                    strategies=len(strategies), unique_strategies=len(set(strategies)))
    return df


__all__ = ["score_strategies_prefix"]
