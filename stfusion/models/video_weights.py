"""torchvision's video ResNets (``r3d_18``, ``mc3_18``, ``r2plus1d_18`` state dicts, e.g. their Kinetics-400
weights saved to a local file) loaded into the video ResNet template (``model.pretrained_3d``).

Names: the template calls a path's tensors as torchvision calls the conv -> BN it stands for, with ``s.`` or ``st.``
inserted after the fusion point (:func:`torchvision_key`). At each fusion point the file's tensors fit exactly one
path (by names and shapes: a 3x3x3 kernel is ST, a 1x3x3 kernel S, a nested (2+1)D unit the factorised ST); that
path gets them, and the strategy made of these paths (:func:`load_video_weights` returns it) computes exactly the
network of the file. The path without a counterpart is initialised from the loaded one where both are single
convs (``unit="full"``): an S kernel is the loaded 3x3x3 kernel summed over time, an ST kernel the loaded 1x3x3
kernel repeated over time and divided by 3, both with a copy of its BN (on a static clip both compute what the
loaded path computes); a factorised ST path keeps its random initialisation. The shortcut convs load as they are,
the classifier when its shape fits (same number of classes).

A file that does not fit (another architecture, unit or width, a missing, misshapen or extra key) is refused with
one line naming the first such key and both shapes; the network is only written once everything fitted.
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from stfusion.core.fusion import FusionPaths
from stfusion.core.strategies import S, ST, Strategy
from stfusion.errors import StfusionError
from stfusion.models.base import FusionNetwork
from stfusion.models.inflate import load_state_dict_2d

SETTING = "model.pretrained_3d"
WHAT = "r3d_18 / mc3_18 / r2plus1d_18"
_PATH = re.compile(r"\.(?:s|st)\.")


def torchvision_key(key: str) -> str:
    """torchvision's name of a template tensor: ``layer1.0.conv1.st.0.weight`` -> ``layer1.0.conv1.0.weight``."""
    return _PATH.sub(".", key, count=1)


def _shape(t: Tensor | None) -> tuple | str:
    return "absent" if t is None else tuple(t.shape)


def _first_misfit(prefix: str, path: str, own: dict[str, Tensor], sd: dict[str, Tensor]) -> tuple[int, str] | None:
    """``(index, message)`` of the first tensor of ``prefix.path`` the file does not hold in the same shape."""
    keys = [k for k in own if k.startswith(f"{prefix}.{path}.") and not k.endswith("num_batches_tracked")]
    for i, k in enumerate(keys):
        src = sd.get(torchvision_key(k))
        if src is None or src.shape != own[k].shape:
            return i, (f"{SETTING}: {torchvision_key(k)!r} has shape {_shape(src)} where the template's {k!r} has "
                       f"{tuple(own[k].shape)} (not a torchvision {WHAT} of this unit and width?)")
    return None


def _derived(own: Tensor, loaded: Tensor) -> Tensor:
    """The other single-conv path's tensor from the loaded one: BN tensors copied; a kernel summed over time
    (3x3x3 -> 1x3x3) or repeated over time and divided by its extent (1x3x3 -> 3x3x3)."""
    if own.shape == loaded.shape:
        return loaded
    if loaded.shape[2] != 1:
        return loaded.sum(2, keepdim=True)
    return loaded.repeat(1, 1, own.shape[2], 1, 1) / own.shape[2]


def _load_point(prefix: str, paths: FusionPaths, own: dict[str, Tensor], sd: dict[str, Tensor],
                new: dict[str, Tensor]) -> int:
    """Fill ``new`` for the fusion point ``prefix`` from ``sd``; returns the state of the loaded path."""
    misfits = {path: _first_misfit(prefix, path, own, sd) for path in ("st", "s")}
    fits = [p for p, m in misfits.items() if m is None]
    if not fits:  # report the path the file came closer to
        raise StfusionError(max(misfits.values(), key=lambda m: m[0])[1])
    path, other = fits[0], "s" if fits[0] == "st" else "st"
    for k in own:
        if k.startswith(f"{prefix}.{path}.") and torchvision_key(k) in sd:
            new[k] = sd[torchvision_key(k)]
    single = sum(isinstance(m, nn.Conv3d) for m in paths.modules()) == 2  # one conv a path
    for k in own:
        if single and k.startswith(f"{prefix}.{other}.") and torchvision_key(k) in sd:
            new[k] = _derived(own[k], sd[torchvision_key(k)])
    return ST if path == "st" else S


def load_video_weights(net: FusionNetwork, src) -> Strategy:
    """Load a torchvision video ResNet state dict (a mapping or a local file) into ``net`` (module docstring);
    returns the strategy that computes the loaded network."""
    sd = load_state_dict_2d(src, WHAT, SETTING)
    own = net.state_dict()
    new = dict(own)
    points = [(name, m) for name, m in net.named_modules() if isinstance(m, FusionPaths)]
    states = [_load_point(name, m, own, sd, new) for name, m in points]
    inside = tuple(f"{name}." for name, _ in points)
    for k in own:
        if k.startswith(inside):
            continue
        src_t = sd.get(k)
        if k.startswith("fc.") and (src_t is None or src_t.shape != own[k].shape):
            continue  # another number of classes: the classifier keeps its initialisation
        if src_t is None and k.endswith("num_batches_tracked"):
            continue
        if src_t is None or src_t.shape != own[k].shape:
            raise StfusionError(f"{SETTING}: {k!r} has shape {_shape(src_t)} where the template's has "
                                f"{tuple(own[k].shape)} (not a torchvision {WHAT} of this depth and width?)")
        new[k] = src_t
    known = {torchvision_key(k) for k in own}
    extra = [k for k in sd if k not in known]
    if extra:
        raise StfusionError(f"{SETTING}: {extra[0]!r} of shape {tuple(sd[extra[0]].shape)} has no place in the "
                            f"template (not a torchvision {WHAT}?)")
    net.load_state_dict(new)
    return Strategy(tuple(states))
