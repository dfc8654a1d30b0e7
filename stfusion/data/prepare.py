"""The ``prepare`` stage: read the annotations, choose the storage (:mod:`stfusion.data.storage`) and prepare the
dataset into the cache folder, whole or one shard at a time.

``cache`` storage: :func:`stfusion.data.cache.preprocess` (one job; sharding does not apply) plus
``storage.json``.  ``videos`` storage: :func:`stfusion.data.prepare_videos.prepare_shard` for shard ``I`` of
``N`` (``shard=(I, N)``), :func:`stfusion.data.manifest.merge_shards` (``merge=N``), or, with neither, all
``data.prepare_shards`` shards one after the other and their merge.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from stfusion.errors import StfusionError
from stfusion.data.storage import cache_frames, choose, write_storage

if TYPE_CHECKING:
    from stfusion.config.settings import Settings

__all__ = ["prepare_dataset"]

log = logging.getLogger(__name__)


def prepare_dataset(settings: Settings, *, root=None, cache_dir, workers: int | None = None, progress: bool = True,
                    shard: tuple[int, int] | None = None, merge: int | None = None) -> dict:
    """Prepare the dataset of the ``data`` settings into ``cache_dir`` (seeded splits: ``seed``); returns a summary
    (for the timing record)."""
    from stfusion.data.cache import preprocess
    from stfusion.data.formats import read_annotations

    d = settings.data
    root = Path(root if root is not None else d.root)
    kinds = None
    if d.dataset == "builtin":
        from stfusion.data.builtin import class_kinds

        if not (root / "annotations.csv").is_file():
            raise StfusionError(f"no built-in benchmark in {root} (run 'stfusion generate --root {root}' first)")
        kinds = class_kinds(root)
    videos, classes = read_annotations(d.dataset, root, d.annotations, split=d.split)
    storage = choose(d, len(videos))
    log.info("storage %s: %s", storage["storage"], storage["reason"])
    workers = int(workers or d.workers)
    common = {"dataset": d.dataset, "root": str(root), "cache": str(cache_dir), "classes": len(classes),
              "storage": storage["storage"]}
    if storage["storage"] == "cache":
        if shard is not None or merge is not None:
            raise StfusionError(f"--shard and --merge are for videos storage; this dataset goes to the cache "
                                f"({storage['reason']}; set data.storage: videos to shard it)")
        manifest = preprocess(
            videos, classes, cache_dir, cache_frames=cache_frames(d), size=d.size, backend=d.backend,
            val_fraction=d.val_fraction, calib_fraction=d.calib_fraction, seed=settings.seed, workers=workers,
            class_kinds=kinds, progress=progress,
        )
        write_storage(cache_dir, storage)
        counts = manifest["split"].value_counts().to_dict()
        summary = {**common, "videos": int(len(manifest)), **{f"n_{k}": int(v) for k, v in counts.items()}}
        log.info("clip cache in %s: %s", cache_dir, summary)
        return summary

    from stfusion.data.manifest import merge_shards
    from stfusion.data.prepare_videos import prepare_shard

    mode, short_side = d.prepare, d.short_side
    storage.update(prepare=mode, short_side=short_side)
    n_shards = shard[1] if shard else merge or d.prepare_shards
    todo = [shard[0]] if shard else [] if merge else range(n_shards)
    span = d.frames * d.stride
    for i in todo:
        _, part = prepare_shard(videos, classes, cache_dir, i, n_shards, mode=mode, short_side=short_side,
                                clip_span=span, backend=d.backend, workers=workers,
                                progress=progress)
    if shard:
        return {**common, "shard": f"{shard[0]}/{shard[1]}", **part}
    _, summary = merge_shards(cache_dir, n_shards, videos, classes, kinds=kinds, seed=settings.seed,
                              val_fraction=d.val_fraction, calib_fraction=d.calib_fraction, storage=storage)
    return {**common, "shards": n_shards, **summary}
