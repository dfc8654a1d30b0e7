"""A torch Dataset over the preprocessing cache (``clips.npy`` + ``manifest.csv`` + ``classes.csv``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..errors import StfusionError
from .sampling import TorchRNG, centre_indices, segment_indices, test_clips, train_indices

__all__ = ["ClipDataset", "load_classes", "load_manifest", "MEAN", "STD", "SPLITS", "SAMPLINGS"]

#: per-channel normalisation on the 0-255 scale (the usual video constants 0.45 / 0.225)
MEAN = (114.75, 114.75, 114.75)
STD = (57.375, 57.375, 57.375)
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


class ClipDataset(Dataset):
    """Clips of one split of a cache: ``dataset[i] -> (float32 (3, T, H, W), int label)``.

    ``frames``/``stride``: clip length and step, in cached frames.  ``sampling``: ``dense`` (a run of
    ``frames`` frames ``stride`` apart; random start when training, the centre clip otherwise) or
    ``segment`` (TSN: one frame per equal segment; random within the segment when training, its centre
    otherwise).  ``flip``: random horizontal flip when training (keep False where labels are directional).
    Random draws use torch's global RNG, so restoring a checkpointed torch RNG state reproduces them.
    ``calib_only``: only the calibration subset of the split.  Pixels are normalised with :data:`MEAN` and
    :data:`STD`.
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
    ):
        if split not in SPLITS:
            raise StfusionError(f"unknown split {split!r} (choose one of: {', '.join(SPLITS)})")
        if sampling not in SAMPLINGS:
            raise StfusionError(f"unknown sampling {sampling!r} (choose one of: {', '.join(SAMPLINGS)})")
        if int(frames) < 1 or int(stride) < 1:
            raise StfusionError(f"frames and stride must be at least 1 (got frames={frames}, stride={stride})")
        self.cache_dir = Path(cache_dir)
        self.classes = load_classes(self.cache_dir)
        manifest = load_manifest(self.cache_dir)
        keep = (manifest["status"] == "ok") & (manifest["split"] == split)
        if calib_only:
            keep &= manifest["calib"]
        self.manifest = manifest[keep].reset_index(drop=True)
        self._clips_path = _require(self.cache_dir / "clips.npy")
        self._clips = None
        shape = self.clips.shape
        if len(shape) != 5 or shape[-1] != 3:
            raise StfusionError(f"{self._clips_path} has shape {shape}, expected (N, T, H, W, 3)")
        self.cache_frames = int(shape[1])
        if int(frames) > self.cache_frames:
            raise StfusionError(
                f"frames={frames} is more than the {self.cache_frames} frames per video in the cache "
                f"(preprocess again with cache_frames >= {frames})"
            )
        idx = self.manifest["cache_index"].to_numpy(dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self.clips)):
            raise StfusionError(f"manifest and clips.npy of {self.cache_dir} do not match (preprocess again)")
        self.frames, self.stride, self.sampling = int(frames), int(stride), sampling
        self.train, self.flip, self.split = bool(train), bool(flip), split
        self._cache_index = idx
        self._labels = self.manifest["label_idx"].to_numpy(dtype=np.int64)
        self.labels = torch.from_numpy(self._labels.copy())
        self.num_classes = len(self.classes)
        self._rng = TorchRNG()
        self._mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1, 1)
        self._inv_std = 1.0 / torch.tensor(STD, dtype=torch.float32).view(3, 1, 1, 1)
        self._scalar_norm = len(set(MEAN)) == 1 and len(set(STD)) == 1
        if not self.train:  # the evaluation clip is the same for every video: compute it once
            self._eval_idx = self._indices(None)

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

    def __len__(self) -> int:
        return len(self._labels)

    def _indices(self, rng) -> np.ndarray:
        if self.sampling == "segment":
            return segment_indices(self.cache_frames, self.frames, rng)
        if rng is None:
            return centre_indices(self.cache_frames, self.frames, self.stride)
        return train_indices(self.cache_frames, self.frames, self.stride, rng)

    def _to_tensor(self, clip: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(clip)).permute(3, 0, 1, 2).float()
        if self._scalar_norm:  # one constant for every channel: cheapest path (~15 us for 8x32x32)
            return x.sub_(MEAN[0]).mul_(1.0 / STD[0])
        return x.sub_(self._mean).mul_(self._inv_std)

    def __getitem__(self, i: int):
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        t = self._indices(self._rng) if self.train else self._eval_idx
        clip = self.clips[self._cache_index[i], t]
        if self.train and self.flip and bool(torch.rand(()) < 0.5):
            clip = clip[:, :, ::-1]
        return self._to_tensor(clip), int(self._labels[i])

    def views(self, i: int, n_clips: int = 1) -> torch.Tensor:
        """``n_clips`` uniformly spaced temporal views of video ``i`` as ``(n_clips, 3, T, H, W)``
        (:func:`~stfusion.data.sampling.test_clips`; with ``segment`` sampling every view is the centre one)."""
        if self.sampling == "segment":
            idx = np.repeat(segment_indices(self.cache_frames, self.frames, None)[None], n_clips, axis=0)
        else:
            idx = test_clips(self.cache_frames, self.frames, self.stride, n_clips)
        video = self.clips[self._cache_index[i]]
        return torch.stack([self._to_tensor(video[t]) for t in idx])
