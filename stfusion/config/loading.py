"""Loading and validating the parameters (one source of truth for Snakemake, DVC and the CLI).

The package ships the defaults (``stfusion/config/defaults/params.yaml``, the commented file ``stfusion init`` writes;
a checkout's ``params.yaml`` is the same file). A command reads the defaults, then the params file over them:
``--params FILE`` (or ``$STFUSION_PARAMS``), else ``params.yaml`` in the working folder when there is one; that
file may set only the keys it changes.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from stfusion.errors import StfusionError

SCHEMA_PATH = Path(__file__).parent / "schema" / "params.schema.yaml"
DEFAULTS_PATH = Path(__file__).parent / "defaults" / "params.yaml"
PRESET_DIR = Path(__file__).parent / "presets"
PARAMS_FILE = "params.yaml"  #: the params file of the working folder, read when no other is named


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


def validate(params: dict) -> None:
    """Validate ``params`` against the schema; the error names the offending key, e.g. ``gate.temperature``."""
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
    raise StfusionError(f"invalid parameter {key}: {err.message}")


def apply_preset(params: dict) -> dict:
    """Merge the named preset (``params['preset']``) under the user's explicit keys' data section."""
    name = params.get("preset")
    if not name:
        return params
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        raise StfusionError(f"unknown preset {name!r}; available: {sorted(p.stem for p in PRESET_DIR.glob('*.yaml'))}")
    return deep_merge(params, _load_yaml(path))


def load_params(path: str | Path | None = None, overrides: dict | None = None) -> dict[str, Any]:
    """The packaged defaults with the params file ``path`` merged over them (``None``: ``params.yaml`` of the
    working folder when it exists, else the defaults alone), then the preset and ``overrides``; validated."""
    params = _load_yaml(DEFAULTS_PATH)
    if path is None and Path(PARAMS_FILE).is_file():
        path = PARAMS_FILE
    if path is not None:
        params = deep_merge(params, _load_yaml(Path(path)))
    if overrides:
        params = deep_merge(params, overrides)
    validate(params)
    params = apply_preset(params)
    if overrides:  # explicit overrides win over the preset
        params = deep_merge(params, {k: v for k, v in overrides.items() if k != "preset"})
    validate(params)
    return params
