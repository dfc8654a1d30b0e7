"""The ``videos`` storage at run time: one prepared file per video, decoded on the fly in DataLoader workers.

:class:`VideoDataset` reads ``manifest.csv`` of a prepared folder (one row a video: ``id``, ``path`` relative
to the folder or absolute, ``label_idx``, ``split``, ``calib``, ``frames``, ``status``) and decodes each clip
inside ``__getitem__`` with :func:`stfusion.data.video.read_frames` (a decord ``VideoReader`` with one thread,
opened and closed per item, so nothing is opened before the worker fork; sorted indices in one ``get_batch``;
PyAV where decord fails). Items are ``uint8`` like the cache's (:class:`~stfusion.data.dataset.SplitClips`).

**A file that fails to decode** (damaged after preparation, a flaky network file system) is read a second time;
if that fails too:

- in training (``replace_failures=True``, the default when ``train``) the item is the clip of the next video of
  the same split that decodes (``i + 1``, ``i + 2``, ... : a deterministic choice), and the item carries the
  failure as a third element ``"path: reason"`` (``""`` when nothing failed), so the count crosses worker
  processes inside the batch. :class:`DecodeFailures` counts them per epoch in the training process and stops
  training past ``data.max_decode_failures`` (a fraction of the epoch's items), naming the first failing file;
- in evaluation and scoring the run stops with one line naming the file (:class:`ClipDecodeError`): every
  strategy is scored on the same videos, never on a set that depends on which reads happened to fail.

:func:`open_clips` picks the dataset from ``storage.json`` of the folder (:func:`stfusion.data.storage.read_storage`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from stfusion.errors import StfusionError
from stfusion.data.storage import read_storage
from stfusion.data.dataset import ClipDataset, SplitClips, default_view, load_classes, split_rows
from stfusion.data.transforms import ViewSpec, decode_short_side, view_from_params
from stfusion.data.video import DECORD_BAD_WIDTHS, read_frames, usable_backend

if TYPE_CHECKING:
    from stfusion.config.settings import Data

__all__ = ["ClipDecodeError", "DecodeFailures", "VideoDataset", "decode_size", "load_video_manifest", "open_clips",
           "split_failures"]

log = logging.getLogger(__name__)

#: videos tried in place of one that fails (the next ones of the split), each read up to twice
REPLACEMENT_TRIES = 3
_MANIFEST_NEED = ("path", "label_idx", "split", "calib", "frames", "status")


class ClipDecodeError(StfusionError):
    """A prepared video that cannot be decoded. Raised inside a DataLoader worker, torch re-raises it in the
    main process with the worker's traceback as the message: only its last line (ours) is kept."""

    def __init__(self, message: str):
        if "Original Traceback" in message:
            message = message.strip().splitlines()[-1].split("ClipDecodeError: ", 1)[-1]
        super().__init__(message)


def load_video_manifest(cache_dir) -> pd.DataFrame:
    """``manifest.csv`` of a ``videos`` folder (every row, whatever its status)."""
    path = Path(cache_dir) / "manifest.csv"
    if not path.is_file():
        raise StfusionError(f"manifest not found: {path} (run the preparation step first)")
    df = pd.read_csv(path, dtype={"id": str, "video_id": str, "path": str, "reason": str}, keep_default_na=False)
    missing = [c for c in _MANIFEST_NEED if c not in df.columns]
    if missing:
        raise StfusionError(f"{path} is not a prepared-videos manifest (missing columns {','.join(missing)})")
    df["calib"] = df["calib"].astype(str).str.lower().isin(["true", "1"])
    return df


class VideoDataset(SplitClips):
    """Clips of one split of a ``videos`` folder, decoded on the fly (see the module docstring).

    Arguments as :class:`~stfusion.data.dataset.ClipDataset` (``clips_per_decode`` clips an item, cut from one
    decode: :class:`~stfusion.data.dataset.SplitClips`), frame indices counting the prepared file's frames, plus
    ``backend`` (decord | pyav | torchcodec), ``replace_failures`` (None: when ``train``) and
    ``max_decode_failures`` (the share of an epoch's items that may be replaced before training stops; read by
    :class:`DecodeFailures`). Items: ``(uint8 clip, label)``, and ``(clip, label, failure)`` when replacing.
    """

    def __init__(self, cache_dir, split: str, *, frames: int, stride: int = 1, sampling: str = "dense",
                 train: bool = True, flip: bool = False, calib_only: bool = False, view: ViewSpec | None = None,
                 backend: str = "decord", replace_failures: bool | None = None, max_decode_failures: float = 0.0,
                 clips_per_decode: int = 1):
        self.cache_dir = Path(cache_dir)
        classes = load_classes(self.cache_dir)
        rows = split_rows(load_video_manifest(self.cache_dir), split, calib_only)
        self._setup(classes, rows, split, frames=frames, stride=stride, sampling=sampling, train=train,
                    view=view or default_view(train, flip), clips_per_decode=clips_per_decode)
        self._paths = [str(self.cache_dir / p) for p in rows["path"]]
        self._frame_counts = rows["frames"].to_numpy(dtype=np.int64)
        if len(rows) and self._frame_counts.min() < 1:
            bad = rows["path"].iloc[int(self._frame_counts.argmin())]
            raise StfusionError(f"{self.cache_dir / 'manifest.csv'}: video {bad} has no frames (prepare again)")
        self.backend = usable_backend(backend)  # here, before DataLoader workers fork
        self._sizes = _decode_sizes(rows, decode_short_side(self.view))
        self.replace_failures = self.train if replace_failures is None else bool(replace_failures)
        self.max_decode_failures = float(max_decode_failures)

    def _n_frames(self, i: int) -> int:
        return int(self._frame_counts[i])

    def _decode(self, i: int, t: np.ndarray) -> np.ndarray:
        return read_frames(self._paths[i], t, self.backend, size=self._sizes[i])

    def _try(self, i: int):
        """The clip of video ``i`` or, after a second failed read, the reason as a string."""
        reason = ""
        for _ in range(2):
            try:
                return self.clip(i)
            except (StfusionError, OSError, RuntimeError) as exc:  # read_frames' errors, and decoders' own
                reason = " ".join(str(exc).split())
        return reason

    def __getitem__(self, i: int):
        i = self._check_index(i)
        got = self._try(i)
        if not isinstance(got, str):
            return (got, int(self._labels[i]), "") if self.replace_failures else (got, int(self._labels[i]))
        failure = f"{self._paths[i]}: {got}"
        if not self.replace_failures:
            raise ClipDecodeError(f"cannot decode {failure} (read twice); a score must cover every video of the "
                                  f"{self.split} split: repair or re-prepare that file")
        for k in range(1, min(REPLACEMENT_TRIES, len(self) - 1) + 1):
            j = (i + k) % len(self)
            other = self._try(j)
            if not isinstance(other, str):
                return other, int(self._labels[j]), failure
        raise ClipDecodeError(f"cannot decode {failure}, nor the {REPLACEMENT_TRIES} videos after it in the "
                              f"{self.split} split (is the prepared folder {self.cache_dir} readable?)")


