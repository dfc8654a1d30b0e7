# stfusion's workflow is workflow/Snakefile (the layout of the snakemake-workflow catalog); this file includes it,
# so `snakemake --cores all` runs it from the top folder too.


include: "workflow/Snakefile"


# an included file's default target does not carry over: this rule asks for the workflow's `all`
rule default:
    default_target: True
    input:
        rules.all.input,
