"""Helpers every stage shares: the prepared dataset's classes and clips, and the supernet checkpoint (its build
information, rebuilding and loading the network). The checkpoint carries everything needed to rebuild the
network (the ``model`` and ``gate`` sections it was trained with, the class list), so stages after training
read no model parameters."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from stfusion.config.layout import RunLayout
from stfusion.config.settings import Settings
from stfusion.errors import StfusionError

if TYPE_CHECKING:  # heavy imports stay inside the functions (the CLI's --help imports the stages)
    import torch

    from stfusion.models.base import FusionNetwork
    from stfusion.core.strategies import Strategy

log = logging.getLogger(__name__)


def class_groups(cache_dir: str | Path) -> tuple[list[dict], dict[str, list[int]]]:
    """The class list of a cache (``index, name, kind``) and the class indices of each kind
    (``motion``, ``appearance``; classes of other or unknown kind are left out of the groups)."""
    from stfusion.data.dataset import load_classes

    rows = load_classes(cache_dir).to_dict("records")
    groups: dict[str, list[int]] = {}
    for row in rows:
        if row["kind"] in ("motion", "appearance"):
            groups.setdefault(row["kind"], []).append(int(row["index"]))
    return rows, groups


def clip_dataset(settings: Settings, cache_dir: str | Path, split: str, *, train: bool, views: str | None = None,
                 calib_only: bool = False):
    """:func:`stfusion.data.video_dataset.open_clips` of the ``data`` settings."""
    from stfusion.data.video_dataset import open_clips

    return open_clips(settings.data, cache_dir, split, train=train, views=views, calib_only=calib_only)


def require_cache(cache_dir: str | Path) -> None:
    if not Path(RunLayout(cache=str(cache_dir)).manifest).is_file():
        raise StfusionError(f"no clip cache in {cache_dir} (run 'stfusion prepare' first)")


def num_classes(model: torch.nn.Module) -> int:
    import torch

    n = getattr(model, "arch", {}).get("num_classes")
    if n is None:
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        n = linears[-1].out_features
    return int(n)


def supernet_build(params: dict, num_classes: int, classes: list[dict], clip_shape: Sequence[int]) -> dict:
    """What ``model.pt`` needs to rebuild the network (model and gate sections, classes) and the shape of its
    input clips at inference ``(3, T, H, W)`` (:func:`stfusion.data.transforms.inference_clip_shape`: the input
    size its strategies' costs are counted at and its exports take)."""
    return {
        "model": copy.deepcopy(params["model"]),
        "gate": copy.deepcopy(params["gate"]),
        "num_classes": int(num_classes),
        "classes": classes,
        "clip_shape": [int(n) for n in clip_shape],
    }


def build_settings(ckpt: dict, path: str | Path = "checkpoint") -> Settings:
    """The ``model`` and ``gate`` settings a supernet checkpoint was trained with (``ckpt['build']``), without 2D
    or 3D weights to load (the weights are the checkpoint's)."""
    build = ckpt.get("build")
    if not build:
        raise StfusionError(
            f"{path} holds no build information; it was not written by 'stfusion train-supernet' (rerun it)"
        )
    model = {**build["model"], "pretrained_2d": None, "pretrained_3d": None}
    return Settings.for_stage({"model": model, "gate": build["gate"]})


def build_from_checkpoint(ckpt: dict, path: str | Path = "checkpoint") -> FusionNetwork:
    """A template network with the architecture recorded in ``ckpt['build']`` (random weights)."""
    from stfusion.models import build_model

    return build_model(build_settings(ckpt, path), ckpt["build"]["num_classes"])


def clip_shape(ckpt: dict, path: str | Path = "checkpoint") -> list[int]:
    """The ``(3, T, H, W)`` input clips of a supernet checkpoint's network at inference (:func:`supernet_build`)."""
    shape = ckpt.get("build", {}).get("clip_shape")
    if not shape:
        raise StfusionError(f"{path} does not record its input size; it was written by an older "
                            "'stfusion train-supernet' (rerun it)")
    return list(shape)


def load_supernet(path: str | Path) -> tuple[FusionNetwork, dict]:
    """The trained template network of a ``train-supernet`` checkpoint, and the checkpoint."""
    from stfusion.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    model = build_from_checkpoint(ckpt, path)
    if ckpt.get("arch") != model.arch:
        raise StfusionError(f"{path}: the recorded architecture does not match the rebuilt network")
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, ckpt


def strategy_of(text: str, n_layers: int) -> Strategy:
    from stfusion.core.strategies import Strategy

    return Strategy.parse(str(text), n_layers)
