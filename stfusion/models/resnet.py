"""3D ResNet family with one gated S / ST fusion layer per residual block (docs/method.md §3, §6).

torchvision style (conv -> BN, ReLU after the gated sum). The fusion point of each block:

* Bottleneck (ResNet-50/101/152):
    - ``factorised`` (the paper's derived ResNets): the block's first 1x1 conv becomes
      ``ReLU(z_S * BN(conv1x1x1 x) + z_ST * BN'(conv3x1x1 x))``, followed by the usual 1x3x3 and 1x1x1 convs.
    - ``full``: the block's 3x3 conv becomes ``ReLU(z_S * BN(conv1x3x3 h) + z_ST * BN'(conv3x3x3 h))`` (C3D / I3D
      reading: the spatial conv is either 2D or 3D), after the usual 1x1x1 conv1 and before the 1x1x1 conv3. A
      full-unit bottleneck therefore has exactly the convs of the 2D block.
* BasicBlock (ResNet-18/34), whose first conv is a 3x3:
    - ``factorised``: ``ReLU(z_S * BN(conv1x1x1 x) + z_ST * BN'(conv3x1x1 x))`` (C_in -> C_in), then the block's
      first 3x3 conv as a 1x3x3 (C_in -> planes), BN, ReLU, then the second 1x3x3. So S = 2D and ST = (2+1)D, as in
      the factorised unit; the gated convs keep the input width so the 2D conv1 inflates into the 1x3x3 as is
      (inflation initialises the gated 1x1x1 / 3x1x1 as the identity: S = I, ST = I/3 over time).
    - ``full``: the first 3x3 conv becomes the S (1x3x3) / ST (3x3x3) pair, then the second 1x3x3.

Stem: a spatial-only 1x7x7 conv, stride (1,2,2) -> BN -> ReLU -> max-pool (1,3,3) / (1,2,2): with it (and BN
statistics shared over time) the all-S network treats frames independently and, after global average pooling, is
exactly invariant to time reversal.

Spatial downsampling: unlike the plain and DenseNet templates (pooling only), the ResNets keep torchvision's strided
convs, spatial only, stride (1,2,2): in the 1x3x3 conv of the first block of stages 2-4 (the bottleneck's conv2, the
factorised BasicBlock's inflated conv1; for the full unit, the gated S / ST convs at that position) and in the
1x1x1 projection shortcut. Derived networks are then standard 3D ResNets, and inflated 2D weights compute what they
computed in 2D. Time is never downsampled.

State ``none`` (``allow_none=True`` for every block): the residual branch is skipped entirely, nothing of it is
computed, and the block outputs ``ReLU(shortcut(x))`` (``x`` itself for an identity shortcut, since ``x >= 0``).

Reference layout (``variant="reference"``, the paper's reference code ``resnet_3d``): stem 5x7x7 (time stride 2
with ``temporal_stride``, as the reference on Kinetics and UCF101), max-pool 3x3x3 / (1,2,2); the gated paths are
bare convs and one BN follows their sum (one BN per path in the stfusion layout); the projection shortcut averages
2x2 then applies a 1x1x1 conv (a strided 1x1x1 conv in the stfusion layout). The 2D network's strided 1x1 shortcut
and per-frame stem are then approximated, not reproduced: inflation into this layout is a start, not an exact copy.

Inflation (``pretrained_2d``: a torchvision-format ``resnet18`` / ``resnet50`` / ... state dict or a local file):
7x7 stem -> 1x7x7; 3x3 -> 1x3x3, and for a full-unit ST conv 3x3x3 (the 2D kernel repeated over time / 3); a 1x1
conv that is a fusion conv -> copied into the S conv and repeated 3x over time / 3 into the ST conv; both paths' BNs
copy the 2D BN that follows the conv (in the template, which keeps both paths, each with half its gamma and beta,
so S + ST computes the 2D layer as either path alone does: :func:`~stfusion.models.inflate.share_between_paths`);
other 1x1 -> 1x1x1. The classifier is loaded only when ``num_classes`` matches.
Missing keys or mismatched shapes raise :class:`~stfusion.errors.StfusionError`. BNs that no 2D BN maps to (the
factorised BasicBlock's gated paths) keep gamma 1 (1/2 each in the template).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stfusion.errors import StfusionError
from stfusion.core.fusion import UNITS, FusionPaths, conv_bn, conv_s, conv_st
from stfusion.core.strategies import NONE, Strategy
from stfusion.models.base import FusionNetwork
from stfusion.models.inflate import Inflator, init_weights, load_state_dict_2d, scaled, share_between_paths

RESNET_STAGE_WIDTHS = (64, 128, 256, 512)
#: ``stfusion``: the layout above; ``reference``: the paper's reference code's (module docstring)
VARIANTS = ("stfusion", "reference")


def _conv1x3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False)


def _conv1x1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, 1, stride=(1, stride, stride), bias=False)


def _spatial_stride(conv: nn.Conv3d, stride: int) -> nn.Conv3d:
    """Give a unit conv of :mod:`stfusion.core.fusion` the spatial stride ``(1, stride, stride)`` (time stride stays 1)."""
    conv.stride = (1, stride, stride)
    return conv


def _fusion_paths(cin: int, cout: int, unit: str, gate: dict, stride: int = 1, reference: bool = False):
    """The gated pair and the BN after their sum: conv -> BN per path (``None`` after the sum), or, in the
    reference layout, bare convs and one BN after the sum."""
    s = _spatial_stride(conv_s(cin, cout, unit), stride)
    st = _spatial_stride(conv_st(cin, cout, unit), stride)
    if reference:
        return FusionPaths(s, st, gate=gate, allow_none=True), nn.BatchNorm3d(cout)
    return FusionPaths(conv_bn(s), conv_bn(st), gate=gate, allow_none=True), None


def _downsample(cin: int, cout: int, stride: int, reference: bool = False) -> nn.Sequential | None:
    """The projection shortcut: a strided 1x1x1 conv -> BN, or (reference) average pool -> 1x1x1 conv -> BN."""
    if stride == 1 and cin == cout:
        return None
    if reference and stride > 1:
        pool = nn.AvgPool3d((1, stride, stride), ceil_mode=True)  # odd sizes: as the strided convs, ceil
        return nn.Sequential(pool, _conv1x1x1(cin, cout), nn.BatchNorm3d(cout))
    return nn.Sequential(_conv1x1x1(cin, cout, stride), nn.BatchNorm3d(cout))


def _inflate_paths(block, inf: Inflator, p3: str, conv2d: str, bn2d: str) -> None:
    """Both paths' convs from the 2D conv ``conv2d``; the 2D BN ``bn2d`` into each path's BN, or into the BN after
    the sum (reference layout)."""
    if block.paths_bn is not None:
        for path in ("s", "st"):
            inf.conv(f"{p3}.paths.{path}.weight", conv2d)
        inf.bn(f"{p3}.paths_bn", bn2d)
        return
    for path in ("s", "st"):
        inf.conv(f"{p3}.paths.{path}.0.weight", conv2d)
        inf.bn(f"{p3}.paths.{path}.1", bn2d)


class _Block(nn.Module):
    """Shared forward logic: ``none`` skips the residual branch (nothing computed) -> ``ReLU(shortcut(x))``."""

    paths: FusionPaths
    downsample: nn.Module | None

    def _branch(self, x: Tensor) -> Tensor | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self._branch(x)
        if out is None:
            return torch.relu(identity)  # out of place: identity may be this block's own input
        return self.relu(out + identity)


class BasicBlock3d(_Block):
    """ResNet-18/34 block, ``(N, C_in, T, H, W) -> (N, planes, T, H/s, W/s)`` (module docstring for the units)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, unit: str, gate: dict, reference: bool = False):
        super().__init__()
        self.unit = unit
        if unit == "factorised":
            self.paths, self.paths_bn = _fusion_paths(cin, cin, unit, gate, reference=reference)
            self.conv1 = _conv1x3x3(cin, planes, stride)
            self.bn1 = nn.BatchNorm3d(planes)
        else:
            self.paths, self.paths_bn = _fusion_paths(cin, planes, unit, gate, stride, reference)
            self.conv1 = self.bn1 = None
        self.conv2 = _conv1x3x3(planes, planes)
        self.bn2 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, planes, stride, reference)

    def _branch(self, x: Tensor) -> Tensor | None:
        h = self.paths(x)
        if h is None:
            return None
        h = self.relu(h if self.paths_bn is None else self.paths_bn(h))
        if self.conv1 is not None:
            h = self.relu(self.bn1(self.conv1(h)))
        return self.bn2(self.conv2(h))

    def inflate(self, inf: Inflator, p3: str, p2: str) -> None:
        if self.unit == "factorised":
            for path in ("s", "st"):
                inf.identity(f"{p3}.paths.{path}{'' if self.paths_bn is not None else '.0'}.weight")
            inf.conv(f"{p3}.conv1.weight", f"{p2}.conv1.weight")
            inf.bn(f"{p3}.bn1", f"{p2}.bn1")
        else:
            _inflate_paths(self, inf, p3, f"{p2}.conv1.weight", f"{p2}.bn1")
        inf.conv(f"{p3}.conv2.weight", f"{p2}.conv2.weight")
        inf.bn(f"{p3}.bn2", f"{p2}.bn2")


