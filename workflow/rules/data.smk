# Stage 1: the data. The built-in benchmark is generated (rule generate_builtin); a real dataset is read from
# data.root. Either way `prepare` decodes every video once into the clip cache with train/val/test splits.

if IS_BUILTIN:

    rule generate_builtin:
        output:
            annotations=f"{ROOT}/annotations.csv",
            classes=f"{ROOT}/classes.csv",
            timing=f"{TIMING}/generate.json",
        log:
            "logs/generate.log",
        conda:
            CONDA_ENV
        params:
            values=stage_values("generate"),
            root=dirname("annotations", "output"),
        shell:
            "python -m stfusion.cli generate --root {params.root} --timing {output.timing} --log {log} --no-progress"


rule prepare:
    input:
        unpack(prepare_inputs),
    output:
        **CACHE_FILES,
        timing=f"{TIMING}/prepare.json",
    log:
        "logs/prepare.log",
    conda:
        CONDA_ENV
    threads: 4
    params:
        values=stage_values("prepare"),
        root=lambda w, input: os.path.dirname(input.annotations) if IS_BUILTIN else input.root,
        cache=dirname("manifest", "output"),
    shell:
        "python -m stfusion.cli prepare --root {params.root} --cache {params.cache} --workers {threads} "
        "--timing {output.timing} --log {log} --no-progress"
