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
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    log:
        "logs/standalone/{sid}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m stfusion.cli train-standalone --strategy {wildcards.sid} --checkpoint {input.model} "
        "--cache {params.cache} --selection {input.selection} --ckpt-dir {params.ckpt_dir} "
        "--runs-dir {params.runs_dir} --threads {threads} --log {log} --no-progress"


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


# The ranking-fidelity study, its own target (`snakemake --cores all fidelity`): fidelity.n_strategies
# strategies stratified over the score range (a checkpoint), each trained from scratch under fidelity.seeds
# seeds (wildcards sid, fseed), then the statistics (stfusion/fidelity.py). Not part of `all`.
FIDELITY_DIR = "results/fidelity"
FIDELITY_SELECTION = f"{FIDELITY_DIR}/strategies.csv"


wildcard_constraints:
    fseed=r"\d+",


checkpoint select_fidelity:
    input:
        ranking=RANKING,
    output:
        table=FIDELITY_SELECTION,
        markdown=FIDELITY_SELECTION.replace(".csv", ".md"),
    params:
        values=stage_values("select_fidelity"),
    log:
        "logs/select_fidelity.log",
    conda:
        CONDA_ENV
    shell:
        "python -m stfusion.cli select-fidelity --ranking {input.ranking} --out {output.table} "
        "--log {log} --no-progress"


rule train_fidelity:
    input:
        **CACHE_FILES,
        model=SUPERNET,
        selection=FIDELITY_SELECTION,
    output:
        run=f"{FIDELITY_DIR}/runs/seed{{fseed}}/{{sid}}.json",
        model=f"checkpoints/fidelity/seed{{fseed}}/{{sid}}/model.pt",
    params:
        values=stage_values("train_standalone"),
        cache=dirname("manifest"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    log:
        "logs/fidelity/seed{fseed}/{sid}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m stfusion.cli train-fidelity --strategy {wildcards.sid} --seed-index {wildcards.fseed} "
        "--checkpoint {input.model} --cache {params.cache} --selection {input.selection} "
        "--ckpt-dir checkpoints/fidelity --runs-dir {FIDELITY_DIR}/runs --threads {threads} --log {log} --no-progress"


def fidelity_runs(wildcards):
    ids = _ids(checkpoints.select_fidelity.get().output.table)
    seeds = range(int(config["fidelity"]["seeds"]))
    return [f"{FIDELITY_DIR}/runs/seed{j}/{sid}.json" for j in seeds for sid in ids]


rule fidelity:
    input:
        selection=FIDELITY_SELECTION,
        ranking=RANKING,
        runs=fidelity_runs,
    output:
        study=f"{FIDELITY_DIR}/fidelity.json",
        summary=f"{FIDELITY_DIR}/fidelity.md",
        table=f"{FIDELITY_DIR}/table.csv",
        plot=f"{FIDELITY_DIR}/fidelity.png",
        timing=f"{FIDELITY_DIR}/timing.json",
    params:
        values=stage_values("fidelity"),
    log:
        "logs/fidelity.log",
    conda:
        CONDA_ENV
    shell:
        "python -m stfusion.cli fidelity --selection {input.selection} --runs-dir {FIDELITY_DIR}/runs "
        "--ranking {input.ranking} --out-dir {FIDELITY_DIR} --timing {output.timing} --log {log} --no-progress"
