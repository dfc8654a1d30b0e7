# Stages 6-7: derive strategies from the preferences (a checkpoint: the list decides the finetuning jobs), then
# one finetuning job per derived strategy (wildcard sid = the strategy's id) and a gather rule.


checkpoint derive:
    input:
        preference=PREFERENCE,
        ranking=RANKING,
        model=SUPERNET,
    output:
        table=DERIVED,
        markdown=DERIVED.replace(".csv", ".md"),
        timing=LAYOUT.timing("derive"),
    log:
        "logs/derive.log",
    conda:
        CONDA_ENV
    params:
        values=stage_values("derive"),
    shell:
        "python -m stfusion.cli derive --preference {input.preference} --ranking {input.ranking} "
        "--checkpoint {input.model} --out {output.table} --timing {output.timing} --log {log} --no-progress"


rule finetune:
    input:
        **CACHE_FILES,
        model=SUPERNET,
        derived=DERIVED,
    output:
        run=layout.run_file(FINETUNE_RUNS, "{sid}", "record"),
        history=layout.run_file(FINETUNE_RUNS, "{sid}", "history"),
        predictions=layout.run_file(FINETUNE_RUNS, "{sid}", "predictions"),
        model=f"{FINETUNE_CKPT}/{{sid}}/model.pt",
    log:
        "logs/finetune/{sid}.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **TRAIN_RESOURCES,
        mem_mb=4000,
        runtime=30,
    params:
        values=stage_values("finetune"),
        cache=dirname("manifest"),
        ckpt_dir=dirname("model", "output", up=2),
        runs_dir=dirname("run", "output"),
        launch=TRAIN_LAUNCH,
        threads=threads_per_process,
    shell:
        "{params.launch} stfusion.cli finetune --strategy {wildcards.sid} --checkpoint {input.model} "
        "--cache {params.cache} --derived {input.derived} --ckpt-dir {params.ckpt_dir} "
        "--runs-dir {params.runs_dir} --threads {params.threads} --log {log} --no-progress"


rule finetune_table:
    input:
        derived=DERIVED,
        ranking=RANKING,
        runs=lambda w: expand(layout.run_file(FINETUNE_RUNS, "{sid}", "record"), sid=derived_ids(w)),
        run_files=lambda w: expand(
            f"{FINETUNE_RUNS}/{{sid}}.{{kind}}.csv", sid=derived_ids(w), kind=["history", "predictions"]
        ),
    output:
        table=FINETUNE_TABLE,
        markdown=FINETUNE_TABLE.replace(".csv", ".md"),
        best_history=LAYOUT.finetune_best_history,
        best_predictions=LAYOUT.finetune_best_predictions,
        timing=LAYOUT.timing("finetune"),
    log:
        "logs/finetune_table.log",
    conda:
        CONDA_ENV
    params:
        runs_dir=dirname("runs"),
    shell:
        "python -m stfusion.cli finetune-table --derived {input.derived} --runs-dir {params.runs_dir} "
        "--ranking {input.ranking} --out {output.table} --timing {output.timing} --log {log} --no-progress"
