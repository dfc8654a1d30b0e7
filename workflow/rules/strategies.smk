# Stages 3-5: list strategies, score them with the shared weights, analyse the probability space.


rule sample_strategies:
    input:
        model=SUPERNET,
    output:
        table=CANDIDATES,
        timing=LAYOUT.timing("sample_strategies"),
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
        timing=LAYOUT.timing("score_strategies"),
    log:
        "logs/score_strategies.log",
    conda:
        CONDA_ENV
    threads: 8
    resources:
        **SCORE_RESOURCES,
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
        drop_rates=LAYOUT.drop_rates,
        gate_stats=LAYOUT.gate_stats,
    output:
        network=LAYOUT.network,
        network_md=LAYOUT.network.replace(".csv", ".md"),
        preference=PREFERENCE,
        preference_md=PREFERENCE.replace(".csv", ".md"),
        heatmap=report(
            LAYOUT.preference_plot,
            caption="../report/preference_heatmap.rst",
            category="1. Probability space",
            labels={"kind": "figure", "name": "preference heatmap"},
        ),
        scatter=report(
            LAYOUT.scatter_plot,
            caption="../report/scatter.rst",
            category="2. Strategies",
            labels={"kind": "figure", "name": "log-probability vs score"},
        ),
        drop_rates=report(
            LAYOUT.drop_rates_plot,
            caption="../report/drop_rates.rst",
            category="1. Probability space",
            labels={"kind": "figure", "name": "drop rates"},
        ),
        summary=LAYOUT.analysis_summary,
        timing=LAYOUT.timing("analyze"),
    log:
        "logs/analyze.log",
    conda:
        CONDA_ENV
    params:
        values=stage_values("analyze"),
        out_dir=dirname("preference", "output"),
    shell:
        "python -m stfusion.cli analyze --checkpoint {input.model} --ranking {input.ranking} "
        "--drop-rates {input.drop_rates} --gate-stats {input.gate_stats} --out-dir {params.out_dir} "
        "--timing {output.timing} --log {log} --no-progress"
