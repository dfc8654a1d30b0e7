"""Reading (and writing) videos: decord first, PyAV as the fallback, JPEG frame folders for Something-Something V1;
optionally torchcodec (``data.backend: torchcodec``: NVDEC decoding on the GPU, decord where it cannot be loaded).

Every call opens its own reader and closes it before returning: nothing holds a decoder between calls, so the
functions are safe in DataLoader workers and in the processes of :func:`stfusion.data.cache.preprocess`.

Import order matters and is fixed here: ``av`` first, then ``torch``, then ``decord``.  decord loads its
bundled FFmpeg libraries with ``RTLD_GLOBAL``; imported before ``av`` its libvpx shadows PyAV's and PyAV can
no longer encode webm ("ABI version mismatch").  torch goes before decord as decord's documentation asks.

Known decord 0.6.0 bug: frames of width 8, 12, 16, 24, 48 or 72 come back with 4 channels and batched reads
fail ("DECORDArrayCopyFromTo: The size must exactly match").  Such reads are detected and redone with PyAV
(with a warning); the built-in benchmark is written at width 64 so it never meets the bug.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import re
import sys
import tempfile
import threading
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path

import av  # before decord, see the module docstring
import numpy as np
import torch  # noqa: F401  (before decord)

try:
    import decord

    # FFmpeg's own messages (``[h264 @ 0x...] error while decoding MB``) would precede stfusion's line, which
    # names the file and the reason; decord's open errors are held by _held_native_stderr
    decord.logging.set_level(decord.logging.QUIET)
except ImportError:  # pragma: no cover - decord is a hard dependency, but keep PyAV usable without it
    decord = None

from stfusion.errors import StfusionError
from stfusion.data.packed import PACK_SUFFIX, PackedFrames
from stfusion.data.sampling import uniform_indices

__all__ = [
    "BACKENDS",
    "DecoderFallbackWarning",
    "VideoReadError",
    "count_frames",
    "read_frames",
    "read_uniform",
    "usable_backend",
    "write_video",
    "DECORD_BAD_WIDTHS",
]

log = logging.getLogger(__name__)

BACKENDS = ("decord", "pyav", "torchcodec")
#: widths at which decord 0.6.0 returns 4-channel frames / fails on batched reads (found by a width sweep)
DECORD_BAD_WIDTHS = (8, 12, 16, 24, 48, 72)
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


class VideoReadError(StfusionError):
    """A video that cannot be used. ``status`` is ``missing``, ``empty`` (no frames) or ``unreadable``."""

    def __init__(self, message: str, status: str = "unreadable"):
        super().__init__(message)
        self.status = status


class DecoderFallbackWarning(UserWarning):
    """decord could not read a file and PyAV was used instead."""


# --------------------------------------------------------------------------------------------- helpers
def _check_backend(backend: str) -> str:
    if backend == "av":
        backend = "pyav"
    if backend not in BACKENDS:
        raise StfusionError(f"unknown video backend {backend!r} (choose one of: {', '.join(BACKENDS)})")
    if backend == "torchcodec" and _torchcodec_decoder() is None:
        backend = "decord"
    if backend == "decord" and decord is None:
        return "pyav"
    return backend


def usable_backend(backend: str) -> str:
    """The backend reads will use for ``backend``: torchcodec becomes decord where it cannot be loaded (said in
    one log line per process; call this before DataLoader workers start, so that they inherit the answer)."""
    return _check_backend(backend)


@functools.cache
def _torchcodec_decoder():
    """torchcodec's ``VideoDecoder`` class, or None (with one log line) where torchcodec, its FFmpeg shared
    libraries or the libraries of its build (a CUDA build needs CUDA's) cannot be loaded."""
    try:
        from torchcodec.decoders import VideoDecoder
    except (ImportError, OSError, RuntimeError) as exc:
        log.warning("data.backend torchcodec is not usable here (%s); decoding with decord instead",
                    _one_line(exc.__cause__ or exc))
        return None
    return VideoDecoder


def _check_path(path) -> Path:
    p = Path(path)
    if not p.exists():
        raise VideoReadError(f"video not found: {p}", "missing")
    if p.is_file() and p.stat().st_size == 0:
        raise VideoReadError(f"empty file (0 bytes): {p}", "empty")
    return p


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # decord puts the useful sentence last, after a file:line prefix
    line = lines[-1] if lines else text
    if "] " in line and line.startswith("["):
        line = line.split("] ", 1)[1]
    line = re.sub(r"^\S+\.(?:cc|c|h|cpp):\d+: ", "", line.strip())
    return line[:200]


def _as_indices(indices, n: int | None = None) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and idx.min() < 0:
        raise StfusionError(f"frame indices must be non-negative, got {int(idx.min())}")
    if n is not None and idx.size and idx.max() >= n:
        raise StfusionError(f"frame index {int(idx.max())} out of range for a video of {n} frames")
    return idx


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file())


