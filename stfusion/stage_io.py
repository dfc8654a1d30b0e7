"""File helpers shared by the stages: atomic JSON records, tables read with a clear error, stage timing, library
versions and the fingerprint of a prepared dataset."""

from __future__ import annotations

import json
import logging
import platform
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .errors import StfusionError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


@contextmanager
def timed(stage: str, path: str | Path | None, **extra):
    """Time the enclosed work and write ``{"stage", "seconds", ...}`` to ``path`` (JSON) when it succeeds."""
    t0 = time.perf_counter()
    info: dict = {"stage": stage, **extra}
    yield info
    info["seconds"] = round(time.perf_counter() - t0, 3)
    log.info("%s took %.1f s", stage, info["seconds"])
    if path is not None:
        write_json(path, info)


def write_json(path: str | Path, obj) -> Path:
    from .checkpoint import write_text

    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise StfusionError(f"file not found: {path}")
    return json.loads(path.read_text())


def _json_default(obj):
    import numpy as np

    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_table(path: str | Path, what: str = "table") -> pd.DataFrame:
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise StfusionError(f"{what} not found: {path} (run the stage that writes it first)")
    return pd.read_csv(path)


def set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(int(threads))


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "stfusion": __version__}
    for name in ("torch", "numpy", "pandas", "scipy", "decord", "av", "snakemake", "dvc"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def file_digest(path: str | Path, limit: int | None = None) -> str:
    """SHA-1 of a file's bytes (of its first ``limit`` bytes and its size when ``limit`` is given)."""
    import hashlib

    h = hashlib.sha1()
    path = Path(path)
    with open(path, "rb") as f:
        if limit is None:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(f.read(limit))
            h.update(str(path.stat().st_size).encode())
    return h.hexdigest()


def data_fingerprint(cache_dir: str | Path) -> str:
    """Identity of a prepared dataset: its manifest, class list and the head and size of ``clips.npy`` (videos
    storage: ``storage.json``; the manifest names every file). A checkpoint left by training on other data is
    discarded rather than resumed."""
    cache_dir = Path(cache_dir)
    clips = cache_dir / "clips.npy"
    parts = [file_digest(cache_dir / "manifest.csv"), file_digest(cache_dir / "classes.csv"),
             file_digest(clips if clips.is_file() else cache_dir / "storage.json", limit=1 << 20)]
    return "-".join(p[:12] for p in parts)
