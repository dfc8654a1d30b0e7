# --config reads nested values (data='{frames: 16}') with YAML's BaseLoader, so every leaf is a string: type them
# as YAML does before the configuration is validated.
import yaml
from snakemake.utils import update_config


def _typed(value):
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return yaml.safe_load(value) if isinstance(value, str) and value else value


update_config(config, {k: _typed(v) for k, v in workflow.config_settings.config.items() if isinstance(v, dict)})
