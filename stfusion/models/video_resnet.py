"""The video ResNet-18 family of Tran et al. (CVPR 2018) as one template (``model.backbone: r3d18``).

Every 3x3 conv of the 18-layer video ResNet, and its stem, is a fusion point: a
:class:`~stfusion.core.fusion.FusionPaths` whose paths are conv -> BN (ReLU after the gated sum, as torchvision's
``torchvision.models.video`` networks do after their conv -> BN). So R2D, R3D, MC2-MC5, rMC2-rMC5 (and R(2+1)D with
the factorised unit) are strategies of this one network (:func:`stfusion.core.strategies.literature_families`).

Layout (widths before ``width_multiplier``)::

    stem    fusion point 3 -> 64, spatial stride 2, then ReLU (torchvision's: no max-pool)
              S: 1x7x7   ST (full): 3x7x7   ST (factorised): 1x7x7 -> 45, BN, ReLU, 3x1x1 -> 64
    layer1-4  two basic blocks each, widths 64, 128, 256, 512; the first block of layers 2-4 strides (s, 2, 2)
              block: ReLU(conv1(x)) -> conv2 -> + shortcut -> ReLU; conv1 and conv2 are fusion points
              S: 1x3x3   ST (full): 3x3x3   ST (factorised): 1x3x3 -> M, BN, ReLU, 3x1x1, with torchvision's
              intermediate width M = 27 C_in P / (9 C_in + 3 P) (integer division; C_in, P the block's input and
              output widths, one M for both convs of a block)
              shortcut: identity, or 1x1x1 conv stride (s, 2, 2) -> BN where the shape changes
    head    global average pool -> linear

``temporal_stride`` sets ``s``: 2 halves time in the first block of layers 2-4 (torchvision's ``r3d_18`` and
``r2plus1d_18``), 1 keeps it (``mc3_18``, whose 2D layers do not stride time). Both paths of a fusion point always
give the same shape, so with ``s = 2`` the S path strides time too (a 1x3x3 conv reading every other frame).

Fusion layers, in order: the stem, then conv1 and conv2 of each block (17). Their stage index is 0 for the stem
(Tran's conv1) and ``i`` for the convs of ``layer{i}`` (Tran's conv{i+1}_x). No fusion point has a bypass of its
own, so ``none`` is not allowed.

What the strategies equal (same modules, parameters, MACs and shapes layer by layer; tests/test_video_resnet.py):

* ``unit="full"``, ``temporal_stride=True``, all-ST: torchvision's ``r3d_18``;
* ``unit="full"``, ``temporal_stride=False``, MC3 (stem and layer1 ST, layers 2-4 S): ``mc3_18``;
* ``unit="factorised"``, ``temporal_stride=True``, all-ST: ``r2plus1d_18``.

State dict names: a path's tensors are named as torchvision names the conv -> BN it stands for, with ``s.`` or
``st.`` inserted (``layer1.0.conv1.st.0.weight`` for torchvision's ``layer1.0.conv1.0.weight``). An exported
strategy (:meth:`FusionNetwork.export`, ``stfusion export``) therefore loads into torchvision after one mapping,
``{re.sub(r"\\.(s|st)\\.", ".", k): v ...}`` (docs/templates.md), and
:func:`~stfusion.models.video_weights.load_video_weights` reads torchvision's files the other way round.
"""

from __future__ import annotations

from torch import Tensor, nn

from stfusion.core.fusion import UNITS, FusionPaths
from stfusion.core.strategies import Strategy, families, literature_families
from stfusion.models.base import FusionNetwork
from stfusion.models.inflate import init_weights, scaled

VIDEO_RESNET_WIDTHS = (64, 128, 256, 512)
VIDEO_RESNET_LAYERS = (2, 2, 2, 2)
STEM_MID_WIDTH = 45  # torchvision's R(2+1)D stem: 1x7x7 -> 45 channels, then 3x1x1


def midplanes(cin: int, planes: int) -> int:
    """torchvision's intermediate width of a (2+1)D unit: as many parameters as the 3x3x3 conv it replaces."""
    return (cin * planes * 27) // (cin * 9 + 3 * planes)


