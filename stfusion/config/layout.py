"""Where the pipeline's files live and which parameters each stage reads: light (no torch, no pandas), so that
the Snakemake rules (``workflow/rules/common.smk``), the CLI and the stages share one definition.

Every stage reads the parameters listed for it in :data:`STAGE_PARAMS` and nothing else: the CLI hands it a
*subset* of ``params.yaml`` holding only those keys, so a stage that reads an unlisted key fails loudly in the
tests instead of silently missing a dependency. The same lists feed the ``params:`` of the Snakemake rules (so a
rule reruns when one of its keys changes) and must match the ``params:`` of ``dvc.yaml`` (a test checks it).

The supernet checkpoint carries everything needed to rebuild the network (the ``model`` and ``gate`` sections it
was trained with, the class list), so stages after training read no model parameters.

Default layout (all paths can be changed on the command line)::

    data/builtin/                      generated benchmark (videos, annotations.csv, classes.csv)
    data/cache/                        prepared data (clip cache or videos/), manifest with splits, classes.csv, storage.json
    checkpoints/supernet/              model.pt, last.pt (resume), history.csv, drop_rates.csv
    checkpoints/finetune/<id>/         derived networks, finetuned
    checkpoints/standalone/<id>/       strategies trained from scratch
    results/strategies/                candidates.csv, ranking.csv
    results/analysis/                  network.csv/.md, preference.csv/.md, preference.png, scatter.png, drop_rates.png
    results/derived/strategies.csv     derived strategies
    results/finetune/                  runs/<id>.json, accuracy.csv/.md
    results/validation/                strategies.csv, runs/<id>.json, standalone.csv/.md, ranking_fidelity.json
    results/timing/<stage>.json        seconds per stage
    results/report.md, results/metrics.json (numbers only), results/versions.json (library versions)
    results/report/                    HTML tables, Pareto figures, confusion matrix, curves, drop-rate summary
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterable

# ----------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class RunLayout:
    """Every file of one run. Four roots (the only paths a user moves: ``--root``, ``--cache``, ``--checkpoints``,
    ``--results``); every file is named once, below them, as a property. Paths are strings relative to the
    working folder, as the Snakemake rules and ``dvc.yaml`` write them."""

    data_root: str = "data/builtin"  #: the generated benchmark (videos, annotations.csv, classes.csv)
    cache: str = "data/cache"  #: the prepared dataset: manifest, classes, storage record, clips or videos
    checkpoints: str = "checkpoints"
    results: str = "results"

    # prepared data
    @property
    def manifest(self) -> str:
        return f"{self.cache}/manifest.csv"

    @property
    def classes(self) -> str:
        return f"{self.cache}/classes.csv"

    @property
    def storage(self) -> str:
        return f"{self.cache}/storage.json"

    # supernet
    @property
    def supernet_dir(self) -> str:
        return f"{self.checkpoints}/supernet"

    @property
    def supernet(self) -> str:
        return f"{self.supernet_dir}/model.pt"

    @property
    def history(self) -> str:
        return f"{self.supernet_dir}/history.csv"

    @property
    def drop_rates(self) -> str:
        return f"{self.supernet_dir}/drop_rates.csv"

    @property
    def gate_stats(self) -> str:
        return f"{self.supernet_dir}/gate_stats.csv"

    # strategies and their analysis
    @property
    def candidates(self) -> str:
        return f"{self.results}/strategies/candidates.csv"

    @property
    def ranking(self) -> str:
        return f"{self.results}/strategies/ranking.csv"

    @property
    def analysis(self) -> str:
        return f"{self.results}/analysis"

    @property
    def preference(self) -> str:
        return f"{self.analysis}/preference.csv"

    @property
    def analysis_summary(self) -> str:
        return f"{self.analysis}/summary.json"

    # derived networks, finetuned
    @property
    def derived(self) -> str:
        return f"{self.results}/derived/strategies.csv"

    @property
    def finetune_ckpt(self) -> str:
        return f"{self.checkpoints}/finetune"

    @property
    def finetune_runs(self) -> str:
        return f"{self.results}/finetune/runs"

    @property
    def finetune_table(self) -> str:
        return f"{self.results}/finetune/accuracy.csv"

    # stand-alone validation of the default run
    @property
    def validation(self) -> str:
        return f"{self.results}/validation"

    @property
    def selection(self) -> str:
        return f"{self.validation}/strategies.csv"

    @property
    def standalone_ckpt(self) -> str:
        return f"{self.checkpoints}/standalone"

    @property
    def standalone_runs(self) -> str:
        return f"{self.validation}/runs"

    @property
    def standalone_table(self) -> str:
        return f"{self.validation}/standalone.csv"

    @property
    def fidelity(self) -> str:
        return f"{self.validation}/ranking_fidelity.json"

    # the ranking-fidelity study
    @property
    def fidelity_dir(self) -> str:
        return f"{self.results}/fidelity"

    @property
    def fidelity_ckpt(self) -> str:
        return f"{self.checkpoints}/fidelity"

    @property
    def fidelity_selection(self) -> str:
        return f"{self.fidelity_dir}/strategies.csv"

    @property
    def fidelity_runs(self) -> str:
        return f"{self.fidelity_dir}/runs"

    # records and the report
    @property
    def timing_dir(self) -> str:
        return f"{self.results}/timing"

    def timing(self, stage: str) -> str:
        return f"{self.timing_dir}/{stage}.json"

    @property
    def report(self) -> str:
        return f"{self.results}/report.md"

    @property
    def metrics(self) -> str:
        return f"{self.results}/metrics.json"

    @property
    def versions(self) -> str:
        return f"{self.results}/versions.json"

    @property
    def report_dir(self) -> str:
        return f"{self.results}/report"

    @property
    def export_dir(self) -> str:
        return f"{self.results}/export"

    # what the report reads besides the tables above
    @property
    def network(self) -> str:
        return f"{self.analysis}/network.csv"

    @property
    def preference_plot(self) -> str:
        return f"{self.analysis}/preference.png"

    @property
    def scatter_plot(self) -> str:
        return f"{self.analysis}/scatter.png"

    @property
    def drop_rates_plot(self) -> str:
        return f"{self.analysis}/drop_rates.png"

    @property
    def finetune_best_history(self) -> str:
        return f"{self.results}/finetune/best_history.csv"

    @property
    def finetune_best_predictions(self) -> str:
        return f"{self.results}/finetune/best_test_predictions.csv"

    @property
    def standalone_best_history(self) -> str:
        return f"{self.validation}/best_history.csv"

    @property
    def fidelity_plot(self) -> str:
        return f"{self.validation}/ranking_fidelity.png"

    @property
    def fidelity_study(self) -> str:
        return f"{self.fidelity_dir}/fidelity.json"

    @property
    def fidelity_summary(self) -> str:
        return f"{self.fidelity_dir}/fidelity.md"

    @property
    def fidelity_study_plot(self) -> str:
        return f"{self.fidelity_dir}/fidelity.png"


#: the standard layout (what ``snakemake`` and ``dvc repro`` use)
LAYOUT = RunLayout()

# the standard layout's files under their former names (to be replaced by LAYOUT's attributes)
DATA_ROOT = LAYOUT.data_root
CACHE = LAYOUT.cache
SUPERNET_DIR = LAYOUT.supernet_dir
SUPERNET = LAYOUT.supernet
FINETUNE_CKPT = LAYOUT.finetune_ckpt
STANDALONE_CKPT = LAYOUT.standalone_ckpt
RESULTS = LAYOUT.results
CANDIDATES = LAYOUT.candidates
RANKING = LAYOUT.ranking
ANALYSIS = LAYOUT.analysis
PREFERENCE = LAYOUT.preference
DERIVED = LAYOUT.derived
FINETUNE_RUNS = LAYOUT.finetune_runs
FINETUNE_TABLE = LAYOUT.finetune_table
VALIDATION = LAYOUT.validation
SELECTION = LAYOUT.selection
STANDALONE_RUNS = LAYOUT.standalone_runs
FIDELITY = LAYOUT.fidelity
TIMING = LAYOUT.timing_dir
REPORT = LAYOUT.report
METRICS = LAYOUT.metrics
VERSIONS = LAYOUT.versions
FIDELITY_DIR = LAYOUT.fidelity_dir
FIDELITY_CKPT = LAYOUT.fidelity_ckpt
FIDELITY_SELECTION = LAYOUT.fidelity_selection
FIDELITY_RUNS = LAYOUT.fidelity_runs
REPORT_DIR = LAYOUT.report_dir

# --------------------------------------------------------------------------------------- stage parameters
_DATA_LOADING = ["preset", "data.frames", "data.stride", "data.sampling", "data.size", "data.backend"]
#: the views of :func:`stfusion.data.transforms.view_from_params`: training, evaluation (validation, calibration,
#: and the input size costs are counted at), test
_TRAIN_VIEW = ["data.flip", "data.crop", "data.train_short_side", "data.max_decode_failures"]
_EVAL_VIEW = ["data.eval_crop", "data.eval_short_side"]
_TEST_VIEW = [*_EVAL_VIEW, "data.test_clips", "data.test_crops"]

#: where and how networks train (:func:`stfusion.engine.train.compute_settings`): read by every training stage
_COMPUTE = ["supernet.device", "supernet.precision", "supernet.channels_last", "supernet.loader_workers",
            "supernet.checkpoint_minutes", "supernet.gpus_per_node", "supernet.nodes", "supernet.max_restarts"]

#: The parameters each stage reads (dotted keys; a section name means the whole section). ``preset`` is listed
#: everywhere because a preset may set any section.
STAGE_PARAMS: dict[str, list[str]] = {
    "generate": ["seed", "preset", "data.builtin"],
    "prepare": [
        "seed", "preset", "data.dataset", "data.root", "data.annotations", "data.split", "data.backend",
        "data.size", "data.val_fraction", "data.calib_fraction", "data.workers", "data.builtin.frames",
        "data.frames", "data.stride", "data.storage", "data.cache_max_gb", "data.prepare", "data.short_side",
        "data.prepare_shards",
    ],
    "train_supernet": [
        "seed", *_DATA_LOADING, *_TRAIN_VIEW, *_EVAL_VIEW, "model", "gate.init_p", "gate.temperature", "gate.rescale",
        "gate.kl_k", "gate.kl_form", "gate.kl_price", "gate.kl_warmin_epochs", "gate.lr_scale", "gate.n_train",
        "supernet",
    ],
    "sample_strategies": ["seed", "preset", "gate.keep_prob", "scoring.n_samples", "scoring.top_k"],
    "score_strategies": [
        "seed", *_DATA_LOADING, *_TEST_VIEW, "supernet.device", "supernet.loader_workers", "scoring.recalibrate_bn",
        "scoring.calib_batches", "scoring.batch_size", "scoring.racing", "scoring.keep_top",
        "scoring.race_first_clips", "scoring.race_growth", "scoring.race_confidence",
    ],
    "analyze": ["preset", "gate.keep_prob"],
    "derive": ["preset", "derive.top_k", "derive.st_threshold"],
    "finetune": [
        "seed", *_DATA_LOADING, *_TRAIN_VIEW, *_TEST_VIEW, "supernet.momentum", "supernet.schedule", *_COMPUTE,
        "supernet.eval_every", "scoring.batch_size", "finetune",
    ],
    "select_standalone": ["preset", "validate.n_strategies"],
    "train_standalone": [
        "seed", *_DATA_LOADING, *_TRAIN_VIEW, *_TEST_VIEW, "supernet.momentum", "supernet.schedule", *_COMPUTE,
        "supernet.eval_every", "scoring.batch_size", "validate.epochs", "validate.lr", "validate.batch_size",
        "validate.weight_decay",
    ],
    "report": ["seed", "preset"],
    "select_fidelity": ["preset", "fidelity.n_strategies"],
    "fidelity": ["seed", "preset", "fidelity.seeds", "validate.epochs", "validate.lr", "validate.batch_size",
                 "validate.weight_decay"],
}
#: the fidelity study trains with the stand-alone budget, under every seed (stfusion.stages.fidelity)
STAGE_PARAMS["train_fidelity"] = [*STAGE_PARAMS["train_standalone"], "fidelity.seeds"]


def _get(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def subset(params: dict, keys: Iterable[str]) -> dict:
    """The part of ``params`` named by dotted ``keys`` (missing optional keys are left out)."""
    out: dict = {}
    for dotted in keys:
        try:
            value = _get(params, dotted)
        except KeyError:
            continue
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = copy.deepcopy(value)
    return out


def stage_params(params: dict, stage: str) -> dict:
    """The parameters ``stage`` may read (see :data:`STAGE_PARAMS`), keys sorted at every level (a canonical
    form: Snakemake compares the representation of a rule's parameters to decide on reruns)."""
    if stage not in STAGE_PARAMS:
        raise KeyError(f"unknown stage {stage!r}")
    return _sorted(subset(params, STAGE_PARAMS[stage]))


def _sorted(value):
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value
