"""Atomic files: Snakemake and DVC never see a half-written output. Text, CSV and JSON records, tables read
back with a clear error, and file digests."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from stfusion.errors import StfusionError

if TYPE_CHECKING:
    import pandas as pd


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary name in the target's folder, then rename onto ``path``. The temporary
    name ends with the target's extension, which some writers check (``torch.export.save``: ``.pt2``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


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


def write_json(path: str | Path, obj) -> Path:
    from stfusion.io.files import write_text

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
