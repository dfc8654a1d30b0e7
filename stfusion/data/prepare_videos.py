"""Preparation for ``videos`` storage: one file per video that DataLoader workers decode while training.

Per video (``data.prepare``):

``reencode``  PyAV decodes the source and writes ``videos/<id>.mp4``: H.264 (libx264, CRF :data:`CRF`, preset
              :data:`PRESET`, tune :data:`TUNE`), yuv420p, a key frame every :data:`KEYINT` frames (seeking a clip
              decodes at most that many frames first), constant frame rate (the source's average rate: a frame
              goes to the output frame of its timestamp, so a variable-rate source has frames repeated in its gaps
              and dropped where they crowd; AVI, without presentation times, maps one to one), no audio, short
              side ``short_side`` (width and height even).
``link``      the user's file is used as it is (the manifest holds its absolute path); it is only probed: frame
              count, rate and size, and its first and last frames decoded.
JPEG frame folders (Something-Something V1) are packed, never re-encoded: ``videos/<id>.jpgpack``
(:mod:`stfusion.data.packed`) in ``reencode`` mode, the folder itself in ``link`` mode.  Frame folders have no
rate; :data:`FRAME_FOLDER_FPS` (the rate Something-Something V1 was extracted at) is recorded.

A bad video never stops the run: it becomes a row with status ``missing``, ``empty`` or ``unreadable`` and a
reason, as in :mod:`stfusion.data.cache`.

Shards: shard ``I`` of ``N`` prepares the videos ``k`` (input order) with ``k % N == I`` and writes
``shards/manifest-I-of-N.csv`` (:func:`stfusion.data.manifest.shard_path`).  Every file is written under a
temporary name and renamed; after each rename one line goes to the shard's journal
``shards/journal-I-of-N.jsonl``.  A rerun (after a kill, or with another N) reads every journal and skips the
videos whose journal line matches the settings and the source file (size, mtime) and whose prepared file is
there with the recorded size: only unfinished videos are redone.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import sys
import warnings
from fractions import Fraction
from pathlib import Path

import av
import pandas as pd

from stfusion.io.files import atomic_write, write_csv
from stfusion.errors import StfusionError
from stfusion.data.manifest import SHARD_COLUMNS, shard_path, summarise
from stfusion.data.packed import PACK_SUFFIX, pack_frames
from stfusion.data.video import DecoderFallbackWarning, VideoReadError, _check_path, _frame_files, _one_line, count_frames, read_frames

__all__ = ["CRF", "FRAME_FOLDER_FPS", "KEYINT", "MODES", "PRESET", "TUNE", "prepare_shard", "prepared_name",
           "reencode", "scaled_size"]

log = logging.getLogger(__name__)

MODES = ("reencode", "link")
KEYINT = 16
CRF = 23
PRESET = "veryfast"
#: x264's ``fastdecode`` tune (CAVLC instead of CABAC, no deblocking, no weighted prediction): a DataLoader worker
#: decodes a clip 1.5-1.8x faster at the same quality against a lossless encode, for 10-13% more bytes
#: (benchmarks/RESULTS.md, "Prepared files for fast decoding")
TUNE = "fastdecode"
#: libx264's options of every prepared file; a preparation journal records them, so changing one redoes the videos
ENCODER_OPTIONS = {"crf": str(CRF), "preset": PRESET, "tune": TUNE,
                   "x264-params": f"keyint={KEYINT}:min-keyint={KEYINT}:scenecut=0"}
FRAME_FOLDER_FPS = 12.0
#: what a journal line must match to be reused (changing any of these redoes the videos)
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------- naming
def prepared_name(video_id: str, suffix: str) -> Path:
    """Where a video's prepared file goes, relative to the cache folder: ``videos/<id><suffix>`` (the id's
    ``/`` become folders; empty, ``.`` and ``..`` parts become ``_``)."""
    parts = [p if p not in ("", ".", "..") else "_" for p in video_id.replace("\\", "/").split("/")]
    return Path("videos", *parts[:-1], parts[-1] + suffix)


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """``(width, height)`` with the short side ``short_side`` and the aspect ratio kept, both even."""
    if short_side % 2:
        raise StfusionError(f"data.short_side must be even (yuv420p), got {short_side}")
    scale = short_side / min(width, height)
    even = lambda v: max(2, int(round(v * scale / 2)) * 2)  # noqa: E731
    return (short_side, even(height)) if width <= height else (even(width), short_side)


# ------------------------------------------------------------------------------------------- one video
def _rate(stream) -> tuple[Fraction, str]:
    rate = stream.average_rate or stream.guessed_rate
    if not rate or not 0 < float(rate) <= 240:
        return Fraction(30), "frame rate unknown, written at 30 fps"
    return Fraction(rate).limit_denominator(1001), ""


def _slot(time: float | None, t0: float | None, count: int, rate: float) -> tuple[int, float | None]:
    """The output frame a decoded frame at ``time`` (seconds; None: unknown) goes to, given ``count`` frames
    written so far and the first frame's time ``t0``: ``round((time - t0) * rate)``.  Times that jump by more
    than a second (broken timestamps) re-anchor ``t0`` so the frame goes next.  Returns ``(slot, t0)``."""
    if time is None:
        return count, t0
    if t0 is None:
        t0 = time
    slot = int(round((time - t0) * rate))
    if abs(slot - count) > rate:
        return count, time - count / rate
    return slot, t0


def _output_stream(out, rate, width: int, height: int):
    """The H.264 stream of a prepared file in the open output container ``out`` (the module docstring)."""
    stream = out.add_stream("libx264", rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.time_base = 1 / rate
    stream.codec_context.thread_count = 1
    stream.options = dict(ENCODER_OPTIONS)
    return stream


def reencode(src, dst, short_side: int) -> dict:
    """Re-encode ``src`` into the mp4 ``dst`` (see the module docstring), atomically; returns ``frames, fps,
    width, height, reason``.  Raises :class:`VideoReadError` for a file that cannot be used."""
    src = _check_path(src)
    try:
        source = av.open(str(src))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as exc:
        raise VideoReadError(f"not a readable video: {src} ({_one_line(exc)})") from None
    info: dict = {}

    def write(tmp: Path) -> None:
        with source, av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            if not source.streams.video:
                raise VideoReadError(f"no video stream in {src}", "empty")
            stream_in = source.streams.video[0]
            stream_in.thread_type = "SLICE"
            stream_in.codec_context.thread_count = 1
            rate, info["reason"] = _rate(stream_in)
            use_times = source.format.name != "avi"  # AVI has no presentation times (B-frames come reordered)
            stream, last, t0 = None, None, None
            decoded = count = 0

            def put(scaled) -> None:
                scaled.pts, scaled.time_base = count, 1 / rate
                for packet in stream.encode(scaled):
                    out.mux(packet)

            try:
                for frame in source.decode(stream_in):
                    decoded += 1
                    if stream is None:
                        width, height = scaled_size(frame.width, frame.height, short_side)
                        stream = _output_stream(out, rate, width, height)
                    slot, t0 = _slot(frame.time if use_times else None, t0, count, float(rate))
                    if slot < count:  # a second frame within one output frame's time: dropped
                        continue
                    scaled = frame.reformat(width=width, height=height, format="yuv420p")
                    scaled.pict_type = av.video.frame.PictureType.NONE  # the source's key frames force none here
                    while count < slot:  # a gap in a variable-rate source: the previous frame again
                        put(last)
                        count += 1
                    put(scaled)
                    count, last = count + 1, scaled
            except (av.error.FFmpegError, ValueError) as exc:
                raise VideoReadError(
                    f"corrupt or truncated video {src}: decoding failed after {decoded} frames ({_one_line(exc)})"
                ) from None
            declared = int(stream_in.frames or 0)
            if count == 0:
                raise VideoReadError(f"video has no frames: {src}", "empty")
            if declared and decoded < 0.9 * declared:
                raise VideoReadError(f"truncated video {src}: the container declares {declared} frames, decoded {decoded}")
            for packet in stream.encode():
                out.mux(packet)
        info.update(frames=count, fps=float(rate), width=width, height=height)

    atomic_write(dst, write)
    return info


def _probe_images(folder: Path) -> dict:
    """Frame count and size of a JPEG folder, from the image headers (every frame must open, one size)."""
    from PIL import Image, UnidentifiedImageError

    files = _frame_files(folder)
    if not files:
        raise VideoReadError(f"no JPEG frames in folder {folder}", "empty")
    sizes = set()
    for f in files:
        try:
            with Image.open(f) as im:
                sizes.add(im.size)
        except (OSError, UnidentifiedImageError, SyntaxError) as exc:
            raise VideoReadError(f"unreadable frame {f.name} in {folder}: {_one_line(exc)}") from None
    if len(sizes) > 1:
        raise VideoReadError(f"frames of different sizes in folder {folder}")
    (width, height), = sizes
    return {"frames": len(files), "fps": FRAME_FOLDER_FPS, "width": width, "height": height, "reason": ""}


def probe(src, backend: str) -> dict:
    """``frames, fps, width, height, reason`` of a video file used as it is; its first and last frames are
    decoded so that a damaged file is found now, not while training."""
    src = _check_path(src)
    if src.is_dir():
        return _probe_images(src)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DecoderFallbackWarning)
        frames = count_frames(src, backend)
        ends = read_frames(src, [0, frames - 1], backend)
    with av.open(str(src)) as container:
        rate, reason = _rate(container.streams.video[0])
    fallback = [w for w in caught if issubclass(w.category, DecoderFallbackWarning)]
    reasons = [r for r in (reason, fallback and f"decoded by PyAV: {fallback[0].message}") if r]
    return {"frames": int(frames), "fps": float(rate), "width": int(ends.shape[2]), "height": int(ends.shape[1]),
            "reason": "; ".join(reasons)}


def _prepare_one(task: dict) -> dict:
    """Worker: prepare one video; returns its shard row (a bad file is a status, never an exception)."""
    src, out_dir = Path(task["source"]), Path(task["out_dir"])
    row = {"path": str(src), "frames": 0, "fps": 0.0, "width": 0, "height": 0, "bytes": 0}
    try:
        if task["mode"] == "link":
            info, stored = probe(src, task["backend"]), src.resolve()
        elif _check_path(src).is_dir():
            stored = _clear_partial(out_dir / prepared_name(task["id"], PACK_SUFFIX))
            info = _probe_images(src)
            pack_frames(_frame_files(src), stored)
        else:
            stored = _clear_partial(out_dir / prepared_name(task["id"], ".mp4"))
            info = reencode(src, stored, task["short_side"])
    except VideoReadError as exc:
        return {**row, "status": exc.status, "reason": str(exc)}
    except Exception as exc:  # a bad file must never stop the run
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        return {**row, "status": "unreadable", "reason": f"{type(exc).__name__}: {first_line}"}
    reasons = [info.pop("reason")]
    if info["frames"] < task["clip_span"]:
        reasons.append(f"short: {info['frames']} frames < {task['clip_span']} of one clip")
    written = task["mode"] != "link"
    return {**row, **info, "status": "ok", "reason": "; ".join(r for r in reasons if r),
            "path": stored.relative_to(out_dir).as_posix() if written else str(stored),
            "bytes": _size(stored) if written else 0}


def _clear_partial(path: Path) -> Path:
    """Remove what a killed earlier attempt at this video left (its temporary file); returns ``path``."""
    if path.parent.is_dir():
        for tmp in path.parent.glob(f".{path.name}.tmp*"):
            tmp.unlink(missing_ok=True)
    return path


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


# ----------------------------------------------------------------------------------------------- journal
def _source_key(path: str) -> list:
    try:
        st = os.stat(path)
    except OSError:
        return [path, None, None]
    return [path, st.st_size, st.st_mtime_ns]


def _journal_path(out_dir: Path, shard: int, n_shards: int) -> Path:
    return out_dir / "shards" / f"journal-{shard}-of-{n_shards}.jsonl"


def _finished(out_dir: Path, settings: dict) -> dict[str, dict]:
    """Journal entries (of every shard count) still valid, by video id: same settings, the source unchanged
    since, the prepared file intact.  Each entry holds ``source_key`` (path, size, mtime) and the shard ``row``."""
    done: dict[str, dict] = {}
    for journal in sorted((out_dir / "shards").glob("journal-*.jsonl")):
        for line in journal.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if entry.get("settings") == settings:
                done[entry["id"]] = entry
    valid = {}
    for vid, entry in done.items():
        row = entry["row"]
        if _source_key(entry["source_key"][0]) != entry["source_key"]:
            continue
        if row["status"] == "ok" and row["bytes"]:
            stored = out_dir / row["path"]
            if not stored.exists() or _size(stored) != row["bytes"]:
                continue
        valid[vid] = entry
    return valid


def _mp_context():
    # fork starts workers at once and they touch no torch state; elsewhere the platform default
    return multiprocessing.get_context("fork") if sys.platform.startswith("linux") else multiprocessing.get_context()


# ------------------------------------------------------------------------------------------------- shard
def prepare_shard(videos: pd.DataFrame, classes: list[str], out_dir, shard: int, n_shards: int, *, mode: str,
                  short_side: int, clip_span: int, backend: str = "decord", workers: int = 1,
                  progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Prepare shard ``shard`` of ``n_shards`` of ``videos`` (``video_id, path, label, split``, from
    :func:`~stfusion.data.formats.read_annotations`) into ``out_dir``; write and return its manifest
    (:data:`~stfusion.data.manifest.SHARD_COLUMNS`) and summary (:func:`~stfusion.data.manifest.summarise`).

    ``clip_span``: frames of one training clip (shorter videos are ``ok`` with reason ``short``); ``workers``
    processes prepare videos side by side (1 = in this process)."""
    if mode not in MODES:
        raise StfusionError(f"unknown data.prepare {mode!r} (choose one of: {', '.join(MODES)})")
    if not 0 <= shard < n_shards:
        raise StfusionError(f"shard {shard}/{n_shards}: the shard index must be in 0..{n_shards - 1}")
    out_dir = Path(out_dir)
    (out_dir / "shards").mkdir(parents=True, exist_ok=True)
    settings = {"version": FORMAT_VERSION, "prepare": mode, "short_side": int(short_side), **ENCODER_OPTIONS}
    index_of = {c: i for i, c in enumerate(classes)}
    mine = videos.iloc[shard::n_shards]
    finished = _finished(out_dir, settings)
    rows: dict[int, dict] = {}
    todo, reused = [], 0
    for order, rec in zip(mine.index, mine.itertuples()):
        base = {"order": int(order), "id": rec.video_id, "label": rec.label, "label_idx": index_of.get(rec.label, -1),
                "split": rec.split, "source_bytes": _size(Path(rec.path)) if os.path.exists(rec.path) else 0}
        if base["label_idx"] < 0:
            rows[order] = {**base, "path": rec.path, "frames": 0, "fps": 0.0, "width": 0, "height": 0, "bytes": 0,
                           "status": "unknown_label", "reason": f"label {rec.label!r} is not in the class list"}
        elif rec.video_id in finished and finished[rec.video_id]["source_key"][0] == rec.path:
            rows[order] = {**base, **finished[rec.video_id]["row"]}
            reused += 1
        else:
            rows[order] = base
            todo.append({"order": int(order), "id": rec.video_id, "source": rec.path, "out_dir": str(out_dir),
                         "mode": mode, "short_side": int(short_side), "backend": backend, "clip_span": int(clip_span)})
    log.info("shard %d/%d: %d videos, %d already prepared, %d to do", shard, n_shards, len(mine), reused, len(todo))
    from tqdm.auto import tqdm

    pool = _mp_context().Pool(workers) if workers > 1 and len(todo) > 1 else None
    try:
        results = pool.imap_unordered(_run, todo) if pool else map(_run, todo)
        with open(_journal_path(out_dir, shard, n_shards), "a") as journal:
            for order, source_key, row in tqdm(results, total=len(todo), desc=f"preparing shard {shard}/{n_shards}",
                                               unit="video", disable=not progress):
                rows[order].update(row)
                journal.write(json.dumps({"id": rows[order]["id"], "settings": settings, "source_key": source_key,
                                          "row": row}) + "\n")
                journal.flush()
                os.fsync(journal.fileno())
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    table = pd.DataFrame([rows[k] for k in sorted(rows)], columns=SHARD_COLUMNS)
    write_csv(table, shard_path(out_dir, shard, n_shards))
    summary = summarise(table)
    log.info("shard %d/%d: %s", shard, n_shards, summary)
    return table, summary


def _run(task: dict) -> tuple[int, list, dict]:
    key = _source_key(task["source"])  # before the work: a source changed meanwhile is redone next time
    return task["order"], key, _prepare_one(task)
