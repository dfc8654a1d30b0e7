"""The parameters as typed, frozen settings: one dataclass a section of ``params.yaml``, built from the validated
params (:func:`stfusion.config.loading.load_params`, or a stage's subset, :func:`stfusion.config.layout.stage_params`).

No default is written here: the packaged defaults file (``stfusion/config/defaults/params.yaml``) and the schema
are the only places a default lives. :meth:`Settings.from_params` needs every key and names the first one missing
(``missing parameter gate.kl_k``); :meth:`Settings.for_stage` takes the subset of the keys a stage declares
(``STAGE_PARAMS``) and raises, naming the key, when the stage reads one it did not declare. Light: no torch, no
pandas (the Snakemake rules import it).

Types follow the schema; integers in float fields become floats and lists become tuples (the settings are
immutable)."""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import ClassVar

from stfusion.errors import StfusionError

__all__ = ["Budget", "Builtin", "Compute", "Data", "Derive", "Finetune", "Gate", "Model", "Scoring", "Settings",
           "Solver", "Standalone", "Study", "Supernet"]

_SECTION = dataclass(frozen=True, repr=False, eq=False)


class _Section:
    """A section of the parameters; ``KEY`` is its dotted place (``""`` for the whole file). Fields a stage did not
    declare are left unset and raise on reading (:meth:`__getattr__` runs only for unset attributes)."""

    KEY: ClassVar[str]

    @classmethod
    def build(cls, values: Mapping, *, complete: bool):
        """The section of ``values`` (its keys: the field names); ``complete``: every field must be given."""
        if not isinstance(values, Mapping):
            raise StfusionError(f"parameter {cls.KEY or '(top level)'} must be a mapping, got {type(values).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise StfusionError(f"unknown parameter {_dotted(cls.KEY, unknown[0])}")
        obj = object.__new__(cls)
        for name in names:
            if name in values:
                object.__setattr__(obj, name, _typed(_hints(cls)[name], values[name], complete))
            elif complete:
                raise StfusionError(f"missing parameter {_dotted(cls.KEY, name)} (every key has a value in the "
                                    "packaged defaults, stfusion/config/defaults/params.yaml)")
        return obj

    def __getattr__(self, name: str):
        if name in type(self).__dataclass_fields__:
            raise StfusionError(f"parameter {_dotted(self.KEY, name)} is not among the parameters this stage "
                                "declares (STAGE_PARAMS in stfusion/config/layout.py)")
        raise AttributeError(name)

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


def _dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _typed(hint, value, complete: bool):
    """``value`` as the field's type: a nested section, a float for an integer, a tuple for a list."""
    if isinstance(hint, type) and issubclass(hint, _Section):
        return hint.build(value, complete=complete)
    if isinstance(value, list):
        return tuple(value)
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    floats = hint is float or (union and float in typing.get_args(hint))
    if floats and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@_SECTION
class Builtin(_Section):
    """``data.builtin``: the generated benchmark (:mod:`stfusion.data.builtin`)."""

    KEY: ClassVar[str] = "data.builtin"
    clips_per_class: int
    extra_test_clips: int
    frames: int
    size: int
    texture: str
    classes: str | tuple[str, ...] | None


@_SECTION
class Data(_Section):
    """``data``: the dataset, its preparation, and the clips and views training and evaluation read."""

    KEY: ClassVar[str] = "data"
    dataset: str
    root: str
    annotations: str | None
    split: int
    backend: str
    frames: int
    stride: int
    sampling: str
    size: int
    flip: bool
    crop: int | None
    train_short_side: tuple[int, int] | None
    clips_per_decode: int
    eval_crop: int | None
    eval_short_side: int | None
    test_clips: int
    test_crops: int
    max_decode_failures: float
    val_fraction: float
    calib_fraction: float
    workers: int
    storage: str
    cache_max_gb: float
    prepare: str
    short_side: int
    prepare_shards: int
    builtin: Builtin


@_SECTION
class Model(_Section):
    """``model``: the template network (:func:`stfusion.models.build_model`)."""

    KEY: ClassVar[str] = "model"
    backbone: str
    unit: str
    widths: tuple[int, ...]
    layers_per_stage: tuple[int, ...]
    stem_width: int
    width_multiplier: float
    pretrained_2d: str | None
    variant: str
    temporal_stride: bool
    pretrained_3d: str | None


@_SECTION
class Gate(_Section):
    """``gate``: Variational DropPath, its KL term and the keep-probability rule of the posterior."""

    KEY: ClassVar[str] = "gate"
    init_p: float
    temperature: float
    rescale: bool
    kl_k: float
    kl_form: str
    kl_price: str
    kl_warmin_epochs: int
    lr_scale: float
    n_train: int | None
    keep_prob: str


@_SECTION
class Supernet(_Section):
    """``supernet``: the template network's own training budget."""

    KEY: ClassVar[str] = "supernet"
    epochs: int
    warmup_epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    uniform_share: float


@_SECTION
class Solver(_Section):
    """``solver``: the optimiser and schedule of every training stage (supernet, finetuning, stand-alone)."""

    KEY: ClassVar[str] = "solver"
    momentum: float
    schedule: str
    milestones: tuple[float, ...]
    eval_every: int


@_SECTION
class Compute(_Section):
    """``compute``: where and how networks train and are scored (device, precision, loaders, launch)."""

    KEY: ClassVar[str] = "compute"
    device: str
    precision: str
    channels_last: bool
    loader_workers: int
    checkpoint_minutes: float | None
    gpus_per_node: int
    nodes: int
    max_restarts: int


@_SECTION
class Scoring(_Section):
    """``scoring``: which strategies are listed and how the supernet scores them."""

    KEY: ClassVar[str] = "scoring"
    n_samples: int
    top_k: int
    recalibrate_bn: bool
    calib_batches: int
    batch_size: int
    racing: bool
    keep_top: int
    race_first_clips: int
    race_growth: float
    race_confidence: float
    min_exposure: float


@_SECTION
class Derive(_Section):
    """``derive``: new strategies read off the preferences."""

    KEY: ClassVar[str] = "derive"
    top_k: int
    st_threshold: float


@_SECTION
class Budget(_Section):
    """A plain (gate-free) training budget: finetuning or stand-alone training."""

    epochs: int
    lr: float
    batch_size: int
    weight_decay: float


@_SECTION
class Finetune(Budget):
    """``finetune``: the budget of the derived networks' finetuning."""

    KEY: ClassVar[str] = "finetune"


@_SECTION
class Standalone(Budget):
    """``standalone``: the strategies trained from scratch and their budget (also the fidelity study's)."""

    KEY: ClassVar[str] = "standalone"
    n_strategies: int


@_SECTION
class Study(_Section):
    """``fidelity``: the ranking-fidelity study."""

    KEY: ClassVar[str] = "fidelity"
    n_strategies: int
    seeds: int


@_SECTION
class Settings(_Section):
    """All the parameters, one typed section each."""

    KEY: ClassVar[str] = ""
    seed: int
    seeds: tuple[int, ...]
    preset: str | None
    data: Data
    model: Model
    gate: Gate
    supernet: Supernet
    solver: Solver
    compute: Compute
    scoring: Scoring
    derive: Derive
    finetune: Finetune
    standalone: Standalone
    fidelity: Study

    @classmethod
    def from_params(cls, params: Mapping) -> Settings:
        """The settings of complete, validated ``params``; a missing key raises, naming it."""
        return cls.build(params, complete=True)

    @classmethod
    def for_stage(cls, params: Mapping) -> Settings:
        """The settings of the keys a stage declares (a subset of the params, or a checkpoint's build record):
        reading an undeclared key raises, naming it."""
        return cls.build(params, complete=False)