def decode_size(width: int, height: int, short_side: int | None) -> tuple[int, int] | None:
    """``(width, height)`` to decode a ``width`` x ``height`` video at so that its short side is ``short_side``
    (aspect kept), or None to decode it at its own size: not larger than ``short_side`` (never scaled up), size
    unknown (0), or a scaled width decord 0.6.0 mis-decodes (:data:`~stfusion.data.video.DECORD_BAD_WIDTHS`)."""
    short = min(int(width), int(height))
    if short_side is None or short <= short_side:
        return None
    size = (short_side, round(height * short_side / width)) if width <= height else \
        (round(width * short_side / height), short_side)
    return None if size[0] in DECORD_BAD_WIDTHS else size


def _decode_sizes(rows: pd.DataFrame, short_side: int | None) -> list:
    """:func:`decode_size` of each video of a manifest's ``rows`` (None for all without size columns)."""
    if short_side is None or not {"width", "height"} <= set(rows.columns):
        return [None] * len(rows)
    width, height = (pd.to_numeric(rows[c], errors="coerce").fillna(0).astype(int) for c in ("width", "height"))
    return [decode_size(w, h, short_side) for w, h in zip(width, height)]


def split_failures(batch) -> tuple:
    """``(x, y, failures)`` of a training batch: ``failures`` lists the replaced videos' ``"path: reason"``
    (empty for the cache and for batches where every video decoded)."""
    x, y, *rest = batch
    return x, y, [f for f in rest[0] if f] if rest else []


class DecodeFailures:
    """Replaced videos of one training epoch of ``n_clips`` clips (from ``n_clips / dataset.clips_per_decode``
    videos); :meth:`add` logs each and stops training (one line naming the first failing file) once their share
    of the epoch's videos exceeds ``dataset.max_decode_failures``."""

    def __init__(self, dataset, n_clips: int):
        self.limit = float(getattr(dataset, "max_decode_failures", 0.0))
        videos = -(-int(n_clips) // int(getattr(dataset, "clips_per_decode", 1)))
        self.n_items, self.count, self.first = max(videos, 1), 0, None

    def add(self, failures) -> None:
        for text in failures:
            log.warning("replaced a video that failed to decode: %s", text)
            self.first = self.first or text
            self.count += 1
        if self.count > self.limit * self.n_items:
            raise StfusionError(
                f"training stopped: {self.count} of the epoch's {self.n_items} videos failed to decode, more than "
                f"data.max_decode_failures = {self.limit:g} of them; first: {self.first}"
            )


def open_clips(data: Data, cache_dir, split: str, *, train: bool, views: str | None = None,
               calib_only: bool = False) -> SplitClips:
    """The dataset of one split of a prepared folder, whichever its storage (``storage.json``), from the
    ``data`` settings. ``train``: random temporal positions (in videos storage failed videos are replaced, up to
    ``data.max_decode_failures`` of a training epoch); ``views``: train | eval | test
    (:func:`~stfusion.data.transforms.view_from_params`; default train when ``train``, else eval). Training views
    hold ``data.clips_per_decode`` clips an item (:class:`~stfusion.data.dataset.SplitClips`)."""
    view = view_from_params(data, views or ("train" if train else "eval"))
    kw = dict(frames=data.frames, stride=data.stride, sampling=data.sampling, train=train, calib_only=calib_only,
              view=view, clips_per_decode=data.clips_per_decode if view.mode == "train" else 1)
    if read_storage(cache_dir)["storage"] == "cache":
        return ClipDataset(cache_dir, split, **kw)
    if view.mode == "train":  # what a training epoch tolerates (fit reads it)
        kw["max_decode_failures"] = data.max_decode_failures
    return VideoDataset(cache_dir, split, backend=data.backend, **kw)
