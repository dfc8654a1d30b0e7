"""Preprocessing: decode every video once into a small uint8 cache that training reads without decoding.

Outputs in ``out_dir`` (each written under a temporary name in the same folder and renamed into place, so a
crash never leaves a half-written file; ``manifest.csv`` is renamed last):

``clips.npy``     uint8 ``(N_ok, cache_frames, size, size, 3)``: ``cache_frames`` frames spread uniformly over
                  each usable video (:func:`~stfusion.data.sampling.uniform_indices`), centre-cropped to a
                  square and resized to ``size`` x ``size`` (the same as resizing the short side to ``size``
                  and centre-cropping).
``manifest.csv``  one row per input video, in input order: ``video_id, path, label, label_idx, split, calib,
                  n_frames, status, reason, cache_index``.
``classes.csv``   ``index, name, kind`` (kind from ``class_kinds``, else ``unknown``).

Status of a row: ``ok`` (cached; ``cache_index`` is its row in clips.npy), ``missing`` (no such file),
``empty`` (no frames / no video stream), ``unreadable`` (corrupt, truncated or not a video) or
``unknown_label`` (label outside the class list; not decoded).  Rows that are not ok get a ``reason``, a
``logging`` warning, ``cache_index`` -1 and ``label_idx`` -1 for unknown labels.  A video with at least one
frame but fewer than ``cache_frames`` is ``ok`` with reason ``short``: its frames are repeated in order
(stretched in time; never looped, which would reverse time at the seam).  Rows decoded by PyAV after
decord failed say so in ``reason``.

Splits: the input's train/test is kept; ``val`` is carved from the usable train videos of each class
(``round(n * val_fraction)``, at least one when a class has two or more, never all), unless the input
already has val rows.  ``calib`` marks ``round(n * calib_fraction)`` (at least one) usable train videos of
each class for BatchNorm recalibration.  Both draws depend only on ``seed`` and the video ids.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from stfusion.io.files import write_csv
from stfusion.errors import StfusionError
from stfusion.data.manifest import assign_splits, class_table
from stfusion.data.video import DecoderFallbackWarning, VideoReadError, read_uniform

__all__ = ["MANIFEST_COLUMNS", "STATUSES", "preprocess", "resize_crop"]

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["video_id", "path", "label", "label_idx", "split", "calib", "n_frames", "status", "reason", "cache_index"]
STATUSES = ("ok", "missing", "empty", "unreadable", "unknown_label")


def resize_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """Centre square crop then (antialiased bilinear) resize of ``uint8 (T, H, W, 3)`` to ``(T, size, size, 3)``."""
    from PIL import Image

    t, h, w, _ = frames.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = frames[:, top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    out = np.empty((t, size, size, 3), np.uint8)
    for i in range(t):
        out[i] = np.asarray(Image.fromarray(square[i]).resize((size, size), Image.BILINEAR))
    return out


def _decode_one(task):
    """Worker: ``(path, cache_frames, size, backend)`` -> ``(status, reason, n_frames, clip or None)``."""
    path, cache_frames, size, backend = task
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DecoderFallbackWarning)
            frames, n = read_uniform(path, cache_frames, backend)
    except VideoReadError as exc:
        return exc.status, str(exc), 0, None
    except Exception as exc:  # a bad file must never stop the run
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        return "unreadable", f"{type(exc).__name__}: {first_line}", 0, None
    reasons = []
    if n < cache_frames:
        reasons.append(f"short: {n} frames < {cache_frames}, frames repeated")
    fallback = [w for w in caught if issubclass(w.category, DecoderFallbackWarning)]
    if fallback:
        reasons.append(f"decoded by PyAV: {str(fallback[0].message)}")
    return "ok", "; ".join(reasons), int(n), resize_crop(frames, size)


def _mp_context():
    # fork starts workers instantly and the worker touches no torch state; elsewhere use the platform default
    return multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def preprocess(
    videos: pd.DataFrame,
    classes: list[str],
    out_dir,
    *,
    cache_frames: int,
    size: int,
    backend: str = "decord",
    val_fraction: float = 0.25,
    calib_fraction: float = 0.2,
    seed: int = 0,
    workers: int = 2,
    class_kinds: dict | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Decode ``videos`` (columns ``video_id, path, label, split``, as from
    :func:`~stfusion.data.formats.read_annotations`) into ``out_dir`` and return the manifest.

    ``workers`` processes decode in parallel (1 = in this process).  Raises :class:`StfusionError` when the
    arguments are invalid or when no video at all is usable (then nothing is written).
    """
    _check_arguments(videos, classes, cache_frames, size, val_fraction, calib_fraction, workers)
    cache_frames, size, workers = int(cache_frames), int(size), int(workers)
    df = _video_table(videos, classes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = np.flatnonzero(df["label_idx"].to_numpy() >= 0)
    clips_path = out_dir / "clips.npy"
    tmp_all, tmp_ok = _tmp_name(clips_path), clips_path.with_name(f".{clips_path.name}.ok-{os.getpid()}")
    try:
        if len(todo):
            _decode_all(df, todo, tmp_all, (cache_frames, size, size, 3), backend, workers, progress)
        ok = (df["status"] == "ok").to_numpy()
        counts = Counter(df["status"])
        _log_failures(df, ok, counts)
        _keep_usable(tmp_all, tmp_ok, ok[todo])
        df["cache_index"] = -1
        df.loc[ok, "cache_index"] = np.arange(int(ok.sum()))
        # splits and calibration subset (usable videos only; deterministic in seed and video ids)
        assign_splits(df, "video_id", ok, len(classes), seed=seed, val_fraction=val_fraction,
                      calib_fraction=calib_fraction)
        manifest = df[MANIFEST_COLUMNS].copy()
        os.replace(tmp_ok, clips_path)
        write_csv(class_table(classes, class_kinds), out_dir / "classes.csv")
        write_csv(manifest, out_dir / "manifest.csv")
    finally:
        for tmp in (tmp_all, tmp_ok):
            if tmp.exists():
                tmp.unlink()

    n_ok = int(ok.sum())
    short = int(manifest["reason"].str.startswith("short").sum())
    skipped = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()) if k != "ok") or "none"
    splits = ", ".join(f"{s}={int(((manifest['split'] == s) & ok).sum())}" for s in ("train", "val", "test"))
    print(
        f"preprocess: {n_ok}/{len(manifest)} videos cached in {clips_path} ({splits}; {short} short: fewer than "
        f"{cache_frames} frames, repeated in order to fill the cache, and used); skipped: {skipped} (see manifest.csv)"
    )
    return manifest


