"""The one DataLoader setting for clips, shared by training and evaluation.

Items are ``uint8`` (see :mod:`stfusion.data.transforms`), so the host-to-device copy moves a quarter of the
bytes of float clips. With worker processes each worker keeps ``PREFETCH`` batches ready; batches go through
pinned memory when a CUDA device is present. Workers are not persistent: a training epoch builds its own loader
over that epoch's sample order (:func:`stfusion.engine.train.epoch_loader`; each sample's augmentation is seeded by
``(seed, epoch, index)``, so a resumed run draws the same augmentations as an uninterrupted one); starting a worker
costs a fork, and nothing is opened before it.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

__all__ = ["PREFETCH", "clip_loader", "flat_clips"]

#: batches prepared ahead by each worker process
PREFETCH = 4


def flat_clips(items: list, limit: int | None = None) -> tuple:
    """A batch of items of ``K`` clips each, ``(uint8 (K, 3, T, H, W), label[, failure])``, as a batch of clips:
    ``x (N * K, 3, T, H, W)`` and ``y (N * K,)`` (each item's label for each of its clips), the first ``limit``
    of them; the items' other fields (decode failures: one per video) as the default collation gives them."""
    x, y, *rest = default_collate(items)
    return (x.flatten(0, 1)[:limit], y.repeat_interleave(x.shape[1])[:limit], *rest)


def clip_loader(dataset: Dataset, batch_size: int, *, sampler=None, drop_last: bool = False,
                workers: int = 0, generator: torch.Generator | None = None, clips_per_item: int = 1,
                max_clips: int | None = None) -> DataLoader:
    """Batches of ``batch_size`` items of ``dataset`` in ``sampler``'s order (a sampler or a list of items; None:
    in order), loaded by ``workers`` processes (0: in this one). ``generator`` draws the workers' base seed (None:
    the global RNG). ``clips_per_item`` > 1: items of that many clips (``data.clips_per_decode``), batched as
    :func:`flat_clips` (``batch_size * clips_per_item`` clips a batch, at most ``max_clips``)."""
    workers = int(workers)
    collate = None if clips_per_item == 1 else functools.partial(flat_clips, limit=max_clips)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=drop_last,
                      num_workers=workers, pin_memory=torch.cuda.is_available(), collate_fn=collate,
                      prefetch_factor=PREFETCH if workers else None, generator=generator)
