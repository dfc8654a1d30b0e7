"""2D -> 3D inflation: ImageNet state dicts read from local files, kernels inflated over time, and the
initialisation and width scaling shared by the 3D backbones."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from stfusion.core.strategies import BOTH
from stfusion.errors import StfusionError


def load_state_dict_2d(src, what: str, setting: str = "pretrained_2d") -> dict[str, Tensor]:
    """A state dict from ``src``: a mapping of tensors, or the path of a local file saved with ``torch.save``
    (read with ``weights_only=True``). ``what`` names the expected model and ``setting`` the parameter that gave
    ``src`` in error messages."""
    if isinstance(src, Mapping):
        sd = src
    else:
        path = Path(src)
        if not path.is_file():
            raise StfusionError(f"{setting}: no such file: {path} (a local torchvision {what} state dict)")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any read failure becomes one line
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StfusionError(f"{setting}: cannot read {path}: {msg}") from None
        if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
            sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise StfusionError(f"{setting}: expected a state dict (name -> tensor) of a torchvision {what}")
    return dict(sd)


class Inflator:
    """Writes 2D weights into a 3D network, checking every key and shape (errors are one-line StfusionErrors).

    Args:
        net: the 3D network (its ``state_dict()`` tensors share storage with its parameters and buffers).
        sd2d: the 2D state dict.
        what: the expected 2D model, for messages.
    """

    def __init__(self, net: nn.Module, sd2d: Mapping[str, Tensor], what: str):
        self.own = net.state_dict()
        self.sd = sd2d
        self.what = what

    def _get(self, key2d: str) -> Tensor:
        if key2d not in self.sd:
            raise StfusionError(f"pretrained_2d: key {key2d!r} is missing (expected a torchvision {self.what} state dict)")
        return self.sd[key2d]

    def _mismatch(self, key2d: str, src: Tensor, key3d: str) -> StfusionError:
        return StfusionError(
            f"pretrained_2d: {key2d!r} has shape {tuple(src.shape)}, which does not fit {key3d!r} of shape "
            f"{tuple(self.own[key3d].shape)} (different {self.what} variant or width?)"
        )

    def _put(self, key3d: str, value: Tensor) -> None:
        dst = self.own[key3d]
        with torch.no_grad():
            dst.copy_(value.to(dst.dtype))

    def copy(self, key3d: str, key2d: str) -> None:
        """Copy a tensor of the same shape (BN statistics, linear layers)."""
        src = self._get(key2d)
        if src.shape != self.own[key3d].shape:
            raise self._mismatch(key2d, src, key3d)
        self._put(key3d, src)

    def conv(self, key3d: str, key2d: str) -> None:
        """Inflate a 2D conv weight ``(O, I, kh, kw)`` into the 3D weight ``(O, I, kt, kh', kw')``: a 1x1 kernel
        goes to the spatial centre when the 3D kernel is larger; the kernel is repeated ``kt`` times over time and
        divided by ``kt`` (so a static clip gives the 2D response wherever the temporal window is inside the clip).
        """
        src = self._get(key2d)
        dst = self.own[key3d]
        o, i, kt, kh, kw = dst.shape
        if src.dim() != 4 or tuple(src.shape[:2]) != (o, i):
            raise self._mismatch(key2d, src, key3d)
        if tuple(src.shape[2:]) == (kh, kw):
            w = src
        elif tuple(src.shape[2:]) == (1, 1) and kh % 2 == 1 and kw % 2 == 1:
            w = src.new_zeros(o, i, kh, kw)
            w[:, :, kh // 2, kw // 2] = src[:, :, 0, 0]
        else:
            raise self._mismatch(key2d, src, key3d)
        self._put(key3d, w.unsqueeze(2).repeat(1, 1, kt, 1, 1) / kt)

    def bn(self, prefix3d: str, prefix2d: str) -> None:
        """Copy a BatchNorm (affine parameters and running statistics)."""
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.copy(f"{prefix3d}.{name}", f"{prefix2d}.{name}")
        if f"{prefix2d}.num_batches_tracked" in self.sd and f"{prefix3d}.num_batches_tracked" in self.own:
            self._put(f"{prefix3d}.num_batches_tracked", self.sd[f"{prefix2d}.num_batches_tracked"])

    def identity(self, key3d: str) -> None:
        """A square conv as the identity on a static clip: centre tap 1, repeated over time and divided by ``kt``."""
        dst = self.own[key3d]
        o, i, kt, kh, kw = dst.shape
        if o != i:
            raise StfusionError(f"cannot initialise {key3d!r} of shape {tuple(dst.shape)} as an identity")
        w = torch.zeros_like(dst)
        idx = torch.arange(o)
        w[idx, idx, :, kh // 2, kw // 2] = 1.0 / kt
        self._put(key3d, w)

    def classifier(self, prefix3d: str, prefix2d: str) -> bool:
        """Load the classifier only when its shape fits (same number of classes); returns whether it was loaded."""
        w, b = self.sd.get(f"{prefix2d}.weight"), self.sd.get(f"{prefix2d}.bias")
        if w is None or b is None or w.shape != self.own[f"{prefix3d}.weight"].shape:
            return False
        self.copy(f"{prefix3d}.weight", f"{prefix2d}.weight")
        self.copy(f"{prefix3d}.bias", f"{prefix2d}.bias")
        return True


def share_between_paths(net, strategy=None) -> None:
    """Split each fusion layer's inflated 2D response between the paths ``strategy`` keeps there (``None``: the
    template, which keeps both): where both are kept, each path's output is halved by halving its last linear
    operation (a BN's gamma and beta, or the kernel of a path that ends in a conv), so S + ST computes on a static
    clip what each path alone computes, the 2D layer's response.

    Why halves: the paths are summed and the sum feeds a layer that keeps the 2D statistics (the residual sum and
    the next BN of a ResNet, the shared BN of a DenseNet layer), so the sum, not each path, must equal the 2D
    output; halving both keeps S and ST symmetric (neither is favoured when the gates start), and halving the
    path's last operation rather than its BN statistics keeps the statistics the 2D network measured."""
    states = [BOTH] * net.n_fusion_layers if strategy is None else list(strategy.states)
    for f, state in zip(net.fusion_layers, states):
        if state != BOTH:
            continue
        for path in (f.s, f.st):
            last = [m for m in path.modules() if isinstance(m, (nn.Conv3d, nn.BatchNorm3d))][-1]
            with torch.no_grad():
                last.weight.mul_(0.5)
                if isinstance(last, nn.BatchNorm3d):
                    last.bias.mul_(0.5)


def init_weights(net: nn.Module, conv_mode: str = "fan_in") -> None:
    """Kaiming-normal convs, BN gamma 1 / beta 0 (never 0 gamma: a dead path could never be chosen), zero linear bias."""
    for m in net.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode=conv_mode, nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


def scaled(width: int, multiplier: float) -> int:
    """``width * multiplier`` rounded, at least 1."""
    return max(1, int(round(width * multiplier)))
