"""Where the prepared dataset lives: the decoded clip cache or one prepared file per video.

``data.storage``: ``cache`` (:mod:`stfusion.data.cache`: every video decoded once into ``clips.npy``, right for
the built-in benchmark and other small sets), ``videos`` (:mod:`stfusion.data.prepare_videos`: one re-encoded,
packed or linked file per video, decoded while training) or ``auto``: the cache when its estimated size
``N x cache_frames x size x size x 3`` bytes is at most ``data.cache_max_gb``, else videos.

The choice is written to ``<cache dir>/storage.json``::

    {"storage": "cache" | "videos", "reason": "...", "estimate_gb": 4593.9, ...}

(``videos`` adds ``prepare`` and ``short_side``, and the preparation summary).  This module is light (no
pandas, no torch): the workflow imports it to know, before any job runs, which files ``prepare`` writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from stfusion.config.layout import LAYOUT
from stfusion.errors import StfusionError

if TYPE_CHECKING:
    from stfusion.config.settings import Data

__all__ = ["STORAGES", "STORAGE_FILE", "cache_frames", "cache_gb", "choose", "count_videos", "read_storage",
           "write_storage"]

STORAGES = ("auto", "cache", "videos")
STORAGE_FILE = Path(LAYOUT.storage).name
#: classes of the built-in benchmark (stfusion.data.builtin.CLASSES; a test keeps the two equal)
BUILTIN_CLASSES = 14


def cache_frames(data: Data) -> int:
    """Frames cached per video: all frames of the built-in clips; for real datasets enough for one clip of
    ``frames`` at ``stride`` plus room for temporal jitter (twice the clip span)."""
    if data.dataset == "builtin":
        return data.builtin.frames
    return 2 * data.frames * data.stride


def cache_gb(n_videos: int, frames: int, size: int) -> float:
    """Size in GB (1e9 bytes) of a uint8 cache ``(n_videos, frames, size, size, 3)``."""
    return int(n_videos) * int(frames) * int(size) ** 2 * 3 / 1e9


def count_videos(data: Data, root=None) -> int:
    """Videos listed by the dataset's annotations (for the built-in benchmark: from its parameters, so it is
    known before the videos are generated)."""
    if data.dataset == "builtin":
        return BUILTIN_CLASSES * data.builtin.clips_per_class
    from stfusion.data.formats import read_annotations

    videos, _ = read_annotations(data.dataset, root or data.root, data.annotations, split=data.split)
    return len(videos)


def choose(data: Data, n_videos: int | None) -> dict:
    """``{"storage", "reason", "estimate_gb"}`` for the ``data`` settings (``n_videos`` may be None when
    ``data.storage`` is explicit; the estimate is then None)."""
    requested, limit = data.storage, data.cache_max_gb
    if requested not in STORAGES:
        raise StfusionError(f"unknown data.storage {requested!r} (choose one of: {', '.join(STORAGES)})")
    if n_videos is None:
        if requested == "auto":
            raise StfusionError("data.storage auto needs the number of videos")
        estimate = None
    else:
        estimate = round(cache_gb(n_videos, cache_frames(data), data.size), 4)
    if requested != "auto":
        return {"storage": requested, "reason": f"data.storage is {requested}", "estimate_gb": estimate}
    fits = estimate <= limit
    reason = (f"decoded cache of {n_videos} videos x {cache_frames(data)} frames x {data.size}x{data.size} "
              f"would take {estimate:.3g} GB, {'within' if fits else 'over'} data.cache_max_gb = {limit:g}")
    return {"storage": "cache" if fits else "videos", "reason": reason, "estimate_gb": estimate}


def write_storage(cache_dir, info: dict) -> Path:
    """Write ``storage.json`` into ``cache_dir`` atomically."""
    from stfusion.io.files import write_text

    return write_text(Path(cache_dir) / STORAGE_FILE, json.dumps(info, indent=2) + "\n")


def read_storage(cache_dir) -> dict:
    """``storage.json`` of a prepared dataset (a folder prepared before it existed holds a cache)."""
    path = Path(cache_dir) / STORAGE_FILE
    if not path.is_file():
        if (Path(cache_dir) / "clips.npy").is_file():
            return {"storage": "cache", "reason": "clips.npy without storage.json", "estimate_gb": None}
        raise StfusionError(f"no prepared dataset in {cache_dir} ({STORAGE_FILE} not found; run 'stfusion prepare')")
    info = json.loads(path.read_text())
    if info.get("storage") not in ("cache", "videos"):
        raise StfusionError(f"{path}: storage must be cache or videos, got {info.get('storage')!r}")
    return info
