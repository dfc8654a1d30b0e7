"""Datasets of clips: :class:`SplitClips` (what every storage shares: one split, temporal sampling, the spatial
views of :mod:`stfusion.data.transforms`) and :class:`ClipDataset` over the preprocessing cache (``clips.npy`` +
``manifest.csv`` + ``classes.csv``). Items are ``uint8`` clips: :func:`~stfusion.data.transforms.normalize`
turns batches into the networks' floats on the device."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from stfusion.errors import StfusionError
from stfusion.data.sampling import TorchRNG, segment_indices, segment_test_clips, test_clips, train_indices
from stfusion.data.transforms import MEAN, STD, ViewSpec, crop_boxes, cut

__all__ = ["ClipDataset", "SplitClips", "check_clips_per_decode", "default_view", "split_rows", "load_classes",
           "load_manifest", "MEAN", "STD", "SPLITS", "SAMPLINGS"]

SPLITS = ("train", "val", "test")
SAMPLINGS = ("dense", "segment")


def _require(path: Path) -> Path:
    if not path.is_file():
        raise StfusionError(f"cache file not found: {path} (run the preprocessing step first)")
    return path


def load_classes(cache_dir) -> pd.DataFrame:
    """``classes.csv`` of a cache as a DataFrame with columns ``index, name, kind``."""
    path = _require(Path(cache_dir) / "classes.csv")
    df = pd.read_csv(path, dtype={"name": str, "kind": str}, keep_default_na=False)
    if list(df.columns[:3]) != ["index", "name", "kind"]:
        raise StfusionError(f"{path} must have columns index,name,kind (found: {','.join(map(str, df.columns))})")
    return df


def load_manifest(cache_dir) -> pd.DataFrame:
    """``manifest.csv`` of a cache (every row, whatever its status)."""
    path = _require(Path(cache_dir) / "manifest.csv")
    df = pd.read_csv(path, dtype={"video_id": str, "path": str, "label": str, "reason": str}, keep_default_na=False)
    need = ["video_id", "label_idx", "split", "calib", "status", "cache_index"]
    if any(c not in df.columns for c in need):
        raise StfusionError(f"{path} is not a stfusion manifest (needs columns {','.join(need)})")
    df["calib"] = df["calib"].astype(str).str.lower().isin(["true", "1"])
    return df


def split_rows(manifest: pd.DataFrame, split: str, calib_only: bool = False) -> pd.DataFrame:
    """The usable (``status`` ok) rows of ``split`` in a manifest; ``calib_only``: its calibration subset."""
    if split not in SPLITS:
        raise StfusionError(f"unknown split {split!r} (choose one of: {', '.join(SPLITS)})")
    keep = (manifest["status"] == "ok") & (manifest["split"] == split)
    if calib_only:
        keep &= manifest["calib"]
    return manifest[keep].reset_index(drop=True)


def default_view(train: bool, flip: bool = False) -> ViewSpec:
    """The whole decoded frame: random flip when ``train`` and ``flip``, else as it is."""
    return ViewSpec("train" if train else "eval", flip=bool(flip) and train)


def check_clips_per_decode(k, view: ViewSpec) -> int:
    """``data.clips_per_decode`` as an int: a whole number of at least 1, above 1 only for training views."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise StfusionError(f"data.clips_per_decode must be a whole number of at least 1, got {k!r}")
    if k > 1 and view.mode != "train":
        raise StfusionError(f"data.clips_per_decode = {k} applies to training clips only, not to {view.mode} views")
    return int(k)


