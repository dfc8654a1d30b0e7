# Shared helpers: output layout, the parameters each stage reads, the command that runs a stage.
import hashlib
import os
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

# The commands import stfusion from the project folder when it holds the package (a checkout, also inside a
# --use-conda environment), else the installed one (a folder written by `stfusion init`; under --use-conda the
# environment's): the layout and the per-stage parameter lists have one definition, in stfusion/config/layout.py.
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        [str(PROJECT_DIR)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
)

from stfusion.config import layout  # noqa: E402  (light: no torch / pandas at import)
from stfusion.config.loading import load_params  # noqa: E402
from stfusion.config.settings import Settings  # noqa: E402
from stfusion.data import storage as S  # noqa: E402  (light)
from stfusion.errors import StfusionError  # noqa: E402
from stfusion.engine import slurm  # noqa: E402  (light)

CONDA_ENV = "../envs/stfusion.yaml"


def one_line(call, *args):
    """`call(*args)`; a bad input (a wrong key, a missing dataset folder) ends the run with the one line the
    stfusion commands print, not a traceback."""
    try:
        return call(*args)
    except StfusionError as exc:
        sys.exit(f"stfusion: error: {exc}")


# The parameters in the order of precedence of every stfusion command: the packaged defaults < the preset <
# params.yaml < --configfile / --config. Rules and commands read this resolved configuration.
config.update(one_line(load_params, None, CONFIG_OVERRIDES))
SETTINGS = one_line(Settings.from_params, config)

# Every file of the run (stfusion/config/layout.py): the standard layout, read from the dataset folder data.root.
LAYOUT = layout.RunLayout(data_root=SETTINGS.data.root)
ROOT = LAYOUT.data_root
IS_BUILTIN = SETTINGS.data.dataset == "builtin"
CACHE = LAYOUT.cache
# The prepared dataset, whatever its storage: what every stage after `prepare` takes as input.
CACHE_FILES = {"manifest": LAYOUT.manifest, "classes": LAYOUT.classes, "storage": LAYOUT.storage}


def _storage(data):
    """`cache` or `videos`, decided as `stfusion prepare` decides (data.storage: auto reads the annotation list
    to count the videos; set it to cache or videos to skip that)."""
    explicit = data.storage != "auto"
    return S.choose(data, None if explicit else S.count_videos(data))["storage"]


STORAGE = one_line(_storage, SETTINGS.data)
PREPARE_SHARDS = SETTINGS.data.prepare_shards
# The supernet replicates: training, sampling, scoring and analysis run once per seed of `seeds` (wildcard
# `seed`, files of SEED), then pool_seeds writes the pooled ranking and preference where a single run has them
# (RANKING, PREFERENCE); the later stages read those, and start from the first seed's supernet (SUPERNET).
SEEDS = list(SETTINGS.seeds)
SEED = LAYOUT.of_seed("{seed}")
PRIMARY = LAYOUT.of_seed(SEEDS[0])
PER_SEED_STAGES = ("train_supernet", "sample_strategies", "score_strategies", "analyze")
# short names of the files many rules use (the others: LAYOUT.<file>)
SUPERNET = PRIMARY.supernet
RANKING = LAYOUT.ranking
PREFERENCE = LAYOUT.preference
DERIVED = LAYOUT.derived
FINETUNE_CKPT = LAYOUT.finetune_ckpt
FINETUNE_RUNS = LAYOUT.finetune_runs
FINETUNE_TABLE = LAYOUT.finetune_table
SELECTION = LAYOUT.selection
STANDALONE_CKPT = LAYOUT.standalone_ckpt
STANDALONE_RUNS = LAYOUT.standalone_runs
FIDELITY = LAYOUT.fidelity
REPORT = LAYOUT.report
METRICS = LAYOUT.metrics


def _params_file(cfg):
    """The parameters file the commands read: params.yaml itself, or, when --config / --configfile changed the
    configuration, a copy of the effective configuration named by its content. The commands find it through
    the environment variable STFUSION_PARAMS (the default of their --params option), so the file's name is not
    part of any rule's parameters and never triggers a rerun by itself."""
    on_disk = None
    if Path(PARAMS_FILE).is_file():
        with open(PARAMS_FILE) as f:
            on_disk = yaml.safe_load(f)
    if cfg == on_disk:
        return PARAMS_FILE
    # the preset's values are in the copy already: a command reading it must not apply the preset again
    text = yaml.safe_dump({**cfg, "preset": None}, sort_keys=False)
    path = Path(".snakemake") / "stfusion" / f"params-{hashlib.sha1(text.encode()).hexdigest()[:12]}.yaml"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return str(path)


os.environ.update(STFUSION_PARAMS=_params_file(config))


