# Stage 9: the report a person reads first, the scalar metrics, and the tables and figures of the Snakemake
# report (`snakemake --report results/report.zip`).


rule report:
    input:
        **CACHE_FILES,
        history=PRIMARY.history,
        drop_rates=PRIMARY.drop_rates,
        ranking=RANKING,
        preference=PREFERENCE,
        network=LAYOUT.network,
        stability=LAYOUT.stability,
        seed_rankings=expand(SEED.ranking, seed=SEEDS),
        seed_analyses=expand(SEED.analysis_summary, seed=SEEDS),
        derived=DERIVED,
        finetune=FINETUNE_TABLE,
        finetune_best=LAYOUT.finetune_best_history,
        finetune_predictions=LAYOUT.finetune_best_predictions,
        fidelity=FIDELITY,
        standalone=LAYOUT.standalone_table,
        standalone_best=LAYOUT.standalone_best_history,
        timing=lambda w: [
            LAYOUT.timing(s)
            for s in (["generate"] if IS_BUILTIN else [])
            + ["prepare", "pool_seeds", "derive", "finetune", "validate_ranking"]
        ]
        + [LAYOUT.of_seed(seed).timing(s) for s in PER_SEED_STAGES for seed in SEEDS],
    output:
        report=REPORT,
        metrics=METRICS,
        versions=LAYOUT.versions,
        ranking=in_report("ranking.html", "ranking", "2. Strategies", "table", "ranking"),
        network=in_report("network.html", "network", "2. Strategies", "table", "network level"),
        pareto_network=in_report(
            "pareto_network.png", "pareto_network", "2. Strategies", "figure", "network level: accuracy vs MACs"
        ),
        preference=in_report("preference.html", "preference", "1. Probability space", "table", "preference"),
        drop_rate_summary=f"{LAYOUT.report_dir}/drop_rates.csv",
        derived=in_report("derived.html", "derived", "3. Derived networks", "table", "derived"),
        finetune=in_report("finetune.html", "finetune", "3. Derived networks", "table", "finetune accuracy"),
        pareto_derived=in_report(
            "pareto_derived.png", "pareto_derived", "3. Derived networks", "figure", "derived: accuracy vs MACs"
        ),
        confusion=in_report("confusion.png", "confusion", "3. Derived networks", "figure", "confusion matrix"),
        standalone=in_report("standalone.html", "standalone", "4. Ranking fidelity", "table", "stand-alone"),
        curves=in_report("curves.png", "curves", "5. Training", "figure", "training and validation curves"),
    log:
        "logs/report.log",
    conda:
        CONDA_ENV
    params:
        values=stage_values("report"),
        results=dirname("report", "output"),
        checkpoint_dir=dirname("history", up=2),
        cache=dirname("manifest"),
    shell:
        "python -m stfusion.cli report --results {params.results} "
        "--checkpoint-dir {params.checkpoint_dir} --cache {params.cache} --out {output.report} "
        "--metrics {output.metrics} --log {log} --no-progress"
