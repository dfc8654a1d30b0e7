"""Spatial transforms of decoded clips and the normalisation of batches: small pure functions.

The field's protocol (docs/method.md §8), as data: a :class:`ViewSpec` says how the clips of one use are cut.

- **train**: the short side is drawn from ``short_side = (min, max)``, a random ``crop`` x ``crop`` square is
  taken, and flipped horizontally half of the time when ``flip``;
- **eval** (validation, BatchNorm calibration, scoring): short side ``short_side[0]``, the centre ``crop``;
- **test**: ``clips`` temporal clips x ``crops`` spatial crops (1 = centre, 3 = left/centre/right along the
  longer side), every view from one decode; the networks' softmaxes are averaged over the views.

Rescaling to a short side ``s`` and cropping ``c`` is done the cheap way round: the box that the crop covers
in the scaled frame is mapped back to the decoded frame (side ``c * short / s`` pixels), cut there and resized
to ``c`` (bilinear, antialiased, uint8 in and out). ``short_side=None`` keeps the decoded scale, so on the
square clip cache with ``crop`` equal to its side every transform is the identity.

Files larger than a view needs (videos storage: :func:`decode_short_side` below the file's short side) are
decoded smaller: decord's scaler brings them to that short side while decoding, and the box is cut there. At the
evaluation short side the crop is then exact: the centre ``crop`` pixels of the scaled frames, no resize after.
Frames equal the ones of a full-size decode up to the interpolation (FFmpeg's bicubic scaler instead of the
antialiased bilinear resize of the box); smaller files are decoded at their own size, as before.

Clips stay ``uint8`` until they reach the device: :func:`normalize` turns a batch into floats there (a quarter
of the bytes through the pinned host-to-device copy), one function for training, calibration and scoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from stfusion.errors import StfusionError
from stfusion.data.sampling import spatial_crops

if TYPE_CHECKING:
    from stfusion.config.settings import Data

__all__ = ["MEAN", "STD", "MODES", "ViewSpec", "view_from_params", "decode_short_side", "crop_boxes", "cut",
           "normalize", "average_views", "views_text", "reported_views", "inference_clip_shape"]

#: per-channel normalisation on the 0-255 scale (the usual video constants 0.45 / 0.225)
MEAN = (114.75, 114.75, 114.75)
STD = (57.375, 57.375, 57.375)
MODES = ("train", "eval", "test")


@dataclass(frozen=True)
class ViewSpec:
    """How clips are cut. ``mode``: train | eval | test; ``crop``: output side in pixels (None = the whole
    decoded frame, square frames only); ``short_side``: ``(min, max)`` short side to rescale to (eval and
    test use ``min``; None = as decoded); ``flip``: random horizontal flip (train); ``clips`` x ``crops``:
    test views."""

    mode: str = "eval"
    crop: int | None = None
    short_side: tuple[int, int] | None = None
    flip: bool = False
    clips: int = 1
    crops: int = 1

    def __post_init__(self):
        if self.mode not in MODES:
            raise StfusionError(f"unknown view mode {self.mode!r} (choose one of: {', '.join(MODES)})")
        if self.crops not in (1, 3):
            raise StfusionError(f"data.test_crops must be 1 or 3, got {self.crops}")
        if int(self.clips) < 1:
            raise StfusionError(f"data.test_clips must be at least 1, got {self.clips}")
        if self.short_side is not None:
            lo, hi = self.short_side
            if not 1 <= lo <= hi:
                raise StfusionError(f"short side range must be 1 <= min <= max, got [{lo}, {hi}]")
            if self.crop is not None and self.crop > lo:
                raise StfusionError(f"crop {self.crop} is larger than the short side {lo} it is cut from")

    @property
    def n_views(self) -> int:
        """Views per video: ``clips * crops`` when testing, else 1."""
        return self.clips * self.crops if self.mode == "test" else 1


def view_from_params(data: Data, mode: str) -> ViewSpec:
    """The :class:`ViewSpec` of ``mode`` (train | eval | test) from the ``data`` settings:
    ``crop``/``train_short_side``/``flip`` for training, ``eval_crop``/``eval_short_side`` for evaluation,
    plus ``test_clips`` x ``test_crops`` for testing; a crop of null is ``size``."""
    if mode == "train":
        short = data.train_short_side
        return ViewSpec("train", data.crop or data.size, tuple(short) if short else None, data.flip)
    if mode not in MODES:
        raise StfusionError(f"unknown view mode {mode!r} (choose one of: {', '.join(MODES)})")
    short = data.eval_short_side
    test = mode == "test"
    return ViewSpec(mode, data.eval_crop or data.size, (short, short) if short else None,
                    clips=data.test_clips if test else 1, crops=data.test_crops if test else 1)


def decode_short_side(spec: ViewSpec) -> int | None:
    """The largest short side ``spec`` rescales frames to (the top of the training range; the evaluation short
    side), None where it keeps the decoded size: frames decoded at that short side lose nothing the view uses."""
    if spec.short_side is None:
        return None
    return spec.short_side[1] if spec.mode == "train" else spec.short_side[0]


def inference_clip_shape(data: Data) -> tuple[int, int, int, int]:
    """``(3, T, H, W)`` of one evaluation clip of the ``data`` settings: ``frames`` frames at the evaluation
    crop. A network's input at inference, so the one input size every network's cost (MACs) is counted at."""
    side = view_from_params(data, "eval").crop
    return (3, int(data.frames), side, side)


def views_text(clips: int, crops: int) -> str:
    """How test accuracies are measured, for tables and reports: ``"2 clips x 3 crops"`` (softmax averaged over
    the views)."""
    return f"{clips} clip{'s' if clips != 1 else ''} x {crops} crop{'s' if crops != 1 else ''}"


def reported_views(data: Data) -> dict:
    """The test views of the ``data`` settings as the columns of a table of test accuracies: ``test_clips``
    and ``test_crops`` (numbers) and ``test_views`` (:func:`views_text`)."""
    spec = view_from_params(data, "test")
    return {"test_views": views_text(spec.clips, spec.crops), "test_clips": spec.clips, "test_crops": spec.crops}


def crop_boxes(h: int, w: int, spec: ViewSpec, rng=None) -> np.ndarray:
    """Crop boxes in decoded-frame pixels, int ``(K, 4)`` of ``(top, left, bottom, right)``: one random box
    (train, drawn with ``rng.integers``), the centre box (eval), or ``spec.crops`` boxes (test)."""
    short = min(h, w)
    if spec.short_side is None:
        target = short
    elif spec.mode == "train":
        lo, hi = spec.short_side
        target = int(rng.integers(lo, hi + 1)) if hi > lo else lo
    else:
        target = spec.short_side[0]
    crop = short if spec.crop is None else spec.crop
    if spec.crop is None and h != w:
        raise StfusionError(f"frames of {h}x{w} need a crop size (data.crop / data.eval_crop)")
    scale = short / target
    side = min(max(int(round(crop * scale)), 1), short)  # the crop's side in decoded pixels
    if spec.mode == "train":
        # no draw where there is no room: the square cache at its own side consumes no random numbers
        top = int(rng.integers(0, h - side + 1)) if h > side else 0
        left = int(rng.integers(0, w - side + 1)) if w > side else 0
        return np.array([[top, left, top + side, left + side]], dtype=np.int64)
    return spatial_crops(h, w, side, spec.crops if spec.mode == "test" else 1)


def cut(frames: np.ndarray, box, size: int | None, flip: bool = False) -> torch.Tensor:
    """One view of decoded frames ``uint8 (T, H, W, 3)``: the ``box`` region, resized to ``size`` x ``size``
    (no resize when it already has that side or ``size`` is None), mirrored when ``flip``, as ``uint8 (3, T,
    size, size)``. One copy of the region without a resize; with one, the resize reads the ``(T, h, w, 3)`` copy
    as channels-last frames (the same pixels as from a channels-first copy, without converting)."""
    top, left, bottom, right = (int(v) for v in box)
    region = frames[:, top:bottom, left:right]  # a read-only source (the memory-mapped cache): copy the box only
    x = torch.from_numpy(region if region.flags.writeable else region.copy())
    if size is None or (x.shape[1] == size and x.shape[2] == size):
        x = x.permute(3, 0, 1, 2).contiguous()  # (3, T, h, w)
        return x.flip(-1) if flip else x
    x = (x.flip(2) if flip else x.contiguous()).permute(0, 3, 1, 2)  # (T, 3, h, w), channels-last strides
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.permute(1, 0, 2, 3).contiguous()


def _standardize(x: torch.Tensor) -> torch.Tensor:
    """``(x - MEAN) / STD`` in place, channels on the axis before ``(T, H, W)``."""
    if len(set(MEAN)) == 1 and len(set(STD)) == 1:  # one constant for every channel
        return x.sub_(MEAN[0]).mul_(1.0 / STD[0])
    mean = torch.tensor(MEAN, dtype=torch.float32, device=x.device).view(3, 1, 1, 1)
    return x.sub_(mean).mul_(1.0 / torch.tensor(STD, dtype=torch.float32, device=x.device).view(3, 1, 1, 1))


def normalize(x: torch.Tensor, device: torch.device | str, *, channels_last: bool = False) -> torch.Tensor:
    """A batch of uint8 clips ``(N, 3, T, H, W)`` (or views ``(N, V, 3, T, H, W)``) as the network's float32
    input on ``device``: moved as uint8 (non-blocking from pinned memory), then ``(x - MEAN) / STD``
    (:data:`MEAN`, :data:`STD` on the 0-255 scale). A float batch is taken as already normalised (pixels are
    uint8, network inputs float) and only moved. ``channels_last``: channels_last_3d memory layout."""
    x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        x = _standardize(x.float())
    if channels_last and x.ndim == 5:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


def average_views(logits: torch.Tensor, n_views: int) -> torch.Tensor:
    """Logits ``(N * V, C)`` of ``V`` views per video (video-major) as ``(N, C)`` log of the mean softmax: its
    argmax and cross-entropy are those of the averaged probabilities. One view: the logits unchanged."""
    if n_views == 1:
        return logits
    probs = logits.float().softmax(-1).view(-1, n_views, logits.shape[-1]).mean(1)
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
