"""Loading and validating the parameters (one source of truth for Snakemake, DVC and the CLI).

The package ships the defaults (``stfusion/config/defaults/params.yaml``, the commented file ``stfusion init`` writes;
a checkout's ``params.yaml`` is the same file). Precedence (:func:`resolve_params`, used by the CLI and the
Snakefile): the packaged defaults < the preset named by ``preset`` < the user's params file (``--params FILE``,
``$STFUSION_PARAMS``, else ``params.yaml`` of the working folder when there is one; it may set only the keys it
changes) < ``--set`` (Snakemake: ``--configfile`` / ``--config``).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from stfusion.config.layout import subset
from stfusion.config.settings import Settings
from stfusion.errors import StfusionError

SCHEMA_PATH = Path(__file__).parent / "schema" / "params.schema.yaml"
DEFAULTS_PATH = Path(__file__).parent / "defaults" / "params.yaml"
PRESET_DIR = Path(__file__).parent / "presets"
PARAMS_FILE = "params.yaml"  #: the params file of the working folder, read when no other is named

log = logging.getLogger(__name__)


def _load_yaml(path: Path) -> dict:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise StfusionError(f"params file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise StfusionError(f"{path} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise StfusionError(f"{path} must hold a mapping of parameters, got {type(data).__name__}")
    return data


def deep_merge(base: dict, override: dict) -> dict:
    """Return ``base`` updated recursively with ``override`` (neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


#: keys that moved, old dotted key -> new one: a params file with an old key stops with one line naming the new
#: place (the specific keys are checked before the renamed section)
MOVED = {
    **{f"supernet.{k}": f"compute.{k}" for k in ("device", "precision", "channels_last", "loader_workers",
                                                   "checkpoint_minutes", "gpus_per_node", "nodes", "max_restarts")},
    **{f"supernet.{k}": f"solver.{k}" for k in ("momentum", "schedule", "milestones", "eval_every")},
    **{f"validate.{k}": f"standalone.{k}" for k in ("n_strategies", "epochs", "lr", "batch_size", "weight_decay")},
    "validate": "standalone",
}


def validate(params: dict) -> None:
    """Validate ``params`` against the schema; the error names the offending key, e.g. ``gate.temperature``, and
    a key that moved names its new place (:data:`MOVED`)."""
    for old, new in MOVED.items():
        if subset(params, [old]):
            raise StfusionError(f"unknown parameter {old}: moved to {new}")
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    err = errors[0]
    key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        where = f"{key}." if err.absolute_path else ""
        allowed = ", ".join(sorted(err.schema.get("properties", {})))
        raise StfusionError(f"unknown parameter {where}{extra[0]} (allowed here: {allowed})")
    if err.validator == "const":  # a setting of other backbones (the schema's model.allOf)
        raise StfusionError(f"invalid parameter {key}: {err.instance!r} is for another model.backbone; with this one "
                            f"it must be {err.validator_value!r}")
    raise StfusionError(f"invalid parameter {key}: {err.message}")


def preset_values(name: str | None) -> dict:
    """The keys the preset ``name`` sets (``stfusion/config/presets/<name>.yaml``; none for ``None``)."""
    if not name:
        return {}
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        raise StfusionError(f"unknown preset {name!r}; available: {sorted(p.stem for p in PRESET_DIR.glob('*.yaml'))}")
    return _load_yaml(path)


def _changes(user: dict, defaults: dict) -> dict:
    """The keys of ``user`` whose values differ from ``defaults`` (recursively)."""
    out = {}
    for key, value in user.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            value = _changes(value, defaults[key])
            if value:
                out[key] = value
        elif key not in defaults or value != defaults[key]:
            out[key] = copy.deepcopy(value)
    return out


def resolve_params(user: dict | None = None, overrides: dict | None = None) -> dict[str, Any]:
    """The parameters in the field's order of precedence (MMAction2's ``_base_``): the packaged defaults < the
    preset < the user's params file ``user`` < ``overrides`` (the CLI's ``--set``; Snakemake's ``--configfile``
    and ``--config``). The one place precedence is decided, for the CLI and the Snakefile.

    ``user`` is read as changes to the packaged defaults: a key holding its packaged value changes nothing, so a
    full copy of the defaults (``params.yaml`` of a checkout, or of ``stfusion init``) leaves a preset in force;
    to keep a packaged value against a preset, give it in ``overrides``. The preset named last wins (``overrides``
    over ``user``). Validated, and complete (every key of :class:`~stfusion.config.settings.Settings`)."""
    defaults = _load_yaml(DEFAULTS_PATH)
    changes, overrides = _changes(user or {}, defaults), overrides or {}
    name = overrides.get("preset", changes.get("preset", defaults["preset"]))
    preset = _preset_under(name, preset_values(name), (changes, overrides))
    params = defaults
    for layer in (preset, changes, overrides):
        params = deep_merge(params, layer)
    validate(params)
    Settings.from_params(params)
    _note_packaged_values(name, preset, user or {}, params)
    return params


def _preset_under(name: str | None, preset: dict, above: tuple[dict, ...]) -> dict:
    """The preset's keys under the layers ``above`` it: a ``model.backbone`` chosen there other than the preset's
    replaces the preset's whole ``model`` section (its unit, widths, variant and strides belong to its backbone)."""
    chosen = [layer["model"]["backbone"] for layer in above if "backbone" in (layer.get("model") or {})]
    if not chosen or "model" not in preset or chosen[-1] == preset["model"].get("backbone"):
        return preset
    log.info("model.backbone %s replaces preset %s's model section (%s)", chosen[-1], name,
             ", ".join(f"{k}: {v}" for k, v in preset["model"].items()))
    return {key: value for key, value in preset.items() if key != "model"}


def leaves(node: dict, prefix: str = "") -> dict:
    """``{dotted key: value}`` of every leaf of ``node``."""
    out = {}
    for key, value in node.items():
        out.update(leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def _note_packaged_values(name: str | None, preset: dict, user: dict, params: dict) -> None:
    """Log the keys the user's file holds at their packaged values that the preset ``name`` set otherwise."""
    written, resolved = leaves(user), leaves(params)
    taken = [k for k, v in leaves(preset).items() if k in written and written[k] != v == resolved[k]]
    if taken:
        log.info("preset %s sets %d key(s) the params file leaves at their packaged values (%s%s); to keep a "
                 "packaged value, give it with --set / --config", name, len(taken), ", ".join(taken[:3]),
                 ", ..." if len(taken) > 3 else "")


def load_params(path: str | Path | None = None, overrides: dict | None = None) -> dict[str, Any]:
    """The parameters of the params file ``path`` (``None``: ``params.yaml`` of the working folder when it exists,
    else none) with ``overrides`` over them: :func:`resolve_params`."""
    if path is None and Path(PARAMS_FILE).is_file():
        path = PARAMS_FILE
    return resolve_params(_load_yaml(Path(path)) if path is not None else None, overrides)
