"""The small configurable plain template (the CPU default).

Layout: a spatial-only stem (1x3x3 conv, so an all-S network treats frames independently and is exactly
invariant to time reversal), then stages of gated fusion layers with 1x2x2 max-pooling between stages (spatial
downsampling by pooling, never by conv stride; time is never downsampled), global average pooling, a linear
classifier. Paths are torchvision-style conv -> BN, ReLU after the gated sum. The layers have no bypass, so the
state ``none`` is not allowed here.
"""

from __future__ import annotations

from torch import Tensor, nn

from stfusion.core.fusion import FusionPaths, conv_bn, conv_s, conv_st
from stfusion.models.base import FusionNetwork


class PlainFusionLayer(nn.Module):
    """``(N, C_in, T, H, W) -> (N, C_out, T, H, W)``.

    full:       ``ReLU(z_S * BN(conv1x3x3 x) + z_ST * BN(conv3x3x3 x))``
    factorised: ``h = ReLU(z_S * BN(conv1x1x1 x) + z_ST * BN(conv3x1x1 x))``, then ``ReLU(BN(conv1x3x3 h))``
    (the shared 1x3x3 is not gated).
    """

    def __init__(self, cin: int, cout: int, unit: str, gate: dict):
        super().__init__()
        self.paths = FusionPaths(conv_bn(conv_s(cin, cout, unit)), conv_bn(conv_st(cin, cout, unit)), gate=gate)
        self.relu = nn.ReLU(inplace=True)
        self.spatial = None
        if unit == "factorised":
            self.spatial = nn.Sequential(
                nn.Conv3d(cout, cout, (1, 3, 3), padding=(0, 1, 1), bias=False),
                nn.BatchNorm3d(cout),
                nn.ReLU(inplace=True),
            )

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.paths(x))
        return x if self.spatial is None else self.spatial(x)


class PlainTemplate(FusionNetwork):
    """Plain stacked template. Input ``(N, 3, T, H, W)``, output logits ``(N, num_classes)``."""

    def __init__(
        self,
        num_classes: int,
        widths=(16, 32, 64),
        layers_per_stage=(2, 2, 2),
        stem_width: int = 16,
        unit: str = "full",
        gate: dict | None = None,
    ):
        super().__init__()
        if len(widths) != len(layers_per_stage):
            raise ValueError("widths and layers_per_stage must have one entry per stage")
        self.arch = dict(
            backbone="plain", num_classes=num_classes, widths=list(widths), layers_per_stage=list(layers_per_stage),
            stem_width=stem_width, unit=unit,
        )
        gate = gate or {}
        self.stem = nn.Sequential(
            nn.Conv3d(3, stem_width, (1, 3, 3), padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(stem_width),
            nn.ReLU(inplace=True),
        )
        blocks, stage_of_layer, cin = [], [], stem_width
        for si, (w, n) in enumerate(zip(widths, layers_per_stage)):
            if si > 0:
                blocks.append(nn.MaxPool3d((1, 2, 2)))
            for _ in range(n):
                blocks.append(PlainFusionLayer(cin, w, unit, gate))
                stage_of_layer.append(si)
                cin = w
        self.features = nn.Sequential(*blocks)
        self._stage_of_layer = stage_of_layer
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(cin, num_classes)

    def sequence(self) -> list[nn.Module]:
        return [self.stem, *self.features, nn.Sequential(self.pool, nn.Flatten(1), self.fc)]

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(self.stem(x))
        return self.fc(self.pool(x).flatten(1))
