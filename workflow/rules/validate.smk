# Stage 8: ranking fidelity. Choose strategies spanning the score range (a checkpoint), train each from
# scratch (wildcard sid), then gather: Kendall tau / Spearman rho against supernet scores and log-probability.


checkpoint select_standalone:
    input:
        ranking=RANKING,
    output:
        table=SELECTION,
        markdown=SELECTION.replace(".csv", ".md"),
    log:
        "logs/select_standalone.log",
    conda:
        CONDA_ENV
    params:
        values=stage_values("select_standalone"),
    shell:
        "python -m stfusion.cli select-standalone --ranking {input.ranking} --out {output.table} "
        "--log {log} --no-progress"


rule train_standalone:
    input:
        **CACHE_FILES,
        model=SUPERNET,
        selection=SELECTION,
    output:
        run=f"{STANDALONE_RUNS}/{{sid}}.json",
        history=f"{STANDALONE_RUNS}/{{sid}}.history.csv",
        predictions=f"{STANDALONE_RUNS}/{{sid}}.predictions.csv",
        model=f"{STANDALONE_CKPT}/{{sid}}/model.pt",
    log:
        "logs/standalone/{sid}.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **TRAIN_RESOURCES,
        mem_mb=4000,
        runtime=30,
    params:
        values=stage_values("train_standalone"),
        cache=dirname("manifest"),
        ckpt_dir=dirname("model", "output", up=2),
        runs_dir=dirname("run", "output"),
        launch=TRAIN_LAUNCH,
        threads=threads_per_process,
    shell:
        "{params.launch} stfusion.cli train-standalone --strategy {wildcards.sid} --checkpoint {input.model} "
        "--cache {params.cache} --selection {input.selection} --ckpt-dir {params.ckpt_dir} "
        "--runs-dir {params.runs_dir} --threads {params.threads} --log {log} --no-progress"


rule validate_ranking:
    input:
        selection=SELECTION,
        ranking=RANKING,
        runs=lambda w: expand(f"{STANDALONE_RUNS}/{{sid}}.json", sid=selected_ids(w)),
        run_files=lambda w: expand(
            f"{STANDALONE_RUNS}/{{sid}}.{{kind}}.csv", sid=selected_ids(w), kind=["history", "predictions"]
        ),
    output:
        fidelity=FIDELITY,
        table=LAYOUT.standalone_table,
        markdown=LAYOUT.standalone_table.replace(".csv", ".md"),
        plot=report(
            LAYOUT.fidelity_plot,
            caption="../report/fidelity.rst",
            category="4. Ranking fidelity",
            labels={"kind": "figure", "name": "supernet score vs stand-alone accuracy"},
        ),
        best_history=LAYOUT.standalone_best_history,
        best_predictions=LAYOUT.standalone_best_predictions,
        timing=LAYOUT.timing("validate_ranking"),
    log:
        "logs/validate_ranking.log",
    conda:
        CONDA_ENV
    params:
        runs_dir=dirname("runs"),
        out_dir=dirname("fidelity", "output"),
    shell:
        "python -m stfusion.cli validate-ranking --selection {input.selection} --runs-dir {params.runs_dir} "
        "--ranking {input.ranking} --out-dir {params.out_dir} --timing {output.timing} --log {log} --no-progress"


# The ranking-fidelity study, its own target (`snakemake --cores all fidelity`): fidelity.n_strategies
# strategies stratified over the score range (a checkpoint), each trained from scratch under fidelity.seeds
# seeds (wildcards sid, fseed), then the statistics (stfusion/analysis/fidelity.py). Not part of `all`.
checkpoint select_fidelity:
    input:
        ranking=RANKING,
    output:
        table=FIDELITY_SELECTION,
        markdown=FIDELITY_SELECTION.replace(".csv", ".md"),
    log:
        "logs/select_fidelity.log",
    conda:
        CONDA_ENV
    params:
        values=stage_values("select_fidelity"),
    shell:
        "python -m stfusion.cli select-fidelity --ranking {input.ranking} --out {output.table} "
        "--log {log} --no-progress"


rule train_fidelity:
    input:
        **CACHE_FILES,
        model=SUPERNET,
        selection=FIDELITY_SELECTION,
    output:
        run=f"{FIDELITY_RUNS}/seed{{fseed}}/{{sid}}.json",
        model=f"{FIDELITY_CKPT}/seed{{fseed}}/{{sid}}/model.pt",
    log:
        "logs/fidelity/seed{fseed}/{sid}.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        values=stage_values("train_fidelity"),
        cache=dirname("manifest"),
        ckpt_dir=dirname("model", "output", up=3),
        runs_dir=dirname("run", "output", up=2),
    shell:
        "python -m stfusion.cli train-fidelity --strategy {wildcards.sid} --seed-index {wildcards.fseed} "
        "--checkpoint {input.model} --cache {params.cache} --selection {input.selection} "
        "--ckpt-dir {params.ckpt_dir} --runs-dir {params.runs_dir} --threads {threads} --log {log} --no-progress"


rule fidelity:
    input:
        selection=FIDELITY_SELECTION,
        ranking=RANKING,
        runs=fidelity_runs,
    output:
        study=LAYOUT.fidelity_study,
        summary=LAYOUT.fidelity_summary,
        table=LAYOUT.fidelity_table,
        plot=LAYOUT.fidelity_study_plot,
        timing=LAYOUT.fidelity_timing,
    log:
        "logs/fidelity.log",
    conda:
        CONDA_ENV
    params:
        values=stage_values("fidelity"),
        runs_dir=dirname("runs", up=2),
        out_dir=dirname("study", "output"),
    shell:
        "python -m stfusion.cli fidelity --selection {input.selection} --runs-dir {params.runs_dir} "
        "--ranking {input.ranking} --out-dir {params.out_dir} --timing {output.timing} --log {log} --no-progress"
