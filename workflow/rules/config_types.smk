# What --configfile and --config set: Snakemake's overwrite_config, with the --config values typed as YAML types
# them (--config reads nested values, data='{frames: 16}', with YAML's BaseLoader, so every leaf is a string).
# common.smk resolves the parameters with these on top (stfusion.config.loading.resolve_params).
import yaml

from stfusion.config.loading import deep_merge


def _typed(value):
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return yaml.safe_load(value) if isinstance(value, str) and value else value


CONFIG_OVERRIDES = deep_merge(workflow.config_settings.overwrite_config, _typed(dict(workflow.config_settings.config)))
