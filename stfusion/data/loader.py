"""The one DataLoader setting for clips, shared by training and evaluation.

Items are ``uint8`` (see :mod:`stfusion.data.transforms`), so the host-to-device copy moves a quarter of the
bytes of float clips. With worker processes each worker keeps ``PREFETCH`` batches ready; batches go through
pinned memory when a CUDA device is present. Workers are not persistent: a training epoch builds its own loader
over that epoch's sample order (:func:`stfusion.engine.train.epoch_loader`; each sample's augmentation is seeded by
``(seed, epoch, index)``, so a resumed run draws the same augmentations as an uninterrupted one); starting a worker
costs a fork, and nothing is opened before it.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["PREFETCH", "clip_loader"]

#: batches prepared ahead by each worker process
PREFETCH = 4


def clip_loader(dataset: Dataset, batch_size: int, *, sampler=None, drop_last: bool = False,
                workers: int = 0, generator: torch.Generator | None = None) -> DataLoader:
    """Batches of ``dataset`` in ``sampler``'s order (a sampler or a list of items; None: in order), loaded by
    ``workers`` processes (0: in this one). ``generator`` draws the workers' base seed (None: the global RNG)."""
    workers = int(workers)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=drop_last,
                      num_workers=workers, pin_memory=torch.cuda.is_available(),
                      prefetch_factor=PREFETCH if workers else None, generator=generator)