def _check_arguments(videos, classes, cache_frames, size, val_fraction, calib_fraction, workers) -> None:
    need = ["video_id", "path", "label", "split"]
    missing = [c for c in need if c not in getattr(videos, "columns", [])]
    if missing:
        raise StfusionError(f"videos table needs columns {','.join(need)} (missing {','.join(missing)})")
    if len(videos) == 0:
        raise StfusionError("no videos to preprocess")
    if int(cache_frames) < 1:
        raise StfusionError(f"cache_frames must be at least 1, got {cache_frames}")
    if int(size) < 1:
        raise StfusionError(f"size must be at least 1, got {size}")
    if not 0 <= val_fraction < 1:
        raise StfusionError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not 0 <= calib_fraction <= 1:
        raise StfusionError(f"calib_fraction must be in [0, 1], got {calib_fraction}")
    if int(workers) < 1:
        raise StfusionError(f"workers must be at least 1, got {workers}")
    if len(set(classes)) != len(classes) or not classes:
        raise StfusionError("the class list must be non-empty and without duplicates")


def _video_table(videos: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """The manifest before decoding: the input's ids, paths, labels and splits (as text), ``label_idx`` and
    ``status`` ``ok`` (to decode) or ``unknown_label`` with its ``reason``, ``n_frames`` 0."""
    df = videos[["video_id", "path", "label", "split"]].copy().reset_index(drop=True)
    for col in ("video_id", "label", "path", "split"):
        df[col] = df[col].astype(str)
    dup = df["video_id"][df["video_id"].duplicated()]
    if len(dup):
        raise StfusionError(f"duplicated video id {dup.iloc[0]!r} in the videos table")
    bad_split = ~df["split"].isin(["train", "val", "test"])
    if bad_split.any():
        raise StfusionError(f"unknown split {df['split'][bad_split].iloc[0]!r} (use train, val or test)")
    index_of = {c: i for i, c in enumerate(classes)}
    df["label_idx"] = df["label"].map(index_of).fillna(-1).astype(np.int64)
    df["status"] = np.where(df["label_idx"] >= 0, "ok", "unknown_label").astype(object)
    df["reason"] = [
        "" if i >= 0 else f"label {lab!r} is not in the class list" for lab, i in zip(df["label"], df["label_idx"])
    ]
    df["n_frames"] = 0
    return df


def _decode_all(df: pd.DataFrame, todo: np.ndarray, path: Path, clip_shape: tuple, backend: str, workers: int,
                progress: bool) -> None:
    """Decode the rows ``todo`` of ``df`` (``workers`` processes) into a ``uint8 (len(todo), *clip_shape)``
    array at ``path``, row j for ``todo[j]``; each row's ``status``, ``reason`` and ``n_frames`` set."""
    from tqdm.auto import tqdm

    cache_frames, size = clip_shape[0], clip_shape[1]
    tasks = [(df.at[i, "path"], cache_frames, size, backend) for i in todo]
    store = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(tasks), *clip_shape))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context()) if workers > 1 and len(tasks) > 1 else None
    try:
        results = (
            pool.map(_decode_one, tasks, chunksize=max(1, min(16, len(tasks) // (4 * workers))))
            if pool
            else map(_decode_one, tasks)
        )
        bar = tqdm(results, total=len(tasks), desc="decoding videos", unit="video", disable=not progress)
        for j, (status, reason, n, clip) in enumerate(bar):
            i = todo[j]
            df.at[i, "status"], df.at[i, "reason"], df.at[i, "n_frames"] = status, reason, n
            if clip is not None:
                store[j] = clip
    finally:
        if pool is not None:
            pool.shutdown()
    store.flush()


def _log_failures(df: pd.DataFrame, ok: np.ndarray, counts: Counter) -> None:
    """A warning for every video not cached and every one PyAV decoded; an error when none is usable."""
    for rec in df[~ok].itertuples():
        log.warning("%s: %s (%s)", rec.video_id, rec.status, rec.reason)
    for rec in df[ok & df["reason"].str.contains("decoded by PyAV", regex=False)].itertuples():
        log.warning("%s: %s", rec.video_id, rec.reason)
    if not ok.any():
        first = df.iloc[0]
        summary = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        raise StfusionError(
            f"no usable video among {len(df)} ({summary}); first: {first.video_id}: {first.reason}"
        )


def _keep_usable(tmp_all: Path, tmp_ok: Path, ok_tasks: np.ndarray) -> None:
    """The decoded clips at ``tmp_all`` with only the usable rows ``ok_tasks``, at ``tmp_ok``."""
    if ok_tasks.all():
        os.replace(tmp_all, tmp_ok)
        return
    store = np.load(tmp_all, mmap_mode="r")
    final = np.lib.format.open_memmap(tmp_ok, mode="w+", dtype=np.uint8, shape=(int(ok_tasks.sum()), *store.shape[1:]))
    src = np.flatnonzero(ok_tasks)
    for start in range(0, len(src), 256):
        final[start : start + 256] = store[src[start : start + 256]]
    final.flush()
    del final, store
