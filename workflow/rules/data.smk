# Stage 1: the data. The built-in benchmark is generated (rule generate_builtin); a real dataset is read from
# data.root. Either way `prepare` writes the prepared dataset with train/val/test splits: the clip cache (one
# job) or, for videos storage, one prepared file per video (one job a shard, then a merge).

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


if STORAGE == "cache":

    rule prepare:
        input:
            unpack(prepare_inputs),
        output:
            **CACHE_FILES,
            clips=f"{CACHE}/clips.npy",
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

else:
    # videos storage: one job a shard (SLURM spreads them over nodes), then the merge. A shard job that is
    # killed and run again redoes only the videos it had not finished (the journal in CACHE/shards).

    rule prepare_shard:
        input:
            unpack(prepare_inputs),
        output:
            manifest=f"{CACHE}/shards/manifest-{{shard}}-of-{PREPARE_SHARDS}.csv",
            timing=f"{CACHE}/shards/timing-{{shard}}-of-{PREPARE_SHARDS}.json",
        log:
            f"logs/prepare/shard-{{shard}}-of-{PREPARE_SHARDS}.log",
        conda:
            CONDA_ENV
        threads: 4
        params:
            values=stage_values("prepare"),
            root=lambda w, input: os.path.dirname(input.annotations) if IS_BUILTIN else input.root,
            cache=CACHE,
            shards=PREPARE_SHARDS,
        shell:
            "python -m stfusion.cli prepare --shard {wildcards.shard}/{params.shards} --root {params.root} "
            "--cache {params.cache} --workers {threads} --timing {output.timing} --log {log} --no-progress"

    rule prepare:
        input:
            unpack(prepare_inputs),
            shards=expand(f"{CACHE}/shards/manifest-{{shard}}-of-{PREPARE_SHARDS}.csv", shard=range(PREPARE_SHARDS)),
        output:
            **CACHE_FILES,
            timing=f"{TIMING}/prepare.json",
        log:
            "logs/prepare.log",
        conda:
            CONDA_ENV
        params:
            values=stage_values("prepare"),
            root=lambda w, input: os.path.dirname(input.annotations) if IS_BUILTIN else input.root,
            cache=dirname("manifest", "output"),
            shards=PREPARE_SHARDS,
        shell:
            "python -m stfusion.cli prepare --merge {params.shards} --root {params.root} --cache {params.cache} "
            "--timing {output.timing} --log {log} --no-progress"
