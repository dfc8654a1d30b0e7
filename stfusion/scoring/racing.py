"""Racing: score many strategies on a large validation split for a fraction of the cost (successive halving with
confidence bounds).

The validation clips are put in one fixed order (a permutation seeded by ``seed``). Round ``r`` scores the
strategies still in the race on the next clips of that order, so that after it every survivor has been scored on
the first ``n_r`` clips, ``n_1 = first_clips`` and ``n_{r+1} = growth * n_r`` (the last round ends at the whole
split). After each round but the last, a survivor is dropped when the upper bound of its top-1 interval falls
below the lower bound of the ``keep_top``-th best survivor (by top-1 so far): it can no longer be among the
``keep_top`` best, at the stated confidence. The survivors of the last round are scored on the whole split.

Interval: the Wilson score interval of a binomial proportion at two-sided level ``confidence`` (``z`` from the
normal quantile), computed per strategy on its correct count over the same ``n_r`` clips. All strategies see
the same clips, so the comparison is paired in its data, though the interval itself is not a paired one (it is
conservative for strategies whose errors are correlated, which is what sharing weights makes them).

Each round runs :func:`stfusion.scoring.prefix.score_strategies_prefix` on the survivors, so prefix sharing
applies inside every round, and BN recalibration stays per strategy and exact: the calibration batches are the
same in every round and the recalibrated statistics of every prefix-tree node are computed once, in the first
round, and reused (``bn_cache``).

The table (one row a strategy, in the order given) has the scorer's columns plus ``race_status`` (``full`` or
``dropped``), ``race_clips`` (the clips it was scored on), ``top1_partial`` (top-1 on those clips) and
``top1_low`` / ``top1_high`` (its Wilson interval). The score columns of a dropped strategy (``top1``,
``top5``, ``loss``, ``top1_<group>``) are NaN: a dropped strategy is never presented as fully scored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from stfusion.config.settings import Settings
from stfusion.models.base import FusionNetwork
from stfusion.scoring.prefix import score_strategies_prefix
from stfusion.core.strategies import Strategy

log = logging.getLogger(__name__)

FULL, DROPPED = "full", "dropped"


def wilson_interval(correct: np.ndarray, n: int, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval ``(low, high)`` of ``correct / n`` at two-sided level ``confidence``."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = np.asarray(correct, float) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def round_ends(n_clips: int, first_clips: int, growth: float) -> list[int]:
    """Cumulative clip counts at the end of each round: ``first_clips``, x``growth`` each round, then the split."""
    ends, n = [], first_clips
    while n < n_clips:
        ends.append(int(n))
        n = max(int(math.ceil(n * growth)), n + 1)
    return ends + [n_clips]


def drops(top1: np.ndarray, low: np.ndarray, high: np.ndarray, keep_top: int, protected: np.ndarray) -> np.ndarray:
    """Which survivors leave the race: upper bound below the lower bound of the ``keep_top``-th best by top-1."""
    if len(top1) <= keep_top:
        return np.zeros(len(top1), bool)
    kth = np.argsort(-top1, kind="stable")[keep_top - 1]
    return (high < low[kth]) & ~protected


class _RecordingLabels:
    """Iterates ``loader`` and keeps the labels it yielded (the scorer walks its loader once per call)."""

    def __init__(self, loader):
        self.loader, self.labels = loader, []

    def __iter__(self):
        for x, y in self.loader:
            self.labels.append(y)
            yield x, y


def race_strategies(
    model: FusionNetwork,
    strategies: Sequence[Strategy],
    dataset: Dataset,
    num_classes: int,
    *,
    keep_top: int,
    first_clips: int,
    growth: float,
    confidence: float,
    seed: int,
    batch_size: int,
    protect: Sequence[str] = (),
    calib_batches: Sequence[torch.Tensor] | None = None,
    recalibrate: bool = True,
    groups: dict[str, Sequence[int]] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """Race ``strategies`` on ``dataset`` (the module docstring); strategies whose id is in ``protect`` (e.g. the
    named families the report compares with) are never dropped. ``attrs`` hold ``macs_executed`` (conv and
    linear multiply-accumulates of all rounds) and ``rounds`` (clips, strategies scored and dropped per round)."""
    strategies = list(strategies)
    groups = groups or {}
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    ends = round_ends(len(dataset), first_clips, growth)
    alive = np.ones(len(strategies), bool)
    protected = np.array([s.id in set(protect) for s in strategies])
    tally = _Tally(len(strategies), groups)
    low, high = np.zeros(len(strategies)), np.ones(len(strategies))
    bn_cache: dict = {}
    macs, rounds = 0, []
    start = 0
    for r, end in enumerate(ends):
        idx = np.flatnonzero(alive)
        loader = _RecordingLabels(DataLoader(Subset(dataset, order[start:end]), batch_size=batch_size))
        df = score_strategies_prefix(model, [strategies[i] for i in idx], loader, num_classes,
                                     calib_batches=calib_batches, recalibrate=recalibrate, groups=groups,
                                     device=device, progress=progress, bn_cache=bn_cache)
        macs += df.attrs["macs_executed"]
        tally.add(idx, df, end - start, loader.labels, end)
        low[idx], high[idx] = wilson_interval(tally.sums["correct1"][idx], end, confidence)
        out = np.zeros(len(strategies), bool)
        if end < len(dataset):
            out[idx] = drops(tally.sums["correct1"][idx] / end, low[idx], high[idx], keep_top, protected[idx])
            alive &= ~out
        rounds.append({"clips": end, "scored": len(idx), "dropped": int(out.sum())})
        log.info("racing round %d: %d strategies on clips %d-%d, %d dropped", r + 1, len(idx), start, end,
                 int(out.sum()))
        start = end
    table = pd.DataFrame([tally.row(i, s, bool(alive[i]), low[i], high[i]) for i, s in enumerate(strategies)])
    table.attrs.update(macs_executed=int(macs), rounds=rounds)
    return table


class _Tally:
    """Each strategy's running sums over the rounds: correct top-1 and top-5 clips, loss, correct clips of each
    class group, and the clips it was scored on."""

    def __init__(self, n: int, groups: dict[str, Sequence[int]]):
        self.groups = groups
        self.sums = {"correct1": np.zeros(n), "correct5": np.zeros(n), "loss": np.zeros(n),
                     **{g: np.zeros(n) for g in groups}}
        self.group_n = dict.fromkeys(groups, 0)
        self.seen = np.zeros(n, int)

    def add(self, idx: np.ndarray, df: pd.DataFrame, n: int, labels: list[torch.Tensor], end: int) -> None:
        """Add one round's scores ``df`` of the strategies ``idx`` on ``n`` clips (of labels ``labels``), the
        first ``end`` clips of the order scored so far."""
        ys = torch.cat(labels).cpu().numpy() if labels else np.zeros(0, int)
        self.sums["correct1"][idx] += np.rint(df["top1"].to_numpy() * n)
        self.sums["correct5"][idx] += np.rint(df["top5"].to_numpy() * n)
        self.sums["loss"][idx] += df["loss"].to_numpy() * n
        for g, members in self.groups.items():
            m = int(np.isin(ys, list(members)).sum())
            self.group_n[g] += m
            if m:
                self.sums[g][idx] += np.rint(df[f"top1_{g}"].to_numpy() * m)
        self.seen[idx] = end

    def row(self, i: int, strategy: Strategy, full: bool, low: float, high: float) -> dict:
        """Strategy ``i``'s row: scores where it ran the whole split (``full``), else NaN beside its partial
        top-1 and Wilson interval."""
        k, sums = self.seen[i], self.sums
        row = {"strategy": strategy.text, "id": strategy.id, "top1": sums["correct1"][i] / k if full else np.nan,
               "top5": sums["correct5"][i] / k if full else np.nan,
               "loss": sums["loss"][i] / k if full else np.nan, "n": int(k)}
        for g in self.groups:
            row[f"top1_{g}"] = sums[g][i] / self.group_n[g] if full and self.group_n[g] else np.nan
        row.update(race_status=FULL if full else DROPPED, race_clips=int(k),
                   top1_partial=sums["correct1"][i] / k, top1_low=low, top1_high=high)
        return row


def fully_scored(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a score table that hold scores on the whole split (all rows when racing was off)."""
    if "race_status" not in table:
        return table
    return table[table["race_status"].astype(str) == FULL]