# ------------------------------------------------------------------------------ JPEG folders and packs
def _is_images(p: Path) -> bool:
    """A JPEG frame folder or a packed one (:mod:`stfusion.data.packed`) rather than a video file."""
    return p.is_dir() or p.suffix.lower() == PACK_SUFFIX


@contextmanager
def _images(p: Path):
    """The frames of a folder (sorted image files) or of a ``.jpgpack`` file: a sequence of what PIL opens."""
    if p.is_dir():
        files = _frame_files(p)
        if not files:
            raise VideoReadError(f"no JPEG frames in folder {p}", "empty")
        yield files
        return
    try:
        pack = PackedFrames(p)
    except (zipfile.BadZipFile, OSError) as exc:
        raise VideoReadError(f"not a readable frame pack: {p} ({_one_line(exc)})") from None
    with pack:
        if not len(pack):
            raise VideoReadError(f"no frames in {p}", "empty")
        yield pack


def _count_images(p: Path) -> int:
    with _images(p) as frames:
        return len(frames)


def _read_images(p: Path, indices) -> tuple[np.ndarray, int]:
    from PIL import Image, UnidentifiedImageError

    with _images(p) as sources:
        n = len(sources)
        idx = np.arange(n) if indices is None else _as_indices(indices, n)
        uniq, inverse = np.unique(idx, return_inverse=True)
        frames = []
        for i in uniq:
            try:
                with Image.open(sources[i]) as im:
                    frames.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            except (OSError, UnidentifiedImageError, SyntaxError, zipfile.BadZipFile) as exc:
                name = sources.names[i] if isinstance(sources, PackedFrames) else sources[i].name
                raise VideoReadError(f"unreadable frame {name} in {p}: {_one_line(exc)}") from None
    if len({f.shape for f in frames}) > 1:
        raise VideoReadError(f"frames of different sizes in {p}")
    out = np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)
    return out[inverse], n


# ---------------------------------------------------------------------------------------------- decord
_NATIVE_STDERR = threading.Lock()  # file descriptor 2 is the process's: one redirection at a time


@functools.cache
def _native_stderr_sink(pid: int):
    """One temporary file a process (``pid``: a forked loader worker gets its own, not its parent's offset) that
    :func:`_held_native_stderr` empties and reuses for every open: no file created per video on the loading path.
    Closed when the process exits (no unclosed-file warning)."""
    sink = tempfile.TemporaryFile()
    atexit.register(sink.close)
    return sink


@contextmanager
def _held_native_stderr():
    """Hold what native code writes to file descriptor 2 (decord's ``ERROR opening ...``, FFmpeg's messages) in a
    temporary file instead of the console, where it would precede stfusion's own warning; yields a function that
    returns the text held so far."""
    with _NATIVE_STDERR:
        held = _native_stderr_sink(os.getpid())
        held.seek(0)
        held.truncate()
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield lambda: (held.seek(0), held.read().decode(errors="replace"))[1]
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _decord_open(path: Path, threads: int, size: tuple[int, int] | None = None):
    """decord's reader of ``path`` (frames scaled to ``size = (width, height)`` by FFmpeg's scaler while decoding,
    when given); when decord cannot open it, a ``RuntimeError`` whose last line is decord's own reason (which it
    prints natively rather than raising)."""
    scaled = {} if size is None else {"width": int(size[0]), "height": int(size[1])}
    with _held_native_stderr() as held:
        try:
            return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads, **scaled)
        except Exception as exc:
            raise RuntimeError(f"{exc}\n{held().strip()}".strip()) from None