def dirname(key, io="input", up=1):
    """A params function: the folder of the named input (or output) file, `up` levels above the file (for a list
    of files, the first one's)."""

    def folder(wildcards, input, output):
        path = getattr(input if io == "input" else output, key)
        path = path if isinstance(path, str) else path[0]
        for _ in range(up):
            path = os.path.dirname(path)
        return path

    return folder


def prepare_inputs(wildcards):
    """The built-in benchmark's annotation files, or the user's dataset folder (and annotation file)."""
    if IS_BUILTIN:
        return {"annotations": LAYOUT.annotations, "classes": LAYOUT.dataset_classes}
    annotations = SETTINGS.data.annotations
    return {"root": ROOT, **({"annotations": annotations} if annotations else {})}


def stage_values(stage):
    """The values of the parameters `stage` reads: a rule's `params`, so it reruns when one of them changes."""
    return layout.stage_params(config, stage)


def seed_values(stage):
    """The values of the parameters a per-seed stage reads, with `seed` the job's replicate seed (its command
    runs with `--set seed={seed}`): a rule's `params`."""
    return lambda wildcards: layout.stage_params({**config, "seed": int(wildcards.seed)}, stage)


def other_seeds(pattern):
    """An input function: the file `pattern` (with `{seed}`) of every seed but the job's."""
    return lambda wildcards: [pattern.format(seed=s) for s in SEEDS if str(s) != wildcards.seed]


def _ids(table):
    import csv

    with open(table, newline="") as f:
        return [row["id"] for row in csv.DictReader(f)]


def derived_ids(wildcards):
    """The ids of the derived strategies (known once the `derive` checkpoint has run)."""
    return _ids(checkpoints.derive.get().output.table)


def in_report(name, caption, category, kind, label):
    """A file of the report folder, shown in the Snakemake report with its caption, category and labels."""
    return report(
        f"{LAYOUT.report_dir}/{name}",
        caption=f"../report/{caption}.rst",
        category=category,
        labels={"kind": kind, "name": label},
    )


wildcard_constraints:
    sid="[nstb]+",
    shard="[0-9]+",
    fseed=r"\d+",
    seed=r"\d+",


# ---------------------------------------------------------------------------------------------------- clusters
# What a job asks SLURM for beyond the profile's block (workflow/profiles/slurm): the GPUs and nodes of the
# networks' training and scoring come from compute.device, compute.gpus_per_node and compute.nodes; preparation's
# CPUs are its decoding processes (data.workers).
PREPARE_THREADS = SETTINGS.data.workers
GPUS_PER_NODE, NODES = SETTINGS.compute.gpus_per_node, SETTINGS.compute.nodes


def gpu_request(gpus):
    """The `gres` resource of `gpus` GPUs a node when the networks run on GPUs (compute.device not cpu)."""
    return {} if SETTINGS.compute.device == "cpu" else {"gres": f"gpu:{gpus}"}


TRAIN_RESOURCES = {"nodes": NODES, **gpu_request(GPUS_PER_NODE)}
SCORE_RESOURCES = gpu_request(1)


def check_cluster_requests(jobs):
    """Under the SLURM executor, before the first submission: every job's request fits its partition, or the run
    stops with one line naming the rule and the request (sbatch would refuse it, or SLURM would keep it pending
    for ever). Jobs known only after a checkpoint (finetune, train_standalone) ask as train_supernet does."""
    offers = {}
    for job in jobs:
        partition = job.resources.get("slurm_partition") or None
        if partition not in offers:
            offers[partition] = slurm.node_offers(partition)
        request = slurm.job_request(job.resources, job.threads)
        problem = slurm.request_problem(job.rule.name, request, offers[partition], partition)
        if problem:
            raise WorkflowError(problem)


def read_every_end():
    """snakemake-executor-plugin-slurm's status query, wrapped so that a job cancelled by a plain scancel or
    preempted without a requeue reads as failed (stfusion.engine.slurm.final_state): the run goes on, and
    `retries` resubmits the job (training resumes from its checkpoint), instead of waiting for ever."""
    import snakemake_executor_plugin_slurm as plugin

    query = getattr(plugin, "query_job_status", None)
    if query is None:
        raise WorkflowError(
            'the SLURM profile needs snakemake-executor-plugin-slurm >= 2.8: pip install "stfusion[slurm]" '
            '(in a checkout: pip install -e ".[slurm]")'
        )

    async def query_job_status(command, logger):
        states, seconds = await query(command, logger)
        return (states and {job: slurm.final_state(s) for job, s in states.items()}), seconds

    plugin.query_job_status = query_job_status


# under the SLURM executor (known once the run starts), before the first submission
onstart:
    if workflow.executor_plugin is not None and workflow.executor_plugin.name == "slurm":
        read_every_end()
        check_cluster_requests(workflow.dag.needrun_jobs())