class Bottleneck3d(_Block):
    """ResNet-50/101/152 block (stride on the 3x3 conv, torchvision v1.5),
    ``(N, C_in, T, H, W) -> (N, 4 * planes, T, H/s, W/s)`` (module docstring for the units)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, unit: str, gate: dict, reference: bool = False):
        super().__init__()
        self.unit = unit
        if unit == "factorised":
            self.paths, self.paths_bn = _fusion_paths(cin, planes, unit, gate, reference=reference)
            self.conv1 = self.bn1 = None
            self.conv2 = _conv1x3x3(planes, planes, stride)
            self.bn2 = nn.BatchNorm3d(planes)
        else:
            self.conv1 = _conv1x1x1(cin, planes)
            self.bn1 = nn.BatchNorm3d(planes)
            self.paths, self.paths_bn = _fusion_paths(planes, planes, unit, gate, stride, reference)
            self.conv2 = self.bn2 = None
        self.conv3 = _conv1x1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, planes * self.expansion, stride, reference)

    def _branch(self, x: Tensor) -> Tensor | None:
        if self.paths.state == NONE:  # none: do not even run conv1 of the full unit
            return None
        if self.conv1 is not None:
            x = self.relu(self.bn1(self.conv1(x)))
        h = self.paths(x)
        h = self.relu(h if self.paths_bn is None else self.paths_bn(h))
        if self.conv2 is not None:
            h = self.relu(self.bn2(self.conv2(h)))
        return self.bn3(self.conv3(h))

    def inflate(self, inf: Inflator, p3: str, p2: str) -> None:
        if self.unit == "factorised":
            _inflate_paths(self, inf, p3, f"{p2}.conv1.weight", f"{p2}.bn1")
            inf.conv(f"{p3}.conv2.weight", f"{p2}.conv2.weight")
            inf.bn(f"{p3}.bn2", f"{p2}.bn2")
        else:
            inf.conv(f"{p3}.conv1.weight", f"{p2}.conv1.weight")
            inf.bn(f"{p3}.bn1", f"{p2}.bn1")
            _inflate_paths(self, inf, p3, f"{p2}.conv2.weight", f"{p2}.bn2")
        inf.conv(f"{p3}.conv3.weight", f"{p2}.conv3.weight")
        inf.bn(f"{p3}.bn3", f"{p2}.bn3")


RESNET_SPECS = {
    18: (BasicBlock3d, (2, 2, 2, 2)),
    34: (BasicBlock3d, (3, 4, 6, 3)),
    50: (Bottleneck3d, (3, 4, 6, 3)),
    101: (Bottleneck3d, (3, 4, 23, 3)),
    152: (Bottleneck3d, (3, 8, 36, 3)),
}


class ResNetTemplate(FusionNetwork):
    """3D ResNet template, one fusion layer per residual block. Input ``(N, 3, T, H, W)``, logits ``(N, num_classes)``.

    Args:
        num_classes: classifier outputs.
        depth: 18, 34 (BasicBlocks), 50, 101, 152 (Bottlenecks).
        unit: ``"factorised"`` (default; the paper's derived ResNets) or ``"full"`` (module docstring).
        gate: keyword arguments of :class:`~stfusion.core.droppath.VariationalDropPath`.
        width_multiplier: scales the stem and stage widths (64, 128, 256, 512).
        pretrained_2d: a torchvision-format 2D ResNet state dict of the same depth, or a local file holding one.
        layers: blocks per stage (default: the depth's, e.g. ``(3, 4, 6, 3)``; ``(1, 1, 1, 1)`` for tests).
        variant: ``"stfusion"`` or ``"reference"`` (the paper's reference code: module docstring).
        temporal_stride: the stem halves time (the reference's Kinetics and UCF101 networks).
    """

    def __init__(
        self,
        num_classes: int,
        depth: int = 50,
        *,
        unit: str = "factorised",
        gate: dict | None = None,
        width_multiplier: float = 1.0,
        pretrained_2d=None,
        layers=None,
        variant: str = "stfusion",
        temporal_stride: bool = False,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if depth not in RESNET_SPECS:
            raise ValueError(f"depth must be one of {sorted(RESNET_SPECS)}, got {depth}")
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
        block, default_layers = RESNET_SPECS[depth]
        layers = [int(n) for n in (default_layers if layers is None else layers)]
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ValueError(f"layers must give 4 stages of at least one block, got {layers}")
        self.arch = dict(
            backbone=f"resnet{depth}", num_classes=num_classes, depth=depth, unit=unit,
            width_multiplier=float(width_multiplier), layers=layers, variant=variant,
            temporal_stride=bool(temporal_stride),
        )
        ref, ts = variant == "reference", 2 if temporal_stride else 1
        gate = gate or {}
        self.depth = depth
        c = scaled(64, width_multiplier)
        kt = 5 if ref else 1
        self.conv1 = nn.Conv3d(3, c, (kt, 7, 7), stride=(ts, 2, 2), padding=(kt // 2, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(c)
        self.relu = nn.ReLU(inplace=True)
        kp = 3 if ref else 1
        self.maxpool = nn.MaxPool3d((kp, 3, 3), stride=(1, 2, 2), padding=(kp // 2, 1, 1))
        stage_of_layer: list[int] = []
        for si, (w, n) in enumerate(zip(RESNET_STAGE_WIDTHS, layers)):
            planes = scaled(w, width_multiplier)
            blocks = []
            for bi in range(n):
                blocks.append(block(c, planes, 2 if (si > 0 and bi == 0) else 1, unit, gate, ref))
                c = planes * block.expansion
            setattr(self, f"layer{si + 1}", nn.Sequential(*blocks))
            stage_of_layer += [si] * n
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(c, num_classes)
        self._stage_of_layer = stage_of_layer
        self.num_features = c

        init_weights(self, conv_mode="fan_out")
        if pretrained_2d is not None:
            self.inflate_from_2d(pretrained_2d)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))

    def inflate_from_2d(self, src, strategy: Strategy | None = None) -> bool:
        """Load a torchvision-format 2D ResNet state dict (module docstring), each layer's response shared by the
        paths ``strategy`` keeps (``None``: the template, both; :func:`~stfusion.models.inflate.share_between_paths`);
        returns whether the classifier was loaded too."""
        what = f"resnet{self.depth}"
        sd = load_state_dict_2d(src, what)
        inf = Inflator(self, sd, what)
        inf.conv("conv1.weight", "conv1.weight")
        inf.bn("bn1", "bn1")
        for si in range(4):
            stage = getattr(self, f"layer{si + 1}")
            for bi, blk in enumerate(stage):
                p = f"layer{si + 1}.{bi}"
                blk.inflate(inf, p, p)
                if blk.downsample is not None:  # after the average pool of the reference layout
                    i = 1 if isinstance(blk.downsample[0], nn.AvgPool3d) else 0
                    inf.conv(f"{p}.downsample.{i}.weight", f"{p}.downsample.0.weight")
                    inf.bn(f"{p}.downsample.{i + 1}", f"{p}.downsample.1")
        # a 2D net with more blocks than this one (e.g. a resnet50 dict for a 'layers=(1,1,1,1)' net) is a mismatch
        for si in range(4):
            n = len(getattr(self, f"layer{si + 1}"))
            if any(k.startswith(f"layer{si + 1}.{n}.") for k in sd):
                raise StfusionError(
                    f"pretrained_2d: the state dict has more than {n} blocks in layer{si + 1} (a different depth?)"
                )
        loaded = inf.classifier("fc", "fc")
        share_between_paths(self, strategy)
        return loaded
