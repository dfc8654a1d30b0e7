"""Network-level evaluation without training (docs/method.md §5): fix a strategy's hard gates, optionally
recalibrate BatchNorm statistics on a calibration subset ("precise BN"), evaluate.

BN recalibration uses :func:`torch.optim.swa_utils.update_bn`, the maintained utility that resets the running
statistics and re-estimates them as a cumulative average over the given batches in train mode. The template's
own statistics are restored before every strategy, so the plain mode (``recalibrate=False``, the paper's) and
the recalibrated mode never leak into each other.
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator, Sequence

import pandas as pd
import torch
from torch.optim.swa_utils import update_bn
from torch.utils.data import Dataset
from tqdm import tqdm

from stfusion.data.transforms import normalize
from stfusion.engine.evaluation import evaluate
from stfusion.models.base import FusionNetwork
from stfusion.core.strategies import Strategy

log = logging.getLogger(__name__)


def calibration_batches(dataset: Dataset, batch_size: int, n_batches: int, seed: int) -> list[torch.Tensor]:
    """A fixed list of uint8 input batches ``(B, 3, T, H, W)`` drawn once (seeded) and reused for every
    strategy (:func:`normalized` feeds them to the network)."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=gen)[: batch_size * n_batches].tolist()
    state = torch.get_rng_state()
    torch.manual_seed(seed)  # the dataset's augmentation draws from the global RNG
    xs = [dataset[i][0] for i in order]
    torch.set_rng_state(state)
    return [torch.stack(xs[i : i + batch_size]) for i in range(0, len(xs), batch_size)]


def normalized(batches: Iterable[torch.Tensor], device: torch.device) -> Iterator[torch.Tensor]:
    """The network's float input on ``device`` for each uint8 batch (:func:`stfusion.data.transforms.normalize`),
    one batch at a time."""
    for x in batches:
        yield normalize(x, device)


def bn_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


def group_accuracy(result: dict, groups: dict[str, Sequence[int]]) -> dict[str, float]:
    """Top-1 within each named group of classes (e.g. ``motion`` and ``appearance``)."""
    out = {}
    for name, idx in groups.items():
        idx = list(idx)
        total = result["per_class_total"][idx].sum()
        out[f"top1_{name}"] = float(result["per_class_correct"][idx].sum() / total) if total else float("nan")
    return out


def result_row(strategy: Strategy, result: dict, groups: dict[str, Sequence[int]] | None) -> dict:
    """One row of a score table: ``strategy``, ``id``, ``top1``, ``top5``, ``loss``, ``n``, ``top1_<group>``."""
    row = {"strategy": strategy.text, "id": strategy.id, **{k: result[k] for k in ("top1", "top5", "loss", "n")}}
    row.update(group_accuracy(result, groups or {}))
    return row


def score_strategies(
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
) -> pd.DataFrame:
    """Score every strategy with the template's shared weights. One row a strategy:
    ``strategy`` (text), ``id``, ``top1``, ``top5``, ``loss``, ``n`` and ``top1_<group>`` per class group."""
    device = torch.device(device)
    model.to(device)
    saved = bn_state(model)
    rows = []
    for strategy in tqdm(strategies, desc="score", disable=not progress, leave=False):
        model.load_state_dict(saved, strict=False)
        model.set_strategy(strategy)
        if recalibrate:
            if not calib_batches:
                raise ValueError("recalibrate=True needs calibration batches")
            update_bn(normalized(calib_batches, device), model, device=device)
        rows.append(result_row(strategy, evaluate(model, val_loader, num_classes, device), groups))
    model.load_state_dict(saved, strict=False)
    model.set_strategy(None)
    return pd.DataFrame(rows)


def score_resumable(
    score_fn,
    strategies: Sequence[Strategy],
    partial_dir,
    chunk_size: int = 16,
    **kwargs,
) -> pd.DataFrame:
    """Score ``strategies`` in chunks with ``score_fn`` (the naive or the prefix-shared scorer, same signature as
    :func:`score_strategies` minus the strategy list), keeping every finished chunk as its own atomically written
    CSV in ``partial_dir``. After a kill, the same call skips the chunks already on disk, so nothing scored is lost
    and the result equals an uninterrupted run's."""
    from pathlib import Path

    from stfusion.io.files import write_csv

    partial_dir = Path(partial_dir)
    partial_dir.mkdir(parents=True, exist_ok=True)
    ids = [s.id for s in strategies]
    frames = []
    chunks = range(0, len(strategies), chunk_size)
    for start in tqdm(chunks, desc="score chunks", disable=not kwargs.get("progress", True), leave=False):
        path = partial_dir / f"chunk_{start // chunk_size:05d}.csv"
        part = strategies[start : start + chunk_size]
        if path.exists():
            df = pd.read_csv(path)
            if list(df["id"].astype(str)) == ids[start : start + chunk_size]:
                frames.append(df)
                continue
            log.warning("%s holds other strategies; scoring it again", path)
        df = score_fn(strategies=part, **kwargs)
        write_csv(df, path)
        frames.append(pd.read_csv(path))  # the same parsing on both paths: identical tables after a resume
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
