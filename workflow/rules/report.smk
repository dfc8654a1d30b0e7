# Stage 9: the report a person reads first, and the scalar metrics.


rule report:
    input:
        **CACHE_FILES,
        history=f"{SUPERNET_DIR}/history.csv",
        ranking=RANKING,
        preference=PREFERENCE,
        network=f"{ANALYSIS}/network.csv",
        derived=DERIVED,
        finetune=FINETUNE_TABLE,
        fidelity=FIDELITY,
        standalone=f"{VALIDATION}/standalone.csv",
        timing=lambda w: [
            f"{TIMING}/{s}.json"
            for s in (["generate"] if IS_BUILTIN else [])
            + ["prepare", "train_supernet", "sample_strategies", "score_strategies", "analyze", "derive",
               "finetune", "validate_ranking"]
        ],
    output:
        report=REPORT,
        metrics=METRICS,
    params:
        values=stage_values("report"),
        results=dirname("report", "output"),
        checkpoint_dir=dirname("history"),
        cache=dirname("manifest"),
    log:
        "logs/report.log",
    conda:
        CONDA_ENV
    shell:
        "python -m stfusion.cli report --results {params.results} "
        "--checkpoint-dir {params.checkpoint_dir} --cache {params.cache} --out {output.report} "
        "--metrics {output.metrics} --log {log} --no-progress"
