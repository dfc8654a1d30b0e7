# Stage 1: the data. The built-in benchmark is generated (rule generate_builtin); a real dataset is read from
# data.root. Either way `prepare` writes the prepared dataset with train/val/test splits: the clip cache (one
# job) or, for videos storage, one prepared file per video (one job a shard, then a merge).

if IS_BUILTIN:

    rule generate_builtin:
        output:
            annotations=LAYOUT.annotations,
            classes=LAYOUT.dataset_classes,
            timing=LAYOUT.timing("generate"),
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
            clips=LAYOUT.clips,
            timing=LAYOUT.timing("prepare"),
        log:
            "logs/prepare.log",
        conda:
            CONDA_ENV
        threads: PREPARE_THREADS
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
            manifest=LAYOUT.shard_manifest("{shard}", PREPARE_SHARDS),
            timing=LAYOUT.shard_timing("{shard}", PREPARE_SHARDS),
        log:
            f"logs/prepare/shard-{{shard}}-of-{PREPARE_SHARDS}.log",
        conda:
            CONDA_ENV
        threads: PREPARE_THREADS
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
            shards=[LAYOUT.shard_manifest(i, PREPARE_SHARDS) for i in range(PREPARE_SHARDS)],
        output:
            **CACHE_FILES,
            timing=LAYOUT.timing("prepare"),
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
