# Stages 3-5, once per seed of `seeds` (wildcard seed): list strategies, score the union of every seed's lists
# with the seed's shared weights, analyse its probability space; then pool the seeds (stfusion/stages/pooling.py).


rule sample_strategies:
    input:
        model=SEED.supernet,
    output:
        table=SEED.candidates,
        timing=SEED.timing("sample_strategies"),
    log:
        "logs/sample_strategies/seed{seed}.log",
    conda:
        CONDA_ENV
    params:
        values=seed_values("sample_strategies"),
    shell:
        "python -m stfusion.cli sample-strategies --set seed={wildcards.seed} --checkpoint {input.model} "
        "--out {output.table} --timing {output.timing} --log {log} --no-progress"


rule score_strategies:
    input:
        **CACHE_FILES,
        model=SEED.supernet,
        candidates=SEED.candidates,
        union=other_seeds(SEED.candidates),
    output:
        ranking=SEED.ranking,
        timing=SEED.timing("score_strategies"),
    log:
        "logs/score_strategies/seed{seed}.log",
    conda:
        CONDA_ENV
    threads: 8
    resources:
        **SCORE_RESOURCES,
        mem_mb=8000,
        runtime=30,
    params:
        values=seed_values("score_strategies"),
        cache=dirname("manifest"),
        union=lambda wildcards, input: "".join(f" --union {p}" for p in input.union),
    shell:
        "python -m stfusion.cli score-strategies --set seed={wildcards.seed} --checkpoint {input.model} "
        "--cache {params.cache} --candidates {input.candidates}{params.union} --out {output.ranking} "
        "--threads {threads} --timing {output.timing} --log {log} --no-progress"


rule analyze:
    input:
        model=SEED.supernet,
        ranking=SEED.ranking,
        drop_rates=SEED.drop_rates,
        gate_stats=SEED.gate_stats,
    output:
        network=SEED.network,
        network_md=SEED.network.replace(".csv", ".md"),
        preference=SEED.preference,
        preference_md=SEED.preference.replace(".csv", ".md"),
        heatmap=SEED.preference_plot,
        scatter=report(
            SEED.scatter_plot,
            caption="../report/scatter.rst",
            category="2. Strategies",
            labels={"kind": "figure", "name": "log-probability vs score", "seed": "{seed}"},
        ),
        drop_rates=report(
            SEED.drop_rates_plot,
            caption="../report/drop_rates.rst",
            category="1. Probability space",
            labels={"kind": "figure", "name": "drop rates", "seed": "{seed}"},
        ),
        summary=SEED.analysis_summary,
        timing=SEED.timing("analyze"),
    log:
        "logs/analyze/seed{seed}.log",
    conda:
        CONDA_ENV
    params:
        values=seed_values("analyze"),
        out_dir=dirname("preference", "output"),
    shell:
        "python -m stfusion.cli analyze --set seed={wildcards.seed} --checkpoint {input.model} "
        "--ranking {input.ranking} --drop-rates {input.drop_rates} --gate-stats {input.gate_stats} "
        "--out-dir {params.out_dir} --timing {output.timing} --log {log} --no-progress"


rule pool_seeds:
    input:
        rankings=expand(SEED.ranking, seed=SEEDS),
        preferences=expand(SEED.preference, seed=SEEDS),
        summaries=expand(SEED.analysis_summary, seed=SEEDS),
    output:
        ranking=RANKING,
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
            labels={"kind": "figure", "name": "log-probability vs score, pooled"},
        ),
        network=LAYOUT.network,
        network_md=LAYOUT.network.replace(".csv", ".md"),
        summary=LAYOUT.analysis_summary,
        stability=LAYOUT.stability,
        stability_md=LAYOUT.stability.replace(".json", ".md"),
        timing=LAYOUT.timing("pool_seeds"),
    log:
        "logs/pool_seeds.log",
    conda:
        CONDA_ENV
    params:
        values=stage_values("pool_seeds"),
        results=dirname("ranking", "output", up=2),
    shell:
        "python -m stfusion.cli pool-seeds --results {params.results} --timing {output.timing} --log {log} "
        "--no-progress"
