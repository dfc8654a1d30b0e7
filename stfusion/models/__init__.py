"""``build_model(params, num_classes)``: the one entry point to every template network."""

from __future__ import annotations

from stfusion.models.base import FusionNetwork
from stfusion.models.plain import PlainTemplate

BACKBONES = ("plain", "densenet121", "resnet18", "resnet50")


def gate_kwargs(gate_params: dict) -> dict:
    """The constructor arguments of :class:`~stfusion.core.droppath.VariationalDropPath` from ``params['gate']``."""
    return {
        "init_p": gate_params.get("init_p", 0.1),
        "temperature": gate_params.get("temperature", 0.2),
        "rescale": gate_params.get("rescale", False),
    }


def build_model(params: dict, num_classes: int) -> FusionNetwork:
    """Build the template network that ``params['model']`` describes, gates configured by ``params['gate']``."""
    m, gate = params["model"], gate_kwargs(params.get("gate", {}))
    backbone = m["backbone"]
    if backbone == "plain":
        return PlainTemplate(
            num_classes,
            widths=m.get("widths", (16, 32, 64)),
            layers_per_stage=m.get("layers_per_stage", (2, 2, 2)),
            stem_width=m.get("stem_width", 16),
            unit=m.get("unit", "full"),
            gate=gate,
        )
    if backbone == "densenet121":
        from stfusion.models.densenet import DenseNet121Template

        return DenseNet121Template(
            num_classes, unit=m.get("unit", "factorised"), gate=gate,
            width_multiplier=m.get("width_multiplier", 1.0), pretrained_2d=m.get("pretrained_2d"),
        )
    if backbone in ("resnet18", "resnet50"):
        from stfusion.models.resnet import ResNetTemplate

        return ResNetTemplate(
            num_classes, depth=int(backbone[6:]), unit=m.get("unit", "factorised"), gate=gate,
            width_multiplier=m.get("width_multiplier", 1.0), pretrained_2d=m.get("pretrained_2d"),
        )
    raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")


__all__ = ["BACKBONES", "FusionNetwork", "build_model", "gate_kwargs"]
