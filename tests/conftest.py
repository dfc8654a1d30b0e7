"""Shared test helpers: tiny tensor clip sets whose labels depend only on temporal order or only on appearance."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle threads must not spin on 2 cores

import pytest
import torch
from torch.utils.data import TensorDataset

REPO = Path(__file__).resolve().parents[1]

#: git and DVC in a test's repository: a committer, and no analytics
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "DVC_NO_ANALYTICS": "1"}


def dvc_project(repo: Path, remote: Path, params: dict) -> None:
    """A git + DVC repository at ``repo`` holding the project (the package, dvc.yaml and the fidelity study, a
    pipeline of its own that `dvc repro` leaves out) with ``params`` as its params.yaml and a local DVC remote
    at ``remote``, committed."""
    import yaml

    repo.mkdir(parents=True)
    remote.mkdir(parents=True)
    shutil.copytree(REPO / "stfusion", repo / "stfusion", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "studies", repo / "studies")
    for name in ("dvc.yaml", ".gitignore", "pyproject.toml", ".dvcignore"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, repo / name)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "remote", "add", "-d", "local", str(remote)],
                ["git", "add", "-A"], ["git", "commit", "-qm", "project"]):
        out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120, env={**os.environ, **GIT_ENV})
        if out.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}")


def motion_clips(n: int, frames: int = 6, size: int = 16, seed: int = 0) -> TensorDataset:
    """Two classes: a bright bar sweeping right (0) or left (1) over noise; every frame alone is ambiguous
    (the bar visits the same positions in both classes, random start)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(n, 3, frames, size, size, generator=g)
    y = torch.arange(n) % 2
    for i in range(n):
        start = int(torch.randint(0, size - frames, (1,), generator=g))
        cols = [start + t for t in range(frames)]
        if y[i] == 1:
            cols = cols[::-1]
        for t, c in enumerate(cols):
            x[i, :, t, :, c] += 2.0
    return TensorDataset(x, y)


def appearance_clips(n: int, frames: int = 6, size: int = 16, seed: int = 0) -> TensorDataset:
    """Two classes told apart by a static pattern in every frame (a horizontal vs a vertical bar), no motion."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(n, 3, frames, size, size, generator=g)
    y = torch.arange(n) % 2
    for i in range(n):
        pos = int(torch.randint(2, size - 2, (1,), generator=g))
        if y[i] == 0:
            x[i, :, :, pos, :] += 2.0
        else:
            x[i, :, :, :, pos] += 2.0
    return TensorDataset(x, y)


TINY_PARAMS = {
    "seed": 0,
    "model": {"backbone": "plain", "unit": "full", "widths": [8, 16], "layers_per_stage": [1, 2], "stem_width": 8},
    "gate": {"init_p": 0.1, "temperature": 0.2, "rescale": False, "kl_k": 5.0, "kl_form": "linear"},
}


def settings_with(changes: dict):
    """The packaged defaults with ``changes`` over them, as typed settings."""
    from stfusion.config.loading import resolve_params
    from stfusion.config.settings import Settings

    return Settings.from_params(resolve_params(changes))


@pytest.fixture
def tiny_params():
    import copy

    return copy.deepcopy(TINY_PARAMS)
