# stfusion: spatiotemporal fusion strategies as a probability space. `snakemake --cores all` runs everything;
# the stages live in workflow/rules/*.smk, one `stfusion <stage>` command a rule (see README.md).
import yaml
from snakemake.utils import min_version, update_config, validate

min_version("8.0")


configfile: "params.yaml"


def _typed(value):
    """--config reads nested values (data='{frames: 16}') with YAML's BaseLoader, every leaf a string: type them."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return yaml.safe_load(value) if isinstance(value, str) and value else value


update_config(config, {k: _typed(v) for k, v in workflow.config_settings.config.items() if isinstance(v, dict)})


validate(config, "workflow/schemas/params.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/supernet.smk"
include: "workflow/rules/strategies.smk"
include: "workflow/rules/derive.smk"
include: "workflow/rules/validate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        REPORT,
        METRICS,
        RANKING,
        f"{ANALYSIS}/preference.csv",
        f"{ANALYSIS}/preference.png",
        f"{ANALYSIS}/scatter.png",
        FINETUNE_TABLE,
        FIDELITY,
    default_target: True
