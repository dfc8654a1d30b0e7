"""Resumable checkpoints: torch objects written atomically, the random state, and loading with an architecture
check."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stfusion.errors import StfusionError
from stfusion.io.files import atomic_write


def save_torch(obj: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


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
