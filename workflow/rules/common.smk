# Shared helpers: output layout, the parameters each stage reads, the command that runs a stage.
import hashlib
import os
from pathlib import Path

import yaml

# The commands import stfusion from the project folder when it holds the package (a checkout; also inside a
# --use-conda environment, which holds only the dependencies), else the installed one: the layout and the
# per-stage parameter lists have one definition, in stfusion/config/layout.py.
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        [str(PROJECT_DIR)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
)

from stfusion.config import layout  # noqa: E402  (light: no torch / pandas at import)
from stfusion.data import storage as S  # noqa: E402  (light)
from stfusion.config.loading import apply_preset  # noqa: E402

CONDA_ENV = "../envs/stfusion.yaml"


def _resolve_preset(cfg):
    """A preset sets its dataset's protocol over params.yaml, and what --configfile / --config set explicitly wins
    over the preset. Rules and commands read this resolved configuration (`preset` null: already applied)."""
    if not cfg.get("preset"):
        return dict(cfg)
    from stfusion.config.loading import deep_merge

    def given(over, values):  # the (typed) values at the keys that --configfile / --config gave
        return {k: given(v, values[k]) if isinstance(v, dict) else values[k] for k, v in over.items()}

    explicit = given({k: v for k, v in workflow.config_settings.overwrite_config.items() if k != "preset"}, cfg)
    return {**deep_merge(apply_preset(dict(cfg)), explicit), "preset": None}


config.update(_resolve_preset(config))

# Every file of the run (stfusion/config/layout.py): the standard layout, read from the dataset folder data.root.
LAYOUT = layout.RunLayout(data_root=config["data"]["root"])
ROOT = LAYOUT.data_root
IS_BUILTIN = config["data"]["dataset"] == "builtin"
CACHE = LAYOUT.cache
# The prepared dataset, whatever its storage: what every stage after `prepare` takes as input.
CACHE_FILES = {"manifest": LAYOUT.manifest, "classes": LAYOUT.classes, "storage": LAYOUT.storage}


def _storage(cfg):
    """`cache` or `videos`, decided as `stfusion prepare` decides (data.storage: auto reads the annotation list
    to count the videos; set it to cache or videos to skip that)."""
    effective = apply_preset(dict(cfg))
    explicit = effective["data"].get("storage", "auto") != "auto"
    return S.choose(effective, None if explicit else S.count_videos(effective))["storage"]


STORAGE = _storage(config)
PREPARE_SHARDS = int(config["data"].get("prepare_shards", 1))
# short names of the files many rules use (the others: LAYOUT.<file>)
SUPERNET = LAYOUT.supernet
CANDIDATES = LAYOUT.candidates
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
    text = yaml.safe_dump(dict(cfg), sort_keys=False)
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
    annotations = config["data"].get("annotations")
    return {"root": ROOT, **({"annotations": annotations} if annotations else {})}


def stage_values(stage):
    """The values of the parameters `stage` reads: a rule's `params`, so it reruns when one of them changes."""
    return layout.stage_params(config, stage)


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


