"""Stages ``generate`` (the built-in benchmark) and ``prepare`` (any dataset into the prepared layout)."""

from __future__ import annotations

import logging
from pathlib import Path

from stfusion.config.settings import Settings

log = logging.getLogger(__name__)


def generate(params: dict, *, root: str | Path, progress: bool = True) -> dict:
    """Stage ``generate``: write the built-in benchmark (videos, ``annotations.csv``, ``classes.csv``) to ``root``."""
    from stfusion.data.builtin import generate as generate_builtin

    settings = Settings.for_stage(params)
    b = settings.data.builtin
    ann = generate_builtin(root, clips_per_class=b.clips_per_class, extra_test_clips=b.extra_test_clips, frames=b.frames,
                           size=b.size, texture=b.texture, seed=settings.seed, classes=b.classes, progress=progress)
    summary = {"root": str(root), "videos": int(len(ann)), "classes": int(ann["label"].nunique()),
               "train": int((ann["split"] == "train").sum()), "test": int((ann["split"] == "test").sum())}
    log.info("built-in benchmark: %d videos of %d classes in %s", summary["videos"], summary["classes"], root)
    return summary


def prepare(
    params: dict, *, root: str | Path | None = None, cache_dir: str | Path, workers: int | None = None,
    progress: bool = True, shard: tuple[int, int] | None = None, merge: int | None = None,
) -> dict:
    """Stage ``prepare``: read the dataset's annotations and prepare it in ``data.storage`` (the clip cache or
    one file per video, :mod:`stfusion.data.storage`) with train / val / test splits and the calibration subset
    (``data/cache``); ``shard=(I, N)`` prepares one shard of videos storage, ``merge=N`` merges N shards."""
    from stfusion.data.prepare import prepare_dataset

    return prepare_dataset(Settings.for_stage(params), root=root, cache_dir=cache_dir, workers=workers,
                           progress=progress, shard=shard, merge=merge)
