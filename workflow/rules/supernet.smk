# Stage 2: the template network trained with Variational DropPath, once per seed of `seeds` (wildcard seed). OUT/last.pt is deliberately not an output:
# a killed or preempted job resumes from it (Snakemake deletes a failed job's outputs, never last.pt).
#
# Every training rule (this one, finetune, train_standalone) starts its command with TRAIN_LAUNCH: one process,
# or torchrun over compute.nodes x compute.gpus_per_node processes (stfusion/engine/launch.py), and asks SLURM for
# the matching nodes and GPUs per node (TRAIN_RESOURCES, common.smk). A training command stopped by SIGTERM or
# SIGUSR1 checkpoints and exits with status 75; in a SLURM job, the job then requeues itself
# (stfusion/engine/slurm.py) and resumes from the checkpoint under the same job id.
import signal

from stfusion.engine.launch import launch_prefix

if os.environ.get("SLURM_JOB_ID"):
    # SLURM's warning signal reaches every process of the job step: this job's own snakemake and its shell
    # ignore it (and pass that on to the command); the training processes install their own handler
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)

TRAIN_LAUNCH = launch_prefix(GPUS_PER_NODE, NODES, SETTINGS.compute.max_restarts)
# the job's threads, shared by the training processes of one node
threads_per_process = lambda wildcards, threads: max(1, threads // GPUS_PER_NODE)  # noqa: E731


rule train_supernet:
    input:
        **CACHE_FILES,
    output:
        model=SEED.supernet,
        history=SEED.history,
        drop_rates=SEED.drop_rates,
        gate_stats=SEED.gate_stats,
        timing=SEED.timing("train_supernet"),
    log:
        "logs/train_supernet/seed{seed}.log",
    conda:
        CONDA_ENV
    threads: 8
    resources:
        **TRAIN_RESOURCES,
        mem_mb=8000,
        runtime=60,
    params:
        values=seed_values("train_supernet"),
        cache=dirname("manifest"),
        out=dirname("model", "output"),
        launch=TRAIN_LAUNCH,
        threads=threads_per_process,
    shell:
        "{params.launch} stfusion.cli train-supernet --set seed={wildcards.seed} --cache {params.cache} "
        "--out {params.out} --threads {params.threads} --timing {output.timing} --log {log} --no-progress"
