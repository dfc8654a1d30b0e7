# Stage 8: ranking fidelity. Choose strategies spanning the score range (a checkpoint), train each from
# scratch (wildcard sid), then gather: Kendall tau / Spearman rho against supernet scores and log-probability.


checkpoint select_standalone:
    input:
        ranking=RANKING,
    output:
        table=SELECTION,
        markdown=SELECTION.replace(".csv", ".md"),
    params:
        values=stage_values("select_standalone"),
    log:
        "logs/select_standalone.log",
    conda:
        CONDA_ENV
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
        model=f"{STANDALONE_CKPT}/{{sid}}/model.pt",
    params:
        values=stage_values("train_standalone"),
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
        "logs/standalone/{sid}.log",
    conda:
        CONDA_ENV
    shell:
        "{params.launch} stfusion.cli train-standalone --strategy {wildcards.sid} --checkpoint {input.model} "
        "--cache {params.cache} --selection {input.selection} --ckpt-dir {params.ckpt_dir} "
        "--runs-dir {params.runs_dir} --threads {params.threads} --log {log} --no-progress"


rule validate_ranking:
    input:
        selection=SELECTION,
        ranking=RANKING,
        runs=lambda w: expand(f"{STANDALONE_RUNS}/{{sid}}.json", sid=selected_ids(w)),
    output:
        fidelity=FIDELITY,
        table=f"{VALIDATION}/standalone.csv",
        markdown=f"{VALIDATION}/standalone.md",
        plot=f"{VALIDATION}/ranking_fidelity.png",
        timing=f"{TIMING}/validate_ranking.json",
    params:
        runs_dir=dirname("runs"),
        out_dir=dirname("fidelity", "output"),
    log:
        "logs/validate_ranking.log",
    conda:
        CONDA_ENV
    shell:
        "python -m stfusion.cli validate-ranking --selection {input.selection} --runs-dir {params.runs_dir} "
        "--ranking {input.ranking} --out-dir {params.out_dir} --timing {output.timing} --log {log} --no-progress"
