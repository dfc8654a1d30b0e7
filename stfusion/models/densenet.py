"""The paper's template: DenseNet-121 inflated to 3D (docs/method.md §3), and the 2D -> 3D inflation helpers.

Layout (``unit="factorised"``, the paper's template)::

    stem    5x7x7 conv 3->64, stride (1,2,2), pad (2,3,3) -> BN -> ReLU -> max-pool (1,3,3) / (1,2,2), pad (0,1,1)
    block   dense layers (6, 12, 24, 16), growth 32, bottleneck width 128 (bn_size 4), each:
              h = z_S * conv1x1x1(ReLU(BN(x))) + z_ST * conv3x1x1(ReLU(BN'(x)))      (two gated paths, own BNs)
              new = conv1x3x3(ReLU(BN(h)))  -> 32 channels (not gated), concatenated to x
    trans.  z_S * conv1x1x1(ReLU(BN(x))) + z_ST * conv3x1x1(ReLU(BN'(x)))  (C -> C/2, gated), avg-pool (1,2,2)
    head    BN -> ReLU -> global average pool -> linear

Paths are pre-activated (BN -> ReLU -> conv, the paper's experimental code). Spatial downsampling is by pooling
only; time is never downsampled (temporal stride 1, temporal padding keeps T). Fusion layers, in order: the dense
layers and the transitions of each block, 58 + 3 = 61 for DenseNet-121 (122 gate logits).

Reference layout (``variant="reference"``, the paper's reference code, its Something-Something configuration):
``pool0`` is a 3x3x3 max-pool, stride (1,2,2), so even all-S mixes neighbouring frames; and one more gate, a single
Variational DropPath on the classifier's input (the pooled features; :class:`~stfusion.core.fusion.InputGate`,
priced by the classifier's weights, outside the strategies, dropped by ``export``): 123 gates, the paper's count.

``unit="full"``: the gated S / ST paths of dense layers and transitions are a 1x3x3 / 3x3x3 conv (to the same
bottleneck width C_b resp. C/2); the dense layer's shared BN-ReLU-1x3x3 conv to the growth rate stays. So every
gated 1x1 conv of the 2D net becomes the unit's S / ST pair.

The state ``none``:

* dense layer (``allow_none=True``): the layer computes nothing (no concatenation, no BN, no conv) and contributes
  zeros for its new channels; its input still passes on through the dense concatenation. Later layers keep their
  input widths, so the weights of the template still fit. An exported network drops those channels altogether
  (:mod:`stfusion.models.densenet_prune`: same output, fewer MACs).
* transition (``allow_none=False``): there is no bypass around a transition (it halves the channels), so ``none``
  is refused.

Stem: ``stem_temporal_kernel`` (default 5, the paper's) sets the stem's temporal extent. With a time-symmetric
stem kernel (e.g. right after inflation, which repeats the 2D kernel over time) or with ``stem_temporal_kernel=1``,
the all-S network (factorised or full) is exactly invariant to time reversal; a trained 5x7x7 stem in general is not.

Inflation (``pretrained_2d``: a torchvision-format ``densenet121`` state dict, a local file read with
``torch.load(weights_only=True)`` or the dict itself; nothing is ever downloaded): every 2D kernel gets a time
axis; the stem kernel is repeated over its temporal extent and divided by it (5); each dense layer's / transition's
1x1 kernel is copied into the S conv and repeated 3x over time, divided by 3, into the ST conv (for ``unit="full"``
the 1x1 kernel is put at the spatial centre of the 1x3x3 / 3x3x3 kernel, zeros elsewhere, which computes the same
function on a static clip), and where a layer keeps both paths (the template) each carries half of it, so that
S + ST computes the 2D layer as either path alone does (:func:`~stfusion.models.inflate.share_between_paths`);
both paths' BNs copy the 2D BN before the 1x1 conv; 3x3 convs become 1x3x3; the
classifier is loaded only when its shape fits (same ``num_classes``). Missing keys, mismatched shapes, an unreadable
or missing file raise :class:`~stfusion.errors.StfusionError`. BNs of paths not loaded from weights keep gamma 1.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch
from torch import Tensor, nn

from stfusion.core.fusion import UNITS, FusionPaths, InputGate, bn_relu_conv, conv_s, conv_st
from stfusion.core.strategies import NONE, Strategy
from stfusion.models.base import FusionNetwork
from stfusion.models.inflate import Inflator, init_weights, load_state_dict_2d, scaled, share_between_paths

DENSENET121_BLOCKS = (6, 12, 24, 16)
#: ``stfusion``: the layout above; ``reference``: the paper's reference code's (module docstring)
VARIANTS = ("stfusion", "reference")


# --------------------------------------------------------------------------------------------------------------
# 2D -> 3D inflation helpers (also used by resnet.py)
# --------------------------------------------------------------------------------------------------------------


_OLD_DENSE_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12])\.(weight|bias|running_mean|running_var)$")


def _normalise_densenet_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Accept the old torchvision key style ``denselayer1.norm.1.weight`` next to ``denselayer1.norm1.weight``."""
    out = {}
    for k, v in sd.items():
        m = _OLD_DENSE_KEY.match(k)
        out[f"{m.group(1)}{m.group(2)}.{m.group(3)}" if m else k] = v
    return out