def _in_order(frames: np.ndarray, uniq: np.ndarray, idx: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """``uint8 (len(idx), H, W, 3)``: ``frames`` of the sorted distinct indices ``uniq`` in the order (and with
    the repeats) of ``idx``; no copy when ``idx`` is ``uniq`` (a sorted clip without repeated frames)."""
    if len(uniq) == len(idx) and np.array_equal(uniq, idx):
        return np.ascontiguousarray(frames, dtype=np.uint8)
    return np.ascontiguousarray(frames[inverse], dtype=np.uint8)


def _decord_batch(vr, idx: np.ndarray) -> np.ndarray:
    uniq, inverse = np.unique(idx, return_inverse=True)
    batch = vr.get_batch(uniq.tolist())
    arr = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
    if arr.ndim != 4 or arr.shape[0] != len(uniq) or arr.shape[-1] != 3:
        raise RuntimeError(f"decord returned frames of shape {arr.shape}")
    return _in_order(arr, uniq, idx, inverse)


def _read_decord(path: Path, indices, threads: int, size: tuple[int, int] | None = None) -> tuple[np.ndarray, int]:
    vr = _decord_open(path, threads, size)
    try:
        n = len(vr)
        if n < 1:
            raise VideoReadError(f"video has no frames: {path}", "empty")
        idx = np.arange(n) if indices is None else _as_indices(indices, n)
        return _decord_batch(vr, idx), n
    finally:
        del vr


def _uniform_decord(path: Path, num: int, threads: int) -> tuple[np.ndarray, int]:
    vr = _decord_open(path, threads)
    try:
        n = len(vr)
        if n < 1:
            raise VideoReadError(f"video has no frames: {path}", "empty")
        return _decord_batch(vr, uniform_indices(n, num)), n
    finally:
        del vr


# ------------------------------------------------------------------------------------------ torchcodec
def _torchcodec_device() -> str:
    """NVDEC on the GPU in the training process; the CPU inside DataLoader workers (CUDA cannot start in a
    forked worker)."""
    in_worker = torch.utils.data.get_worker_info() is not None
    return "cuda" if torch.cuda.is_available() and not in_worker else "cpu"


def _read_torchcodec(path: Path, indices, threads: int) -> tuple[np.ndarray, int]:
    decoder = _torchcodec_decoder()(str(path), device=_torchcodec_device(), dimension_order="NHWC",
                                    num_ffmpeg_threads=threads)
    n = len(decoder)
    if n < 1:
        raise VideoReadError(f"video has no frames: {path}", "empty")
    idx = np.arange(n) if indices is None else _as_indices(indices, n)
    uniq, inverse = np.unique(idx, return_inverse=True)
    frames = decoder.get_frames_at(uniq.tolist()).data.cpu().numpy()
    return _in_order(frames, uniq, idx, inverse), n


# ------------------------------------------------------------------------------------------------ PyAV
def _pyav_decode(
    path: Path, wanted: np.ndarray | None, threads: int, keep: bool = True
) -> tuple[dict[int, np.ndarray], int, int]:
    """Decode sequentially; keep frames whose index is in ``wanted`` (all when None; none when not ``keep``,
    to count frames without converting them).

    Returns (kept frames by index, number of frames decoded, frames declared by the container or 0).
    Stops after the last wanted frame.
    """
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as exc:
        raise VideoReadError(f"not a readable video: {path} ({_one_line(exc)})") from None
    with container:
        if not container.streams.video:
            raise VideoReadError(f"no video stream in {path}", "empty")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO" if threads != 1 else "SLICE"
        if threads > 0:
            stream.codec_context.thread_count = threads
        declared = int(stream.frames or 0)
        want = None if wanted is None else {int(i) for i in wanted}
        last = None if wanted is None else int(max(wanted)) if len(wanted) else -1
        kept: dict[int, np.ndarray] = {}
        count = 0
        try:
            for frame in container.decode(stream):
                if keep and (want is None or count in want):
                    kept[count] = frame.to_ndarray(format="rgb24")
                count += 1
                if last is not None and count > last:
                    break
        except (av.error.FFmpegError, ValueError) as exc:
            raise VideoReadError(
                f"corrupt or truncated video {path}: decoding failed after {count} frames ({_one_line(exc)})"
            ) from None
    if count == 0 and (last is None or last >= 0):
        raise VideoReadError(f"video has no frames: {path}", "empty")
    if wanted is None and declared and count < 0.9 * declared:
        raise VideoReadError(f"truncated video {path}: the container declares {declared} frames, decoded {count}")
    return kept, count, declared


def _read_pyav(path: Path, indices, threads: int) -> tuple[np.ndarray, int]:
    idx = None if indices is None else _as_indices(indices)
    kept, count, _ = _pyav_decode(path, idx, threads)
    if idx is None:
        return np.stack([kept[i] for i in range(count)]), count
    missing = [int(i) for i in idx if int(i) not in kept]
    if missing:
        raise StfusionError(f"frame index {max(missing)} out of range for {path} ({count} frames decoded)")
    return np.stack([kept[int(i)] for i in idx]) if len(idx) else np.zeros((0, 1, 1, 3), np.uint8), count


def _uniform_pyav(path: Path, num: int, threads: int) -> tuple[np.ndarray, int]:
    # Trust the declared frame count to decode only the needed frames; redo keeping everything if it lied.
    probe = None
    try:
        with av.open(str(path)) as c:
            if c.streams.video:
                probe = int(c.streams.video[0].frames or 0)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError):
        probe = None  # _pyav_decode reports it
    if probe:
        idx = uniform_indices(probe, num)
        kept, count, declared = _pyav_decode(path, idx, threads)
        if all(int(i) in kept for i in idx):
            # count stops at the last wanted frame; the declared count is the video's length
            return np.stack([kept[int(i)] for i in idx]), max(declared, count)
    kept, count, _ = _pyav_decode(path, None, threads)
    idx = uniform_indices(count, num)
    return np.stack([kept[int(i)] for i in idx]), count


