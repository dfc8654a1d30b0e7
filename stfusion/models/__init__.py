"""``build_model(settings, num_classes)``: the one entry point to every template network."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stfusion.models.base import FusionNetwork
from stfusion.models.plain import PlainTemplate

if TYPE_CHECKING:
    from stfusion.config.settings import Gate, Settings

RESNETS = ("resnet18", "resnet50")
BACKBONES = ("plain", "densenet121", *RESNETS, "r3d18")


def gate_kwargs(gate: Gate) -> dict:
    """The constructor arguments of :class:`~stfusion.core.droppath.VariationalDropPath` from the ``gate``
    settings."""
    return {"init_p": gate.init_p, "temperature": gate.temperature, "rescale": gate.rescale}


def build_model(settings: Settings, num_classes: int) -> FusionNetwork:
    """Build the template network that ``settings.model`` describes, gates configured by ``settings.gate``."""
    m, gate = settings.model, gate_kwargs(settings.gate)
    if m.backbone == "plain":
        return PlainTemplate(num_classes, widths=m.widths, layers_per_stage=m.layers_per_stage,
                             stem_width=m.stem_width, unit=m.unit, gate=gate)
    if m.backbone == "densenet121":
        from stfusion.models.densenet import DenseNet121Template

        return DenseNet121Template(num_classes, unit=m.unit, gate=gate, width_multiplier=m.width_multiplier,
                                   pretrained_2d=m.pretrained_2d, variant=m.variant)
    if m.backbone in RESNETS:
        from stfusion.models.resnet import ResNetTemplate

        return ResNetTemplate(num_classes, depth=int(m.backbone[6:]), unit=m.unit, gate=gate,
                              width_multiplier=m.width_multiplier, pretrained_2d=m.pretrained_2d, variant=m.variant,
                              temporal_stride=m.temporal_stride)
    if m.backbone == "r3d18":
        from stfusion.models.video_resnet import VideoResNetTemplate

        return VideoResNetTemplate(num_classes, unit=m.unit, gate=gate, width_multiplier=m.width_multiplier,
                                   temporal_stride=m.temporal_stride, pretrained_3d=m.pretrained_3d)
    raise ValueError(f"unknown backbone {m.backbone!r}; choose one of {BACKBONES}")


__all__ = ["BACKBONES", "FusionNetwork", "build_model", "gate_kwargs"]
