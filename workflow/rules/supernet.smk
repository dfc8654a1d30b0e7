# Stage 2: the template network trained with Variational DropPath. OUT/last.pt is deliberately not an output:
# a killed job resumes from it (Snakemake deletes a failed job's outputs, never last.pt).


rule train_supernet:
    input:
        **CACHE_FILES,
    output:
        model=SUPERNET,
        history=f"{SUPERNET_DIR}/history.csv",
        drop_rates=f"{SUPERNET_DIR}/drop_rates.csv",
        timing=f"{TIMING}/train_supernet.json",
    log:
        "logs/train_supernet.log",
    conda:
        CONDA_ENV
    threads: 8
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        values=stage_values("train_supernet"),
        cache=dirname("manifest"),
        out=dirname("model", "output"),
    shell:
        "python -m stfusion.cli train-supernet --cache {params.cache} --out {params.out} --threads {threads} "
        "--timing {output.timing} --log {log} --no-progress"