# ---------------------------------------------------------------------------------------------- public
def _dispatch(path, backend: str, threads: int, folder_fn, decord_fn, pyav_fn, torchcodec_fn=None):
    backend = _check_backend(backend)
    if backend == "torchcodec" and torchcodec_fn is None:  # frame counts and uniform reads: decord's index
        backend = _check_backend("decord")
    p = _check_path(path)
    if _is_images(p):
        return folder_fn(p)
    if backend in ("decord", "torchcodec"):
        try:
            return (torchcodec_fn if backend == "torchcodec" else decord_fn)(p)
        except StfusionError as exc:
            if getattr(exc, "status", None) is None:  # a caller mistake (bad index): no point retrying
                raise
            reason = _one_line(exc)
        except Exception as exc:  # decord raises DECORDError, RuntimeError, IndexError, ...
            reason = _one_line(exc)
        try:
            result = pyav_fn(p)
        except VideoReadError as exc:
            raise VideoReadError(f"{exc} [decord: {reason}]", exc.status) from None
        # one warning, which the callers log once: preparation on the video's manifest row, the commands as a warning
        warnings.warn(f"decord could not read {p} ({reason}); used PyAV instead", DecoderFallbackWarning, stacklevel=3)
        return result
    return pyav_fn(p)


def read_frames(path, indices=None, backend: str = "decord", *, threads: int = 1,
                size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode frames of a video file or JPEG frame folder as ``uint8 (T, H, W, 3)`` RGB.

    ``indices``: frame numbers to return, in the order given (repeats allowed); None = every frame.
    ``backend``: ``decord`` (falls back to PyAV with a :class:`DecoderFallbackWarning` when decord fails),
    ``pyav`` or ``torchcodec`` (NVDEC on the GPU, see :func:`_torchcodec_device`; decord where torchcodec cannot
    be loaded, :func:`usable_backend`; PyAV where it fails on a file).  A directory is read as sorted
    ``.jpg``/``.jpeg``/``.png`` frames, a ``.jpgpack`` file
    (:mod:`stfusion.data.packed`) as the frames it packs.  ``threads``: decoder
    threads (0 = FFmpeg's choice).  ``size = (width, height)``: decord scales the frames to it while decoding
    (FFmpeg's scaler, bicubic, with the colour conversion); the other readers return frames at the file's own size.
    Raises :class:`VideoReadError` (a :class:`StfusionError`) for missing,
    empty, corrupt, truncated or non-video files and :class:`StfusionError` for out-of-range indices.
    """
    frames, _ = _dispatch(
        path,
        backend,
        threads,
        lambda p: _read_images(p, indices),
        lambda p: _read_decord(p, indices, threads, size),
        lambda p: _read_pyav(p, indices, threads),
        lambda p: _read_torchcodec(p, indices, threads),
    )
    return frames


def read_uniform(path, num: int, backend: str = "decord", *, threads: int = 1) -> tuple[np.ndarray, int]:
    """Open once and return ``(frames, n_frames)``: ``num`` frames spread uniformly over the whole video
    (:func:`~stfusion.data.sampling.uniform_indices`; frames repeat when the video is shorter than ``num``)
    and the video's frame count."""
    if int(num) < 1:
        raise StfusionError(f"number of frames to read must be at least 1, got {num}")

    def folder(p):
        n = _count_images(p)
        return _read_images(p, uniform_indices(n, num))[0], n

    return _dispatch(
        path,
        backend,
        threads,
        folder,
        lambda p: _uniform_decord(p, num, threads),
        lambda p: _uniform_pyav(p, num, threads),
    )


def count_frames(path, backend: str = "decord") -> int:
    """Number of frames of a video file (decord's index, or decoded by PyAV), JPEG frame folder or frame pack."""
    backend = _check_backend(backend)
    p = _check_path(path)
    if _is_images(p):
        return _count_images(p)

    def by_decord(q):
        vr = _decord_open(q, 1)
        try:
            n = len(vr)
        finally:
            del vr
        if n < 1:
            raise VideoReadError(f"video has no frames: {q}", "empty")
        return n

    if backend == "decord":
        return _dispatch(p, "decord", 1, None, by_decord, _pyav_count)
    return _pyav_count(p)


def _pyav_count(path: Path) -> int:
    """Count frames by decoding (container metadata is missing in webm and unreliable elsewhere)."""
    return _pyav_decode(path, None, threads=0, keep=False)[1]


# --------------------------------------------------------------------------------------------- writing
def _lossless_h264() -> tuple[str, str, dict]:
    # libx264rgb keeps RGB (gbrp planes): bit-exact with qp 0, and decord 0.6.0 decodes it.
    if "libx264rgb" in av.codecs_available:
        return "libx264rgb", "rgb24", {"qp": "0", "preset": "ultrafast"}
    return "libx264", "yuv444p", {"qp": "0", "preset": "ultrafast"}


def write_video(path, frames: np.ndarray, *, fps: int = 12, lossless: bool = True) -> Path:
    """Write ``uint8 (T, H, W, 3)`` RGB frames with PyAV; the container follows the file suffix.

    ``.mp4``/``.mkv``/``.avi``: H.264 (lossless: libx264rgb ``qp=0``, exact RGB; lossy: yuv420p crf 18);
    ``.webm``: VP9 (lossless mode, or default quality).  The file is written under a temporary name and
    renamed, so an interrupted write leaves no half file.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise StfusionError(f"write_video needs uint8 frames of shape (T, H, W, 3), got {frames.dtype} {frames.shape}")
    suffix = path.suffix.lower()
    if suffix == ".webm":
        codec, pix_fmt = "libvpx-vp9", "yuv444p" if lossless else "yuv420p"
        options = {"lossless": "1"} if lossless else {"crf": "30", "b": "0"}
        fmt = "webm"
    elif suffix in (".mp4", ".mkv", ".avi", ".mov"):
        codec, pix_fmt, options = _lossless_h264() if lossless else ("libx264", "yuv420p", {"crf": "18"})
        fmt = {".mp4": "mp4", ".mkv": "matroska", ".avi": "avi", ".mov": "mov"}[suffix]
        if not lossless and (frames.shape[1] % 2 or frames.shape[2] % 2):
            raise StfusionError("lossy (yuv420p) videos need an even width and height")
    else:
        raise StfusionError(f"cannot write a video with suffix {suffix!r} (use .mp4, .mkv, .avi, .mov or .webm)")
    if codec not in av.codecs_available:
        raise StfusionError(f"this PyAV build has no {codec} encoder needed for {suffix} files")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with av.open(str(tmp), "w", format=fmt) as container:
            stream = container.add_stream(codec, rate=int(fps))
            stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
            stream.pix_fmt = pix_fmt
            stream.options = options
            stream.codec_context.thread_count = 1
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    except av.error.FFmpegError as exc:
        raise StfusionError(f"could not encode {path} with {codec}: {_one_line(exc)}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
