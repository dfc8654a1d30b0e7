"""Manifests of prepared datasets: the train / val / calibration draws (both storages) and, for ``videos``
storage, the per-shard manifests and their merge.

``videos`` storage writes, in the cache folder:

``shards/manifest-<I>-of-<N>.csv``  the rows of shard I of N (videos ``k`` of the input with ``k % N == I``):
                                    :data:`SHARD_COLUMNS`.
``manifest.csv``                    :data:`VIDEO_COLUMNS`, one row per input video in input order:
                                    ``id, path`` (relative to the cache folder for prepared files, absolute
                                    for linked ones), ``label, label_idx, split`` (train / val / test),
                                    ``calib``, ``frames, fps, width, height`` (of the stored file), ``status,
                                    reason`` (the statuses of :mod:`stfusion.data.cache`).
``classes.csv``                     ``index, name, kind``.
``storage.json``                    :mod:`stfusion.data.storage`, with the summary of the preparation.

Splits: the input's train/test is kept; ``val`` is carved from the usable train videos of each class
(``round(n * val_fraction)``, at least one when a class has two or more, never all), unless the input already
has val rows; ``calib`` marks ``round(n * calib_fraction)`` (at least one) usable train videos of each class.
Both draws depend only on the seed and the video ids, so shards and reruns give the same splits.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from stfusion.config.layout import RunLayout
from stfusion.io.files import write_csv
from stfusion.errors import StfusionError

__all__ = ["SHARD_COLUMNS", "VIDEO_COLUMNS", "assign_splits", "class_table", "merge_shards", "shard_path",
           "summarise"]

log = logging.getLogger(__name__)

VIDEO_COLUMNS = ["id", "path", "label", "label_idx", "split", "calib", "frames", "fps", "width", "height",
                 "status", "reason"]
#: a shard's rows: the manifest's (without calib) plus the input position and the bytes of source and prepared file
SHARD_COLUMNS = ["order", *[c for c in VIDEO_COLUMNS if c != "calib"], "source_bytes", "bytes"]


def _pick(ids: list[str], fraction: float, key, at_least_one: bool, keep_one: bool) -> set[str]:
    """Choose ``round(len * fraction)`` of ``ids`` at random (deterministic in ``key``)."""
    n = len(ids)
    if n == 0 or fraction <= 0:
        return set()
    k = int(round(n * fraction))
    if at_least_one:
        k = max(k, 1)
    if keep_one:
        k = min(k, n - 1)
    k = min(k, n)
    order = np.random.default_rng(key).permutation(n)
    ids = sorted(ids)
    return {ids[i] for i in order[:k]}


def assign_splits(df: pd.DataFrame, id_column: str, ok: np.ndarray, n_classes: int, *, seed: int,
                  val_fraction: float, calib_fraction: float) -> None:
    """Carve ``val`` from the usable train videos and mark the ``calib`` subset, in place (see the module
    docstring). ``df`` has ``split`` and ``label_idx``; ``ok`` marks its usable rows."""
    if val_fraction > 0 and not (df["split"] == "val").any():
        for c in range(n_classes):
            rows = df.index[ok & (df["split"] == "train").to_numpy() & (df["label_idx"] == c).to_numpy()]
            chosen = _pick(df.loc[rows, id_column].tolist(), val_fraction, [seed, 1, c], at_least_one=True, keep_one=True)
            df.loc[rows[df.loc[rows, id_column].isin(chosen).to_numpy()], "split"] = "val"
    df["calib"] = False
    if calib_fraction > 0:
        for c in range(n_classes):
            rows = df.index[ok & (df["split"] == "train").to_numpy() & (df["label_idx"] == c).to_numpy()]
            chosen = _pick(df.loc[rows, id_column].tolist(), calib_fraction, [seed, 2, c], at_least_one=True, keep_one=False)
            df.loc[rows[df.loc[rows, id_column].isin(chosen).to_numpy()], "calib"] = True


def class_table(classes: list[str], kinds: dict | None) -> pd.DataFrame:
    """``classes.csv``: ``index, name, kind`` (kind from ``kinds``, else ``unknown``)."""
    kinds = kinds or {}
    return pd.DataFrame({"index": range(len(classes)), "name": list(classes),
                         "kind": [kinds.get(c, "unknown") for c in classes]})


def shard_path(out_dir, shard: int, n_shards: int) -> Path:
    return Path(RunLayout(cache=str(out_dir)).shard_manifest(shard, n_shards))


def read_shard(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise StfusionError(f"shard manifest not found: {path} (run 'stfusion prepare --shard {_shard_arg(path)}')")
    df = pd.read_csv(path, dtype={"id": str, "path": str, "label": str, "reason": str, "split": str},
                     keep_default_na=False)
    missing = [c for c in SHARD_COLUMNS if c not in df.columns]
    if missing:
        raise StfusionError(f"{path} is not a shard manifest (missing columns {','.join(missing)})")
    return df


def _shard_arg(path: Path) -> str:
    i, _, n = path.stem.removeprefix("manifest-").partition("-of-")
    return f"{i}/{n}"


def summarise(rows: pd.DataFrame) -> dict:
    """Counts of a shard or merged table: videos, usable videos, hours of usable video, bytes of the usable
    sources and of the files written (0 for linked ones) and their ratio."""
    ok = rows["status"] == "ok"
    fps = rows.loc[ok, "fps"].astype(float)
    seconds = (rows.loc[ok, "frames"].astype(float) / fps.where(fps > 0)).sum()
    source, written = int(rows.loc[ok, "source_bytes"].sum()), int(rows.loc[ok, "bytes"].sum())
    return {"videos": int(len(rows)), "ok": int(ok.sum()), "hours": round(float(seconds) / 3600, 6),
            "source_bytes": source, "bytes_written": written,
            "bytes_ratio": round(written / source, 4) if source else None,
            "statuses": dict(sorted(Counter(rows["status"]).items()))}


def merge_shards(out_dir, n_shards: int, videos: pd.DataFrame, classes: list[str], *, kinds: dict | None,
                 seed: int, val_fraction: float, calib_fraction: float, storage: dict) -> tuple[pd.DataFrame, dict]:
    """Merge the ``n_shards`` shard manifests of ``out_dir`` into ``manifest.csv`` (with the val and calib
    draws), ``classes.csv`` and ``storage.json`` (``storage`` plus the summary); returns (manifest, summary).

    ``videos`` is the input table (``video_id`` ...): the shards must cover exactly its videos.  Raises
    :class:`StfusionError` when a shard is missing or stale, or when no video at all is usable (then nothing
    is written)."""
    from stfusion.data.storage import write_storage

    out_dir = Path(out_dir)
    rows = pd.concat([read_shard(shard_path(out_dir, i, n_shards)) for i in range(n_shards)], ignore_index=True)
    expected = videos["video_id"].astype(str).tolist()
    got = rows.sort_values("order")["id"].tolist()
    if got != expected:
        absent = sorted(set(expected) - set(got))
        what = f"video {absent[0]!r} is in no shard" if absent else "they list other videos than the annotations"
        raise StfusionError(f"the {n_shards} shard manifests in {out_dir / 'shards'} do not match the dataset "
                            f"({len(got)} rows for {len(expected)} videos; {what}): rerun the shards")
    df = rows.sort_values("order").reset_index(drop=True)
    ok = (df["status"] == "ok").to_numpy()
    summary = summarise(df)
    if not ok.any():
        first = df.iloc[0]
        counts = ", ".join(f"{k}={v}" for k, v in summary["statuses"].items())
        raise StfusionError(f"no usable video among {len(df)} ({counts}); first: {first['id']}: {first['reason']}")
    assign_splits(df, "id", ok, len(classes), seed=seed, val_fraction=val_fraction, calib_fraction=calib_fraction)
    for rec in df[~ok].itertuples():
        log.warning("%s: %s (%s)", rec.id, rec.status, rec.reason)
    for rec in df[ok & df["reason"].fillna("").str.contains("decoded by PyAV", regex=False)].itertuples():
        log.warning("%s: %s", rec.id, rec.reason)  # the one line of each decoder fallback
    stale = out_dir / "clips.npy"
    if stale.is_file():
        log.info("removing %s left by an earlier cache storage", stale)
        stale.unlink()
    manifest = df[VIDEO_COLUMNS].copy()
    write_csv(class_table(classes, kinds), out_dir / "classes.csv")
    write_storage(out_dir, {**storage, "summary": summary})
    write_csv(manifest, out_dir / "manifest.csv")
    splits = ", ".join(f"{s}={int(((manifest['split'] == s) & ok).sum())}" for s in ("train", "val", "test"))
    skipped = ", ".join(f"{k}={v}" for k, v in summary["statuses"].items() if k != "ok") or "none"
    ratio = f"{summary['bytes_ratio']:.2f}x" if summary["bytes_ratio"] is not None else "n/a"
    log.info("prepare: %d/%d videos usable in %s (%s); %.2f h of video; %.3g GB written for %.3g GB of source "
             "(%s); skipped: %s", summary["ok"], summary["videos"], out_dir, splits, summary["hours"],
             summary["bytes_written"] / 1e9, summary["source_bytes"] / 1e9, ratio, skipped)
    return manifest, summary
