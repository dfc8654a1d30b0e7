# stfusion: spatiotemporal fusion strategies as a probability space. `snakemake --cores all` runs everything;
# the stages live in workflow/rules/*.smk, one `stfusion <stage>` command a rule (see README.md).
from snakemake.utils import min_version, validate

min_version("8.0")


configfile: "params.yaml"


validate(config, "stfusion/schema/params.schema.yaml")  # the schema the package validates with


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