def _conv(cin: int, cout: int, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, kernel, stride=stride, padding=tuple(k // 2 for k in kernel), bias=False)


def _paths(cin: int, cout: int, mid: int, k: int, unit: str, stride: tuple[int, int, int], gate: dict):
    """The fusion point of a ``k x k`` spatial conv ``(N, cin, T, H, W) -> (N, cout, T/st, H/sh, W/sw)``."""
    s = nn.Sequential(_conv(cin, cout, (1, k, k), stride), nn.BatchNorm3d(cout))
    if unit == "full":
        st = nn.Sequential(_conv(cin, cout, (3, k, k), stride), nn.BatchNorm3d(cout))
    else:  # (2+1)D: spatial conv to ``mid`` channels, BN, ReLU, temporal conv (torchvision's key layout)
        st = nn.Sequential(_conv(cin, mid, (1, k, k), (1, *stride[1:])), nn.BatchNorm3d(mid), nn.ReLU(inplace=True),
                           _conv(mid, cout, (3, 1, 1), (stride[0], 1, 1)), nn.BatchNorm3d(cout))
        if k == 3:  # in a block torchvision nests the (2+1)D conv: conv1.0.{0,1,3} and the block's BN conv1.1
            st = nn.Sequential(nn.Sequential(*st[:4]), st[4])
    return FusionPaths(s, st, gate=gate, allow_none=False)


class VideoBasicBlock(nn.Module):
    """``(N, C_in, T, H, W) -> (N, planes, T/s, H/2, W/2)`` (strided) or ``(N, planes, T, H, W)``:
    ``ReLU(conv2(ReLU(conv1(x))) + shortcut(x))`` with fusion points ``conv1``, ``conv2``."""

    def __init__(self, cin: int, planes: int, stride: tuple[int, int, int], unit: str, gate: dict):
        super().__init__()
        mid = midplanes(cin, planes)
        self.conv1 = _paths(cin, planes, mid, 3, unit, stride, gate)
        self.conv2 = _paths(planes, planes, mid, 3, unit, (1, 1, 1), gate)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != (1, 1, 1) or cin != planes:
            self.downsample = nn.Sequential(nn.Conv3d(cin, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm3d(planes))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.relu(self.conv1(x))) + identity)


class VideoResNetTemplate(FusionNetwork):
    """Video ResNet-18 template (module docstring). Input ``(N, 3, T, H, W)``, logits ``(N, num_classes)``.

    Args:
        num_classes: classifier outputs.
        unit: ``"full"`` (ST = 3x3x3 / 3x7x7) or ``"factorised"`` (ST = torchvision's (2+1)D unit).
        gate: keyword arguments of :class:`~stfusion.core.droppath.VariationalDropPath`.
        width_multiplier: scales every width (64, 128, 256, 512 and the stem's 45).
        temporal_stride: halve time in the first block of layers 2-4 (``r3d_18``, ``r2plus1d_18``) or not (``mc3_18``).
        pretrained_3d: a torchvision ``r3d_18`` / ``mc3_18`` / ``r2plus1d_18`` state dict or a local file holding one
            (:mod:`stfusion.models.video_weights`).
        layers: blocks per stage (default ``(2, 2, 2, 2)``).
    """

    def __init__(self, num_classes: int, *, unit: str = "full", gate: dict | None = None,
                 width_multiplier: float = 1.0, temporal_stride: bool = True, pretrained_3d=None, layers=None):
        super().__init__()
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
        layers = [int(n) for n in (VIDEO_RESNET_LAYERS if layers is None else layers)]
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ValueError(f"layers must give 4 stages of at least one block, got {layers}")
        self.arch = dict(backbone="r3d18", num_classes=num_classes, unit=unit, width_multiplier=float(width_multiplier),
                         temporal_stride=bool(temporal_stride), layers=layers)
        self.unit = unit
        gate = gate or {}
        c = scaled(64, width_multiplier)
        self.stem = _paths(3, c, scaled(STEM_MID_WIDTH, width_multiplier), 7, unit, (1, 2, 2), gate)
        self.relu = nn.ReLU(inplace=True)
        stage_of_layer = [0]
        ts = 2 if temporal_stride else 1
        for si, (w, n) in enumerate(zip(VIDEO_RESNET_WIDTHS, layers)):
            planes = scaled(w, width_multiplier)
            blocks = []
            for bi in range(n):
                stride = (ts, 2, 2) if si > 0 and bi == 0 else (1, 1, 1)
                blocks.append(VideoBasicBlock(c, planes, stride, unit, gate))
                c = planes
            setattr(self, f"layer{si + 1}", nn.Sequential(*blocks))
            stage_of_layer += [si + 1] * (2 * n)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(c, num_classes)
        self._stage_of_layer = stage_of_layer
        self.num_features = c
        init_weights(self, conv_mode="fan_out")
        self.loaded_strategy: Strategy | None = None
        if pretrained_3d is not None:
            from stfusion.models.video_weights import load_video_weights

            self.loaded_strategy = load_video_weights(self, pretrained_3d)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.relu(self.stem(x))))))
        return self.fc(self.avgpool(x).flatten(1))

    def sequence(self) -> list[nn.Module]:
        blocks = [b for i in range(1, 5) for b in getattr(self, f"layer{i}")]
        return [nn.Sequential(self.stem, self.relu), *blocks, nn.Sequential(self.avgpool, nn.Flatten(1), self.fc)]

    def families(self) -> dict[str, Strategy]:
        """The generic families, then the literature's (R2D, R3D or R(2+1)D, MC2-MC5, rMC2-rMC5)."""
        generic = families(self.n_fusion_layers, self.stage_of_layer)
        return {**generic, **literature_families(self.stage_of_layer, three_d=self.unit == "full")}