# --------------------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------------------


class DenseLayer3d(nn.Module):
    """One dense layer: ``list of (N, C_i, T, H, W) -> (N, growth, T, H, W)`` new channels.

    The gated S / ST paths run from the concatenated input to the bottleneck width; their gated sum goes through
    BN -> ReLU -> 1x3x3 conv to ``growth`` channels (not gated). State ``none``: nothing is computed and the new
    channels are zeros (the input passes on through the block's concatenation).
    """

    def __init__(self, cin: int, growth: int, bottleneck: int, unit: str, gate: dict):
        super().__init__()
        self.paths = FusionPaths(
            bn_relu_conv(conv_s(cin, bottleneck, unit)),
            bn_relu_conv(conv_st(cin, bottleneck, unit)),
            gate=gate,
            allow_none=True,
        )
        self.norm2 = nn.BatchNorm3d(bottleneck)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(bottleneck, growth, (1, 3, 3), padding=(0, 1, 1), bias=False)
        self.growth = growth
        self.conv_in_channels = cin
        self.dropped = False  # a pruned ``none`` layer of an exported network: adds no channels at all

    def drop(self) -> None:
        """Turn an exported ``none`` layer into nothing: no modules left, the block skips it."""
        self.norm2 = self.relu2 = self.conv2 = None
        self.dropped = True

    def forward(self, features: list[Tensor]) -> Tensor:
        if self.paths.state == NONE:
            x0 = features[0]
            n, _, t, h, w = x0.shape
            return x0.new_zeros(n, self.growth, t, h, w)
        x = torch.cat(features, 1) if len(features) > 1 else features[0]
        return self.conv2(self.relu2(self.norm2(self.paths(x))))


class DenseBlock3d(nn.ModuleDict):
    """Dense layers ``denselayer1..n``; output: the input concatenated with every layer's new channels."""

    def __init__(self, n_layers: int, cin: int, growth: int, bottleneck: int, unit: str, gate: dict):
        super().__init__()
        for i in range(n_layers):
            self[f"denselayer{i + 1}"] = DenseLayer3d(cin + i * growth, growth, bottleneck, unit, gate)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            if not layer.dropped:
                features.append(layer(features))
        return torch.cat(features, 1)


class Transition3d(nn.Module):
    """Gated S / ST paths ``C -> C_out`` (pre-activated), summed, then avg-pool (1,2,2). No bypass: no ``none``."""

    def __init__(self, cin: int, cout: int, unit: str, gate: dict):
        super().__init__()
        self.paths = FusionPaths(
            bn_relu_conv(conv_s(cin, cout, unit)), bn_relu_conv(conv_st(cin, cout, unit)), gate=gate, allow_none=False
        )
        self.pool = nn.AvgPool3d((1, 2, 2), stride=(1, 2, 2))

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.paths(x))



