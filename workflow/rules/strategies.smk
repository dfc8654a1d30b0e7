# Stages 3-5: list strategies, score them with the shared weights, analyse the probability space.


rule sample_strategies:
    input:
        model=SUPERNET,
    output:
        table=CANDIDATES,
        timing=f"{TIMING}/sample_strategies.json",
    log:
        "logs/sample_strategies.log",
    conda:
        CONDA_ENV
    params:
        values=stage_values("sample_strategies"),
    shell:
        "python -m stfusion.cli sample-strategies --checkpoint {input.model} --out {output.table} "
        "--timing {output.timing} --log {log} --no-progress"


rule score_strategies:
    input:
        **CACHE_FILES,
        model=SUPERNET,
        candidates=CANDIDATES,
    output:
        ranking=RANKING,
        timing=f"{TIMING}/score_strategies.json",
    log:
        "logs/score_strategies.log",
    conda:
        CONDA_ENV
    threads: 8
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        values=stage_values("score_strategies"),
        cache=dirname("manifest"),
    shell:
        "python -m stfusion.cli score-strategies --checkpoint {input.model} --cache {params.cache} "
        "--candidates {input.candidates} --out {output.ranking} --threads {threads} --timing {output.timing} "
        "--log {log} --no-progress"


rule analyze:
    input:
        model=SUPERNET,
        ranking=RANKING,
        drop_rates=f"{SUPERNET_DIR}/drop_rates.csv",
    output:
        network=f"{ANALYSIS}/network.csv",
        network_md=f"{ANALYSIS}/network.md",
        preference=PREFERENCE,
        preference_md=f"{ANALYSIS}/preference.md",
        heatmap=report(
            f"{ANALYSIS}/preference.png",
            caption="../report/preference_heatmap.rst",
            category="1. Probability space",
            labels={"kind": "figure", "name": "preference heatmap"},
        ),
        scatter=report(
            f"{ANALYSIS}/scatter.png",
            caption="../report/scatter.rst",
            category="2. Strategies",
            labels={"kind": "figure", "name": "log-probability vs score"},
        ),
        drop_rates=report(
            f"{ANALYSIS}/drop_rates.png",
            caption="../report/drop_rates.rst",
            category="1. Probability space",
            labels={"kind": "figure", "name": "drop rates"},
        ),
        summary=f"{ANALYSIS}/summary.json",
        timing=f"{TIMING}/analyze.json",
    log:
        "logs/analyze.log",
    conda:
        CONDA_ENV
    params:
        values=stage_values("analyze"),
        out_dir=dirname("preference", "output"),
    shell:
        "python -m stfusion.cli analyze --checkpoint {input.model} --ranking {input.ranking} "
        "--drop-rates {input.drop_rates} --out-dir {params.out_dir} --timing {output.timing} --log {log} "
        "--no-progress"