class SplitClips(Dataset):
    """Clips of one split: ``dataset[i] -> (uint8 (3, T, H, W), int label)``; in ``test`` view mode the clip is
    every view of the video, ``uint8 (V, 3, T, H, W)`` with ``V = clips * crops`` (clip-major), all cut from
    one decode of the union of the clips' frames.

    ``frames``/``stride``: clip length and step, in decoded frames.  ``sampling``: ``dense`` (a run of
    ``frames`` frames ``stride`` apart; random start when training, the centre clip, or ``clips`` evenly
    spaced clips when testing) or ``segment`` (TSN: one frame per equal segment; random within the segment
    when training, its centre, or ``clips`` evenly spaced positions within every segment when testing).
    ``train``: random temporal positions (else the deterministic ones). ``view``: the spatial protocol
    (:class:`~stfusion.data.transforms.ViewSpec`: random crop and flip, centre crop, or test views). Random draws use torch's global RNG, so restoring a
    checkpointed torch RNG state reproduces them.

    ``clips_per_decode`` (``K``, train view only): an item holds ``K`` clips ``uint8 (K, 3, T, H, W)`` of the same
    frames, decoded once, each with its own draw of short side, crop position and flip (PySlowFast's
    ``AUG.NUM_SAMPLE``); ``K = 1``: one clip ``(3, T, H, W)``, the draws of earlier versions exactly.
    :func:`stfusion.data.loader.clip_loader` makes batches of clips of such items.

    Subclasses give the rows (``manifest``, filtered to the split), ``_n_frames(i)`` and ``_decode(i, t)``
    (``uint8 (len(t), H, W, 3)`` for sorted frame indices ``t``).
    """

    def _setup(self, classes: pd.DataFrame, manifest: pd.DataFrame, split: str, *, frames: int, stride: int,
               sampling: str, train: bool, view: ViewSpec, clips_per_decode: int = 1) -> None:
        if sampling not in SAMPLINGS:
            raise StfusionError(f"unknown sampling {sampling!r} (choose one of: {', '.join(SAMPLINGS)})")
        if int(frames) < 1 or int(stride) < 1:
            raise StfusionError(f"frames and stride must be at least 1 (got frames={frames}, stride={stride})")
        self.classes, self.manifest, self.split = classes, manifest, split
        self.frames, self.stride, self.sampling, self.view = int(frames), int(stride), sampling, view
        if view.mode == "test" and train:
            raise StfusionError("test views are deterministic: build the dataset with train=False")
        self.train, self.flip = bool(train), view.flip
        self.clips_per_decode = check_clips_per_decode(clips_per_decode, view)
        self._labels = manifest["label_idx"].to_numpy(dtype=np.int64)
        self.labels = torch.from_numpy(self._labels.copy())
        self.num_classes = len(classes)
        self._rng = TorchRNG()

    def __len__(self) -> int:
        return len(self._labels)

    def _n_frames(self, i: int) -> int:
        raise NotImplementedError

    def _decode(self, i: int, t: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def clip_indices(self, i: int, rng=None) -> np.ndarray:
        """Frame indices of video ``i``: ``(T,)`` (training with ``rng``, or the centre clip) or, in test
        mode, ``(clips, T)``."""
        n = self._n_frames(i)
        if self.view.mode == "test":
            if self.sampling == "segment":
                return segment_test_clips(n, self.frames, self.view.clips)
            return test_clips(n, self.frames, self.stride, self.view.clips)
        if self.sampling == "segment":
            return segment_indices(n, self.frames, rng)
        if rng is None:
            return test_clips(n, self.frames, self.stride, 1)[0]
        return train_indices(n, self.frames, self.stride, rng)

    def clip(self, i: int) -> torch.Tensor:
        """The transformed clip of video ``i``, ``uint8 (3, T, H, W)``: ``(K, 3, T, H, W)`` with
        ``clips_per_decode`` K > 1, the test views ``(V, 3, T, H, W)`` in test mode."""
        if self.view.mode == "test":
            return self._test_views(i)
        frames = self._decode(i, self.clip_indices(i, self._rng if self.train else None))
        if self.clips_per_decode == 1:
            return self._view_of(frames)
        return torch.stack([self._view_of(frames) for _ in range(self.clips_per_decode)])

    def _view_of(self, frames: np.ndarray) -> torch.Tensor:
        """One train or eval view of decoded frames ``uint8 (T, H, W, 3)`` as ``uint8 (3, T, crop, crop)``: its
        box (a random one in training), mirrored half of the time when the view flips."""
        view = self.view
        box = crop_boxes(frames.shape[1], frames.shape[2], view, self._rng)[0]
        flip = view.mode == "train" and view.flip and bool(torch.rand(()) < 0.5)
        return cut(frames, box, view.crop, flip)

    def _test_views(self, i: int) -> torch.Tensor:
        """Every test view of video ``i``, ``uint8 (V, 3, T, crop, crop)`` (clip-major), from one decode."""
        view = self.view
        idx = self.clip_indices(i)
        union = np.unique(idx)  # one decode for every view
        frames = self._decode(i, union)
        boxes = crop_boxes(frames.shape[1], frames.shape[2], view)
        return torch.stack([cut(frames[np.searchsorted(union, t)], box, view.crop) for t in idx for box in boxes])

    def _check_index(self, i: int) -> int:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return i

    def __getitem__(self, i: int):
        i = self._check_index(i)
        return self.clip(i), int(self._labels[i])


class ClipDataset(SplitClips):
    """Clips of one split of the clip cache (``uint8`` items, see :class:`SplitClips`); frame indices count
    cached frames. ``calib_only``: only the calibration subset of the split. ``view``: the spatial protocol
    (default: random crop with ``flip`` when ``train``, else the centre view). The cache is square at its own
    side and is never rescaled: the view's short side is ignored, and a crop of None or of at least that side
    is the whole frame.
    """

    def __init__(
        self,
        cache_dir,
        split: str,
        *,
        frames: int,
        stride: int = 1,
        sampling: str = "dense",
        train: bool = True,
        flip: bool = False,
        calib_only: bool = False,
        view: ViewSpec | None = None,
        clips_per_decode: int = 1,
    ):
        self.cache_dir = Path(cache_dir)
        classes = load_classes(self.cache_dir)
        rows = split_rows(load_manifest(self.cache_dir), split, calib_only)
        self._clips_path = _require(self.cache_dir / "clips.npy")
        self._clips = None
        shape = self.clips.shape
        if len(shape) != 5 or shape[-1] != 3:
            raise StfusionError(f"{self._clips_path} has shape {shape}, expected (N, T, H, W, 3)")
        self.cache_frames = int(shape[1])
        if int(frames) > self.cache_frames:
            raise StfusionError(
                f"data.frames={frames} is more than the {self.cache_frames} frames per video in the cache "
                f"{self.cache_dir}: prepare it again (`stfusion prepare`; for the built-in benchmark with "
                f"data.builtin.frames >= {frames})"
            )
        view = view or default_view(train, flip)
        # the cache is square at its own side: no rescaling, and a crop cannot be larger than the frame
        view = replace(view, short_side=None, crop=None if view.crop is None else min(view.crop, shape[2]))
        self._setup(classes, rows, split, frames=frames, stride=stride,
                    sampling=sampling, train=train, view=view, clips_per_decode=clips_per_decode)
        idx = self.manifest["cache_index"].to_numpy(dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self.clips)):
            raise StfusionError(f"manifest and clips.npy of {self.cache_dir} do not match (preprocess again)")
        self._cache_index = idx

    @property
    def clips(self) -> np.ndarray:
        """The cached clips, memory-mapped on first use in each process (never pickled to workers)."""
        if self._clips is None:
            self._clips = np.load(self._clips_path, mmap_mode="r")
        return self._clips

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_clips"] = None
        return state

    def _n_frames(self, i: int) -> int:
        return self.cache_frames

    def _decode(self, i: int, t: np.ndarray) -> np.ndarray:
        return self.clips[self._cache_index[i], t]
