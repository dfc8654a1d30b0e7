"""What every stage records about its run: timing, thread count, library versions and the fingerprint of a
prepared dataset."""

from __future__ import annotations

import logging
import platform
import time
from contextlib import contextmanager
from pathlib import Path

from stfusion import __version__
from stfusion.config.layout import RunLayout
from stfusion.io.files import file_digest, write_json

log = logging.getLogger(__name__)


@contextmanager
def timed(stage: str, path: str | Path | None, **extra):
    """Time the enclosed work and write ``{"stage", "seconds", ...}`` to ``path`` (JSON) when it succeeds. A
    stage that gathers the records of separate jobs puts their total in ``info["run_seconds"]``: its time is its
    own plus theirs."""
    t0 = time.perf_counter()
    info: dict = {"stage": stage, **extra}
    yield info
    info["seconds"] = round(time.perf_counter() - t0, 3)
    log.info("%s took %.1f s", stage, info["seconds"])
    if "run_seconds" in info:
        info["seconds"] = round(info["seconds"] + info["run_seconds"], 3)
    if path is not None:
        write_json(path, info)


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

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


def data_fingerprint(cache_dir: str | Path) -> str:
    """Identity of a prepared dataset: its manifest, class list and the head and size of ``clips.npy`` (videos
    storage: ``storage.json``; the manifest names every file). A checkpoint left by training on other data is
    discarded rather than resumed."""
    files = RunLayout(cache=str(cache_dir))
    clips = Path(files.clips)
    parts = [file_digest(files.manifest), file_digest(files.classes),
             file_digest(clips if clips.is_file() else files.storage, limit=1 << 20)]
    return "-".join(p[:12] for p in parts)
