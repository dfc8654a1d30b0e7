# Stages 6-7: derive strategies from the preferences (a checkpoint: the list decides the finetuning jobs), then
# one finetuning job per derived strategy (wildcard sid = the strategy's id) and a gather rule.


checkpoint derive:
    input:
        preference=PREFERENCE,
        ranking=RANKING,
    output:
        table=DERIVED,
        markdown=DERIVED.replace(".csv", ".md"),
        timing=f"{TIMING}/derive.json",
    params:
        values=stage_values("derive"),
    log:
        "logs/derive.log",
    conda:
        CONDA_ENV
    shell:
        "python -m stfusion.cli derive --preference {input.preference} --ranking {input.ranking} "
        "--out {output.table} --timing {output.timing} --log {log} --no-progress"


rule finetune:
    input:
        **CACHE_FILES,
        model=SUPERNET,
        derived=DERIVED,
    output:
        run=f"{FINETUNE_RUNS}/{{sid}}.json",
        model=f"{FINETUNE_CKPT}/{{sid}}/model.pt",
    params:
        values=stage_values("finetune"),
        cache=dirname("manifest"),
        ckpt_dir=dirname("model", "output", up=2),
        runs_dir=dirname("run", "output"),
        launch=TRAIN_LAUNCH,
        threads=threads_per_process,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        **TRAIN_RESOURCES,
    log:
        "logs/finetune/{sid}.log",
    conda:
        CONDA_ENV
    shell:
        "{params.launch} stfusion.cli finetune --strategy {wildcards.sid} --checkpoint {input.model} "
        "--cache {params.cache} --derived {input.derived} --ckpt-dir {params.ckpt_dir} "
        "--runs-dir {params.runs_dir} --threads {params.threads} --log {log} --no-progress"


rule finetune_table:
    input:
        derived=DERIVED,
        ranking=RANKING,
        runs=lambda w: expand(f"{FINETUNE_RUNS}/{{sid}}.json", sid=derived_ids(w)),
    output:
        table=FINETUNE_TABLE,
        markdown=FINETUNE_TABLE.replace(".csv", ".md"),
        timing=f"{TIMING}/finetune.json",
    params:
        runs_dir=dirname("runs"),
    log:
        "logs/finetune_table.log",
    conda:
        CONDA_ENV
    shell:
        "python -m stfusion.cli finetune-table --derived {input.derived} --runs-dir {params.runs_dir} "
        "--ranking {input.ranking} --out {output.table} --timing {output.timing} --log {log} --no-progress"