def race_stage(settings: Settings, strategies: Sequence[Strategy], dataset: Dataset, candidates: pd.DataFrame, *,
               model: FusionNetwork, num_classes: int, **kw) -> pd.DataFrame:
    """The ``score_strategies`` stage's validation scores with ``scoring.racing``: a race with the ``scoring``
    settings (``keep_top``, ``race_first_clips``, ``race_growth``, ``race_confidence``, ``batch_size``,
    ``recalibrate_bn``) and ``seed`` in which the named families are protected; indexed by strategy id, without
    the ``strategy`` and ``n`` columns."""
    s = settings.scoring
    families = candidates.loc[candidates["source"].astype(str).str.contains("family"), "id"].astype(str)
    table = race_strategies(model, strategies, dataset, num_classes, keep_top=s.keep_top,
                            first_clips=s.race_first_clips, growth=s.race_growth, confidence=s.race_confidence,
                            seed=settings.seed, batch_size=s.batch_size, recalibrate=s.recalibrate_bn,
                            protect=list(families), **kw)
    full = int((table["race_status"] == FULL).sum())
    log.info("racing: %d of %d strategies scored on all %d validation clips; %.3g conv/linear MACs", full,
             len(table), len(dataset), table.attrs["macs_executed"])
    return table.drop(columns=["strategy", "n"]).assign(id=lambda d: d["id"].astype(str)).set_index("id")