def _checked(variant: str, unit: str, stem_temporal_kernel: int, block_config) -> list[int]:
    """The DenseNet's arguments checked (one line naming the wrong one); ``block_config`` as a list of ints."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    if stem_temporal_kernel < 1 or stem_temporal_kernel % 2 == 0:
        raise ValueError(f"stem_temporal_kernel must be odd and >= 1, got {stem_temporal_kernel}")
    if not block_config or any(int(n) < 1 for n in block_config):
        raise ValueError(f"block_config needs at least one block of at least one layer, got {block_config}")
    return [int(n) for n in block_config]


def _stem(c: int, kt: int, kp: int) -> OrderedDict[str, nn.Module]:
    """torchvision's DenseNet stem in 3D, ``(N, 3, T, H, W) -> (N, c, T, H/4, W/4)``: a ``kt x 7 x 7`` conv of
    spatial stride 2, BN, ReLU, a ``kp x 3 x 3`` max-pool of spatial stride 2 (state-dict keys ``conv0`` to
    ``pool0``)."""
    return OrderedDict(
        conv0=nn.Conv3d(3, c, (kt, 7, 7), stride=(1, 2, 2), padding=(kt // 2, 3, 3), bias=False),
        norm0=nn.BatchNorm3d(c),
        relu0=nn.ReLU(inplace=True),
        pool0=nn.MaxPool3d((kp, 3, 3), stride=(1, 2, 2), padding=(kp // 2, 1, 1)),
    )

class DenseNet121Template(FusionNetwork):
    """DenseNet-121 template in 3D. Input ``(N, 3, T, H, W)``, output logits ``(N, num_classes)``.

    Args:
        num_classes: classifier outputs.
        unit: ``"factorised"`` (the paper's: S = 1x1x1, ST = 3x1x1) or ``"full"`` (S = 1x3x3, ST = 3x3x3).
        gate: keyword arguments of :class:`~stfusion.core.droppath.VariationalDropPath`.
        width_multiplier: scales the growth rate, the bottleneck width and the stem width (CPU tests: 0.25).
        pretrained_2d: a torchvision-format ``densenet121`` state dict or the path of a local file holding one.
        block_config: dense layers per block (``(6, 12, 24, 16)`` = DenseNet-121; smaller for tests).
        growth_rate, bn_size, stem_width: DenseNet hyper-parameters before ``width_multiplier``.
        stem_temporal_kernel: temporal extent of the stem conv (odd; 5 in the paper, 1 = spatial-only stem).
        variant: ``"stfusion"`` or ``"reference"`` (the paper's reference code: module docstring).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        unit: str = "factorised",
        gate: dict | None = None,
        width_multiplier: float = 1.0,
        pretrained_2d=None,
        block_config=DENSENET121_BLOCKS,
        growth_rate: int = 32,
        bn_size: int = 4,
        stem_width: int = 64,
        stem_temporal_kernel: int = 5,
        variant: str = "stfusion",
    ):
        super().__init__()
        block_config = _checked(variant, unit, stem_temporal_kernel, block_config)
        self.arch = dict(
            backbone="densenet121", num_classes=num_classes, unit=unit, width_multiplier=float(width_multiplier),
            block_config=block_config, growth_rate=growth_rate, bn_size=bn_size, stem_width=stem_width,
            stem_temporal_kernel=stem_temporal_kernel, variant=variant,
        )
        kp = 3 if variant == "reference" else 1
        gate = gate or {}
        growth = scaled(growth_rate, width_multiplier)
        bottleneck = bn_size * growth
        c = scaled(stem_width, width_multiplier)
        layers = _stem(c, stem_temporal_kernel, kp)
        stage_of_layer: list[int] = []
        for bi, n in enumerate(block_config):
            layers[f"denseblock{bi + 1}"] = DenseBlock3d(n, c, growth, bottleneck, unit, gate)
            stage_of_layer += [bi] * n
            c += n * growth
            if bi != len(block_config) - 1:
                layers[f"transition{bi + 1}"] = Transition3d(c, c // 2, unit, gate)
                stage_of_layer.append(bi)
                c //= 2
        layers["norm5"] = nn.BatchNorm3d(c)
        self.features = nn.Sequential(layers)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.classifier_gate = InputGate(gate) if variant == "reference" else None
        self.classifier = nn.Linear(c, num_classes)
        self._stage_of_layer = stage_of_layer
        self.num_features = c

        init_weights(self)
        if pretrained_2d is not None:
            self.inflate_from_2d(pretrained_2d)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.relu(self.features(x))).flatten(1)
        return self.classifier(x if self.classifier_gate is None else self.classifier_gate(x))

    def export(self, strategy: Strategy) -> FusionNetwork:
        """A plain copy for ``strategy`` (:meth:`FusionNetwork.export`) without the channels of its ``none``
        layers (:func:`~stfusion.models.densenet_prune.prune_dead_channels`): the same output, fewer MACs."""
        from stfusion.models.densenet_prune import prune_dead_channels

        net = super().export(strategy)
        prune_dead_channels(net)
        return net

    def gated_inputs(self) -> list:
        return [] if self.classifier_gate is None else [(self.classifier_gate, self.classifier)]

    def inflate_from_2d(self, src, strategy: Strategy | None = None) -> bool:
        """Load a torchvision-format 2D DenseNet state dict (module docstring), each layer's response shared by the
        paths ``strategy`` keeps (``None``: the template, both; :func:`~stfusion.models.inflate.share_between_paths`);
        returns whether the classifier was loaded too."""
        sd = _normalise_densenet_keys(load_state_dict_2d(src, "densenet121"))
        inf = Inflator(self, sd, "densenet121")
        inf.conv("features.conv0.weight", "features.conv0.weight")
        inf.bn("features.norm0", "features.norm0")
        for name, module in self.features.named_children():
            if isinstance(module, DenseBlock3d):
                for lname in module:
                    p3, p2 = f"features.{name}.{lname}", f"features.{name}.{lname}"
                    for path in ("s", "st"):
                        inf.bn(f"{p3}.paths.{path}.0", f"{p2}.norm1")
                        inf.conv(f"{p3}.paths.{path}.2.weight", f"{p2}.conv1.weight")
                    inf.bn(f"{p3}.norm2", f"{p2}.norm2")
                    inf.conv(f"{p3}.conv2.weight", f"{p2}.conv2.weight")
            elif isinstance(module, Transition3d):
                for path in ("s", "st"):
                    inf.bn(f"features.{name}.paths.{path}.0", f"features.{name}.norm")
                    inf.conv(f"features.{name}.paths.{path}.2.weight", f"features.{name}.conv.weight")
        inf.bn("features.norm5", "features.norm5")
        loaded = inf.classifier("classifier", "classifier")
        share_between_paths(self, strategy)
        return loaded
