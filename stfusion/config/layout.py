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
    checkpoints/supernet/              model.pt, last.pt (resume), history.csv, drop_rates.csv, gate_stats.csv
    checkpoints/supernet/seed<s>/      the same for supernet replicate seed s (the workflow: one a value of `seeds`)
    checkpoints/finetune/<id>/         derived networks, finetuned
    checkpoints/standalone/<id>/       strategies trained from scratch (the ranking-fidelity check)
    checkpoints/fidelity/seed<j>/<id>/ the same for the ranking-fidelity study, a folder a seed index
    results/strategies/                candidates.csv, ranking.csv (the workflow: the ranking pooled over the seeds)
    results/analysis/                  network.csv/.md, preference.csv/.md, preference.png, scatter.png, drop_rates.png
                                       (the workflow: pooled, with stability.json|md)
    results/seeds/candidates/          seed<s>.csv: the strategies replicate seed s lists
    results/seeds/seed<s>/             ranking.csv (its scores of the union of the seeds' lists), analysis/
    results/derived/strategies.csv     derived strategies
    results/finetune/                  runs/<id>.json, accuracy.csv/.md
    results/validation/                strategies.csv, runs/<id>.json, standalone.csv/.md, ranking_fidelity.json|md|png
    results/fidelity/                  the study: strategies.csv, runs/seed<j>/<id>.json, table.csv/.md, fidelity.json|md|png
    results/timing/<stage>.json        seconds per stage
    results/report.md, results/metrics.json (numbers only), results/versions.json (library versions)
    results/report/                    HTML tables, Pareto figures, confusion matrix, curves, drop-rate summary
    results/export/, results/compare/  deployable networks (stfusion export), tables across runs (stfusion compare)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

# ----------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class FidelityStudy:
    """One ranking-fidelity study (:mod:`stfusion.stages.fidelity`). The default run's check and the study proper
    are two of them and differ only here: ``section`` sets ``n_strategies`` and, with ``several_seeds``, the
    number of ``seeds`` (each seed index ``j`` then has its own folder, :func:`seed_folder`, below the run records
    and the checkpoints; else seed index 0 writes into those folders themselves); ``select``, ``train`` and
    ``gather`` name its stages (Snakemake rules, DVC stages, :data:`STAGE_PARAMS` keys; the ``stfusion``
    commands are the same names with dashes); the rest names the files of its output folder."""

    section: str
    select: str
    train: str
    gather: str
    several_seeds: bool
    table: str  #: selection, supernet scores, stand-alone accuracies (CSV, and Markdown beside it)
    result: str  #: every statistic (JSON)
    figure: str
    summary: str  #: the statistics in words (Markdown)

    @staticmethod
    def command(stage: str) -> str:
        """The ``stfusion`` subcommand of one of its stages."""
        return stage.replace("_", "-")

    def seeds(self, settings) -> list[int]:
        """Its seed indices under :class:`~stfusion.config.settings.Settings`: ``0 .. <section>.seeds - 1`` with
        several seeds, else ``[0]``."""
        return list(range(getattr(settings, self.section).seeds)) if self.several_seeds else [0]


#: the default run's check, part of every run (results/validation/, checkpoints/standalone/)
FIDELITY_CHECK = FidelityStudy("standalone", "select_standalone", "train_standalone", "validate_ranking", False,
                               "standalone.csv", "ranking_fidelity.json", "ranking_fidelity.png",
                               "ranking_fidelity.md")
#: the study, its own target (results/fidelity/, checkpoints/fidelity/)
FIDELITY_STUDY = FidelityStudy("fidelity", "select_fidelity", "train_fidelity", "fidelity", True, "table.csv",
                               "fidelity.json", "fidelity.png", "fidelity.md")


def seed_folder(folder: str, seed_index) -> str:
    """The folder of seed index ``j``'s run records or checkpoints in a study with several seeds."""
    return f"{folder}/seed{seed_index}"


@dataclass(frozen=True)
class RunLayout:
    """Every file of one run, named once, below four roots, as a property. Paths are strings relative to the
    working folder, as the Snakemake rules and ``dvc.yaml`` write them. :data:`LAYOUT` is the standard layout
    (the defaults of the commands' path options); ``RunLayout(cache=folder)`` names the files of a cache moved
    to ``folder`` (likewise the other roots)."""

    data_root: str = "data/builtin"  #: the generated benchmark (videos, annotations.csv, classes.csv)
    cache: str = "data/cache"  #: the prepared dataset: manifest, classes, storage record, clips or videos
    checkpoints: str = "checkpoints"
    results: str = "results"
    #: the supernet replicate (a seed, or a wildcard such as ``{seed}``) whose supernet, strategy lists and
    #: analysis these are (:meth:`of_seed`); None: the single run's, or the pooled ones of the workflow
    replicate: str | None = None

    def of_seed(self, seed: int | str) -> RunLayout:
        """The layout of supernet replicate ``seed``: its supernet, strategy lists and analysis in a ``seed<s>``
        folder below the standard ones (every other file is shared by the replicates)."""
        return replace(self, replicate=str(seed))

    def run_supernet(self, seeds: Sequence[int]) -> RunLayout:
        """The supernet a run's later stages read (derive, finetune, the report, export): the first of ``seeds``'s
        replicate (the workflow), or the single supernet of commands given by hand (no ``seed<s>`` folder)."""
        first = self.of_seed(seeds[0])
        return first if Path(first.supernet).is_file() or not Path(self.supernet).is_file() else self

    @property
    def seeds_dir(self) -> str:
        """Every replicate's strategy lists, scores and analysis (and nothing else: DVC's pooling stage reads the
        folder whole)."""
        return f"{self.results}/seeds"

    def _seeded(self, folder: str, name: str) -> str:
        """``folder/name`` of the single run, or ``<seeds_dir>/seed<s>/name`` of replicate ``s``."""
        return f"{folder}/{name}" if self.replicate is None else f"{self.seeds_dir}/seed{self.replicate}/{name}"

    def replicate_seeds(self) -> list[int]:
        """The seeds whose folder (``seed<s>``) exists in :attr:`seeds_dir`, in order."""
        found = Path(self.seeds_dir).glob("seed*") if Path(self.seeds_dir).is_dir() else []
        return sorted(int(p.name[4:]) for p in found if p.is_dir() and p.name[4:].isdigit())

    # the dataset as given (the built-in benchmark is generated here)
    @property
    def annotations(self) -> str:
        return f"{self.data_root}/annotations.csv"

    @property
    def dataset_classes(self) -> str:
        return f"{self.data_root}/classes.csv"

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

    @property
    def clips(self) -> str:
        return f"{self.cache}/clips.npy"

    def shard_manifest(self, shard: int | str, n_shards: int | str) -> str:
        """The rows of shard ``shard`` of ``n_shards`` (videos storage, ``stfusion prepare --shard``)."""
        return f"{self.cache}/shards/manifest-{shard}-of-{n_shards}.csv"

    def shard_timing(self, shard: int | str, n_shards: int | str) -> str:
        return f"{self.cache}/shards/timing-{shard}-of-{n_shards}.json"

    # supernet
    @property
    def supernet_dir(self) -> str:
        folder = f"{self.checkpoints}/supernet"
        return folder if self.replicate is None else f"{folder}/seed{self.replicate}"

    @property
    def supernet(self) -> str:
        return f"{self.supernet_dir}/model.pt"

    @property
    def last(self) -> str:
        """The resume checkpoint of an unfinished training (not an output: it survives a killed job)."""
        return f"{self.supernet_dir}/last.pt"

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
        if self.replicate is None:
            return f"{self.results}/strategies/candidates.csv"
        return f"{self.candidates_dir}/seed{self.replicate}.csv"

    @property
    def candidates_dir(self) -> str:
        """The replicates' strategy lists, a file a seed, and nothing else (DVC's scoring stages read it whole:
        each seed scores the union)."""
        return f"{self.seeds_dir}/candidates"

    @property
    def ranking(self) -> str:
        return self._seeded(f"{self.results}/strategies", "ranking.csv")

    @property
    def analysis(self) -> str:
        return self._seeded(self.results, "analysis")

    @property
    def preference(self) -> str:
        return f"{self.analysis}/preference.csv"

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
    def analysis_summary(self) -> str:
        return f"{self.analysis}/summary.json"

    @property
    def stability(self) -> str:
        """The pooled analysis's record of the seeds: stability figures, per-seed checks (JSON, Markdown beside)."""
        return f"{self.analysis}/stability.json"

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

    @property
    def finetune_best_history(self) -> str:
        return best_run_file(f"{self.results}/finetune", "history")

    @property
    def finetune_best_predictions(self) -> str:
        return best_run_file(f"{self.results}/finetune", "predictions")

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
        return f"{self.validation}/{FIDELITY_CHECK.table}"

    @property
    def standalone_best_history(self) -> str:
        return best_run_file(self.validation, "history")

    @property
    def standalone_best_predictions(self) -> str:
        return best_run_file(self.validation, "predictions")

    @property
    def fidelity(self) -> str:
        return f"{self.validation}/{FIDELITY_CHECK.result}"

    @property
    def fidelity_plot(self) -> str:
        return f"{self.validation}/{FIDELITY_CHECK.figure}"

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

    @property
    def fidelity_study(self) -> str:
        return f"{self.fidelity_dir}/{FIDELITY_STUDY.result}"

    @property
    def fidelity_summary(self) -> str:
        return f"{self.fidelity_dir}/{FIDELITY_STUDY.summary}"

    @property
    def fidelity_table(self) -> str:
        return f"{self.fidelity_dir}/{FIDELITY_STUDY.table}"

    @property
    def fidelity_study_plot(self) -> str:
        return f"{self.fidelity_dir}/{FIDELITY_STUDY.figure}"

    @property
    def fidelity_timing(self) -> str:
        """Kept apart from :attr:`timing_dir`, so that the default run's total time leaves the study out."""
        return f"{self.fidelity_dir}/timing.json"

    # records and the report
    @property
    def timing_dir(self) -> str:
        return f"{self.results}/timing"

    def timing(self, stage: str) -> str:
        """A stage's seconds (a replicate's: ``<stage>.seed<s>.json``; the report adds the seeds up)."""
        return f"{self.timing_dir}/{stage}{'' if self.replicate is None else f'.seed{self.replicate}'}.json"

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
        """``<id>.pt2`` / ``<id>.onnx`` of ``stfusion export``, each with its ``.json``."""
        return f"{self.results}/export"

    @property
    def compare_dir(self) -> str:
        """``stfusion compare``: one table across runs."""
        return f"{self.results}/compare"


#: the standard layout (what ``snakemake`` and ``dvc repro`` use)
LAYOUT = RunLayout()


#: the files one training run leaves in its runs folder, ``<runs>/<id>.<suffix>``: record, history, test predictions
RUN_FILES = {"record": "json", "history": "history.csv", "predictions": "predictions.csv"}
#: the best run's history and test predictions, copied beside the table that ranks the runs
BEST_RUN_FILES = {"history": "best_history.csv", "predictions": "best_test_predictions.csv"}


def run_file(runs_dir: str | Path, sid: str, kind: str) -> str:
    """File ``kind`` (:data:`RUN_FILES`) of run ``sid`` in ``runs_dir`` (``sid`` may be a wildcard, ``{sid}``)."""
    return f"{runs_dir}/{sid}.{RUN_FILES[kind]}"


def best_run_file(folder: str | Path, kind: str) -> str:
    """File ``kind`` (:data:`BEST_RUN_FILES`) of the best run, in ``folder``."""
    return f"{folder}/{BEST_RUN_FILES[kind]}"


def in_folder(path: str, folder: str | Path) -> Path:
    """The file ``path`` of a layout's folder, in ``folder`` instead: a command given another output folder
    writes the files of the standard one there, under the same names (and every training folder, the
    supernet's, a finetuned or a stand-alone network's, holds its files under the supernet's names)."""
    return Path(folder) / Path(path).name

# --------------------------------------------------------------------------------------- stage parameters
_DATA_LOADING = ["preset", "data.frames", "data.stride", "data.sampling", "data.size", "data.backend"]
#: the views of :func:`stfusion.data.transforms.view_from_params`: training, evaluation (validation, calibration,
#: and the input size costs are counted at), test
_TRAIN_VIEW = ["data.flip", "data.crop", "data.train_short_side", "data.clips_per_decode",
               "data.max_decode_failures"]
_EVAL_VIEW = ["data.eval_crop", "data.eval_short_side"]
_TEST_VIEW = [*_EVAL_VIEW, "data.test_clips", "data.test_crops"]

#: where and how networks train (:func:`stfusion.engine.train.compute_settings`): read by every training stage
_COMPUTE = ["compute.device", "compute.precision", "compute.channels_last", "compute.loader_workers",
            "compute.checkpoint_minutes", "compute.gpus_per_node", "compute.nodes", "compute.max_restarts"]
#: the optimiser of every training stage (:class:`stfusion.engine.train.TrainConfig`)
_SOLVER = ["solver.momentum", "solver.schedule", "solver.milestones", "solver.eval_every"]
#: the budget of a network trained from scratch (stand-alone; the fidelity study)
_STANDALONE = ["standalone.epochs", "standalone.lr", "standalone.batch_size", "standalone.weight_decay"]

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
        "supernet", *_SOLVER, *_COMPUTE,
    ],
    "sample_strategies": ["seed", "preset", "gate.keep_prob", "scoring.n_samples", "scoring.top_k"],
    "score_strategies": [
        "seed", "seeds", *_DATA_LOADING, *_TEST_VIEW, "compute.device", "compute.loader_workers", "gate.keep_prob",
        "scoring.recalibrate_bn",
        "scoring.calib_batches", "scoring.batch_size", "scoring.racing", "scoring.keep_top",
        "scoring.race_first_clips", "scoring.race_growth", "scoring.race_confidence", "scoring.min_exposure",
    ],
    "analyze": ["preset", "gate.keep_prob"],
    "pool_seeds": ["preset", "seeds", "derive.top_k", "derive.st_threshold"],
    "derive": ["preset", "derive.top_k", "derive.st_threshold"],
    "finetune": ["seed", *_DATA_LOADING, *_TRAIN_VIEW, *_TEST_VIEW, *_SOLVER, *_COMPUTE, "scoring.batch_size",
                 "finetune"],
    "select_standalone": ["preset", "standalone.n_strategies"],
    "train_standalone": ["seed", *_DATA_LOADING, *_TRAIN_VIEW, *_TEST_VIEW, *_SOLVER, *_COMPUTE, "scoring.batch_size",
                         *_STANDALONE],
    "report": ["seed", "seeds", "preset"],
    "select_fidelity": ["preset", "fidelity.n_strategies"],
    "validate_ranking": ["seed", "preset", *_STANDALONE],
}
#: the study trains and gathers as the default run's check does, under every seed (stfusion.stages.fidelity)
STAGE_PARAMS["train_fidelity"] = [*STAGE_PARAMS["train_standalone"], "fidelity.seeds"]
STAGE_PARAMS["fidelity"] = [*STAGE_PARAMS["validate_ranking"], "fidelity.seeds"]


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
