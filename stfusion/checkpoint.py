"""Atomic files and resumable checkpoints: Snakemake and DVC never see a half-written output."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import StfusionError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary name in the target's folder, then rename onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_torch(obj: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def guarded_write(path: str | Path, write: Callable[[], Any]) -> Any:
    """Run ``write()`` (atomic writes of ``path`` and its companions); an ``OSError`` (full disk, quota, I/O
    error) becomes one :class:`StfusionError` line naming ``path`` and the free space there. The atomic writes
    never replace a file with a partial one, so the previous checkpoint is intact."""
    try:
        return write()
    except OSError as exc:
        path = Path(path)
        try:
            free = human_bytes(shutil.disk_usage(path.parent).free)
        except OSError:
            free = "unknown"
        reason = exc.strerror or type(exc).__name__
        raise StfusionError(f"cannot write checkpoint {path}: {reason}; {free} free on that file system; "
                            "the previous checkpoint is kept") from None


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_csv(df, path: str | Path, **kwargs) -> Path:
    """Write a pandas table atomically (``index=False`` unless given; floats at full precision)."""
    kwargs.setdefault("index", False)
    return atomic_write(path, lambda tmp: df.to_csv(tmp, **kwargs))


def rng_state() -> dict:
    """The process's random state: torch (and CUDA, once initialised), numpy and python."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path, arch: dict | None = None) -> dict:
    """Load a checkpoint; with ``arch``, refuse one written for a different architecture."""
    path = Path(path)
    if not path.exists():
        raise StfusionError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        raise StfusionError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if arch is not None and ckpt.get("arch") != arch:
        diff = sorted(k for k in set(arch) | set(ckpt.get("arch") or {}) if arch.get(k) != (ckpt.get("arch") or {}).get(k))
        raise StfusionError(
            f"checkpoint {path} was written for a different architecture (differs in: {', '.join(diff)})"
        )
    return ckpt
