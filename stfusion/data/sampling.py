"""Clip samplers: small pure functions that return frame indices or crop boxes.

Videos shorter than a clip are handled by **clamping**: indices past the last frame are replaced by the last
frame (and a clip that does not fit starts at frame 0), so indices never decrease.  Looping was rejected on
purpose: wrapping from the end back to the start inserts a backwards jump in time, and the order of frames
is itself a label in the built-in benchmark (a clip and its time reversal belong to different classes).

Random draws go through ``rng``, anything with numpy's ``Generator.integers(low, high)`` method: a
``numpy.random.Generator``, or :class:`TorchRNG`, which draws from torch's global generator (or a given
``torch.Generator``) so that a checkpointed torch RNG state reproduces the sampled clips.
"""

from __future__ import annotations

import numpy as np

from stfusion.errors import StfusionError

__all__ = [
    "TorchRNG",
    "uniform_indices",
    "train_indices",
    "segment_indices",
    "test_clips",
    "segment_test_clips",
    "centre_indices",
    "spatial_crops",
]


class TorchRNG:
    """Adapter giving torch's RNG numpy's ``integers(low, high)`` interface (high exclusive)."""

    def __init__(self, generator=None):
        self.generator = generator

    def integers(self, low, high=None, size=None):
        import torch

        if high is None:
            low, high = 0, low
        shape = () if size is None else (tuple(size) if np.iterable(size) else (int(size),))
        if np.ndim(low) or np.ndim(high):  # per-element bounds: draw uniform floats and scale
            low = np.asarray(low, dtype=np.int64)
            high = np.asarray(high, dtype=np.int64)
            shape = np.broadcast_shapes(low.shape, high.shape, shape)
            u = torch.rand(shape, generator=self.generator, dtype=torch.float64).numpy()
            return np.minimum(low + np.floor(u * (high - low)).astype(np.int64), high - 1)
        if not shape:
            return int(torch.randint(int(low), int(high), (), generator=self.generator))
        return torch.randint(int(low), int(high), shape, generator=self.generator).numpy()


def _check(n_frames: int, frames: int, stride: int = 1) -> None:
    if int(n_frames) < 1:
        raise StfusionError(f"cannot sample from a video with {n_frames} frames")
    if int(frames) < 1:
        raise StfusionError(f"frames per clip must be at least 1, got {frames}")
    if int(stride) < 1:
        raise StfusionError(f"stride must be at least 1, got {stride}")


def uniform_indices(n_frames: int, num: int) -> np.ndarray:
    """``num`` indices spread uniformly over ``n_frames`` (the centre of each of ``num`` equal segments).

    With ``num > n_frames`` frames repeat (the video is stretched in time; order is kept).
    """
    _check(n_frames, num)
    i = np.arange(num, dtype=np.float64)
    idx = np.floor((i + 0.5) * n_frames / num).astype(np.int64)
    return np.clip(idx, 0, n_frames - 1)


def _dense(n_frames: int, frames: int, stride: int, start: int) -> np.ndarray:
    idx = start + np.arange(frames, dtype=np.int64) * stride
    return np.minimum(idx, n_frames - 1)


def train_indices(n_frames: int, frames: int, stride: int, rng) -> np.ndarray:
    """Dense clip of ``frames`` indices ``stride`` apart, starting at a random frame (training).

    The start is uniform over every position where the clip fits; a clip longer than the video starts at 0
    and is clamped at the last frame.
    """
    _check(n_frames, frames, stride)
    span = (frames - 1) * stride + 1
    start = int(rng.integers(0, n_frames - span + 1)) if n_frames >= span else 0
    return _dense(n_frames, frames, stride, start)


def segment_indices(n_frames: int, frames: int, rng=None) -> np.ndarray:
    """TSN sampling: split the video into ``frames`` equal segments and take one index from each.

    Training (``rng`` given): a random frame inside each segment.  Evaluation (``rng is None``): the centre of
    each segment.  With fewer frames than segments, neighbouring segments share (repeat) a frame.
    """
    _check(n_frames, frames)
    if rng is None:
        return uniform_indices(n_frames, frames)
    i = np.arange(frames, dtype=np.int64)
    lo = (i * n_frames) // frames
    hi = np.maximum(((i + 1) * n_frames) // frames, lo + 1)
    idx = np.asarray(rng.integers(lo, hi), dtype=np.int64)
    return np.clip(idx, 0, n_frames - 1)


def test_clips(n_frames: int, frames: int, stride: int, n_clips: int) -> np.ndarray:
    """``n_clips`` dense clips with uniformly spaced starts, as an int array ``(n_clips, frames)``.

    Clip ``k`` is centred on the ``(k + 0.5) / n_clips`` quantile of the positions where a clip fits, so a
    single clip is the centre clip.  Clips longer than the video start at 0 and are clamped.
    """
    _check(n_frames, frames, stride)
    if int(n_clips) < 1:
        raise StfusionError(f"n_clips must be at least 1, got {n_clips}")
    span = (frames - 1) * stride + 1
    room = max(n_frames - span, 0)
    starts = np.floor((np.arange(n_clips) + 0.5) * room / n_clips + 0.5).astype(np.int64)
    starts = np.minimum(starts, room)
    return np.stack([_dense(n_frames, frames, stride, int(s)) for s in starts])


test_clips.__test__ = False  # a sampler, not a pytest test, when imported into a test module


def segment_test_clips(n_frames: int, frames: int, n_clips: int) -> np.ndarray:
    """``n_clips`` TSN clips as an int array ``(n_clips, frames)``: clip ``k`` takes the frame at the
    ``(k + 0.5) / n_clips`` position of every one of ``frames`` equal segments (one clip = the segment centres,
    :func:`segment_indices` without ``rng``)."""
    _check(n_frames, frames)
    if int(n_clips) < 1:
        raise StfusionError(f"n_clips must be at least 1, got {n_clips}")
    seg = np.arange(frames, dtype=np.float64)[None] + (np.arange(n_clips)[:, None] + 0.5) / n_clips
    return np.clip(np.floor(seg * n_frames / frames).astype(np.int64), 0, n_frames - 1)


def centre_indices(n_frames: int, frames: int, stride: int = 1) -> np.ndarray:
    """The deterministic centre clip (evaluation with one temporal view)."""
    return test_clips(n_frames, frames, stride, 1)[0]


def spatial_crops(h: int, w: int, size: int, k: int) -> np.ndarray:
    """``k`` square crop boxes of side ``size`` as an int array ``(k, 4)`` of ``(top, left, bottom, right)``.

    Boxes are spread evenly along the longer side and centred on the shorter one: ``k=1`` is the centre crop,
    ``k=3`` is left/centre/right (top/centre/bottom for portrait frames).  Slice with
    ``frame[top:bottom, left:right]``.
    """
    if int(k) < 1:
        raise StfusionError(f"number of spatial crops must be at least 1, got {k}")
    if size > h or size > w or size < 1:
        raise StfusionError(f"crop size {size} does not fit a {h}x{w} frame")
    long_is_w = w >= h
    room_long = (w if long_is_w else h) - size
    room_short = (h if long_is_w else w) - size
    if k == 1:
        along = np.array([room_long // 2])
    else:
        along = np.floor(np.linspace(0, room_long, k) + 0.5).astype(np.int64)
    across = np.full(k, room_short // 2)
    top, left = (across, along) if long_is_w else (along, across)
    return np.stack([top, left, top + size, left + size], axis=1).astype(np.int64)
