"""The commands of ``stfusion``, one declaration each: the stage function it runs, the files it reads and
writes (their defaults: the standard layout, :data:`stfusion.config.layout.LAYOUT`), its own options, whether it
runs distributed and under which stage name its seconds are recorded. :mod:`stfusion.cli.app` builds the parser
from :data:`COMMANDS` and runs them; ``dvc.yaml`` and the Snakemake rules call them."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from stfusion.config.layout import FIDELITY_CHECK, FIDELITY_STUDY, LAYOUT, RunLayout
from stfusion.io.files import read_json

log = logging.getLogger("stfusion")


# ----------------------------------------------------------------------------------------- declarations
@dataclass(frozen=True)
class Arg:
    """One argument: the flag (or a positional's name) and the keywords of ``argparse.add_argument``; ``to``, the
    keyword the stage receives it as (``None``: the command reads it itself); for a path, ``path`` says whether
    the command reads it (``"in"``) or writes it (``"out"``); arguments sharing an ``exclusive`` name exclude
    each other."""

    flag: str
    spec: dict = field(default_factory=dict)
    to: str | None = None
    path: str | None = None
    exclusive: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def path(flag: str, default: str, metavar: str, what: str, *, to: str | None = None, out: bool = False) -> Arg:
    """A path option defaulting to the standard layout, passed to the stage as ``to`` (default: its own name);
    the help line ends with the default."""
    arg = Arg(flag, {"default": default, "metavar": metavar, "help": f"{what} (default: %(default)s)"},
              path="out" if out else "in")
    return replace(arg, to=to or arg.dest)


def strategy(what: str) -> Arg:
    return Arg("--strategy", {"action": "append", "metavar": "ID", "help": f"{what} (repeatable; default: all)"},
               to="strategies")


def trained(ckpt_dir: str, runs_dir: str) -> tuple[Arg, Arg]:
    """Where a training command writes its networks (``CKPT/<id>/``) and run records (``RUNS/<id>.json``)."""
    return (path("--ckpt-dir", ckpt_dir, "DIR", "checkpoints", out=True),
            path("--runs-dir", runs_dir, "DIR", "run records", out=True))


def runs(runs_dir: str) -> Arg:
    return path("--runs-dir", runs_dir, "DIR", "run records")


def selection(default: str) -> Arg:
    return path("--selection", default, "CSV", "selection")


def timing(default: str | None, what: str = "this stage took", shown: str = "%(default)s") -> Arg:
    return Arg("--timing", {"default": default, "metavar": "JSON",
                            "help": f"where to record the seconds {what} (default: {shown})"}, path="out")


@dataclass(frozen=True)
class Command:
    """One subcommand. ``stage`` (``"module:function"``) is imported only when the command runs, so that
    ``--help`` stays fast; it is called with its part of the parameters first (when ``params``: the keys
    :data:`stfusion.config.layout.STAGE_PARAMS` lists for the command's stage name), then the arguments that
    have a ``to``, the keywords in ``fixed`` (e.g. which ranking-fidelity study) and ``progress`` when it
    takes it.

    ``distributed``: under ``torchrun``, one process a GPU (the process group is set up around the stage, and
    only the main process records the time). ``timed``: the stage name its seconds are recorded under
    (``--timing``, default ``LAYOUT.timing(timed)`` unless the command declares its own). ``resolve(args,
    params)`` fills in defaults that depend on the parameters or on other arguments; ``done(result, args)``
    returns what the timing record adds (and may log what the command did)."""

    name: str
    help: str
    description: str
    stage: str
    args: tuple[Arg, ...] = ()
    params: bool = True
    progress: bool = False
    distributed: bool = False
    timed: str | None = None
    fixed: dict = field(default_factory=dict)
    resolve: Callable[[argparse.Namespace, dict], None] | None = None
    done: Callable[[Any, argparse.Namespace], dict | None] | None = None

    @property
    def stage_name(self) -> str:
        """The name of the command's parameter list (:data:`~stfusion.config.layout.STAGE_PARAMS`)."""
        return self.name.replace("-", "_")

    def arguments(self) -> tuple[Arg, ...]:
        if self.timed and not any(a.flag == "--timing" for a in self.args):
            return (*self.args, timing(LAYOUT.timing(self.timed)))
        return self.args


# --------------------------------------------------------------------------------- what commands share
CHECKPOINT = path("--checkpoint", LAYOUT.supernet, "PT", "supernet")
CACHE = path("--cache", LAYOUT.cache, "DIR", "clip cache", to="cache_dir")
RANKING = path("--ranking", LAYOUT.ranking, "CSV", "ranking")
SCORES = path("--ranking", LAYOUT.ranking, "CSV", "ranking, for the supernet scores")
ARCHITECTURE = path("--checkpoint", LAYOUT.supernet, "PT", "supernet, for its architecture only")


def _result(result: dict, args) -> dict:
    return result


def _count(table, args) -> dict:
    return {"strategies": int(len(table))}


def _gathered(table, args) -> dict:
    """A gather stage's record: its jobs and their seconds (the timing record adds them to its own)."""
    return {"jobs": int(len(table)), "run_seconds": float(table["seconds"].sum()) if "seconds" in table else 0.0}


def _root(args, params: dict) -> None:
    args.root = args.root or params["data"]["root"]


def _shard_arg(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    if not (sep and i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return int(i), int(n)


def _prepare_timing(args, params: dict) -> None:
    if args.timing is None:
        cache = RunLayout(cache=args.cache)
        args.timing = cache.shard_timing(*args.shard) if args.shard else LAYOUT.timing("prepare")


def _shards(result: dict, args) -> dict:
    """The merge's record adds the shard jobs' seconds."""
    if not args.merge:
        return result
    cache = RunLayout(cache=args.cache)
    files = [Path(cache.shard_timing(i, args.merge)) for i in range(args.merge)]
    records = [read_json(f) for f in files if f.is_file()]
    return {**result, "jobs": len(records), "run_seconds": round(sum(r["seconds"] for r in records), 3)}


def _study_runs(result: dict, args) -> dict:
    """A ranking-fidelity gather's record: its training jobs and their seconds."""
    return {"jobs": result["runs"], "run_seconds": result["train_seconds"], "wall_seconds": result["wall_seconds"]}


def _initialised(written: list, args) -> None:
    log.info("wrote %d file(s) to %s%s", len(written), args.dir,
             "; run the pipeline there with 'snakemake --cores all' (or, in a git repository, 'dvc init && dvc "
             "repro')" if args.workflow else "")


def _compared(table, args) -> None:
    log.info("compared %d runs: %s", len(table), args.out_dir)


# ------------------------------------------------------------------------------------------- the commands
COMMANDS: tuple[Command, ...] = (
    Command(
        "generate", "write the built-in benchmark videos",
        "Render the built-in benchmark (classes that differ only in motion, classes that differ only in "
        "appearance) as lossless H.264 videos with annotations.csv and classes.csv. Reads data.builtin.* and seed.",
        "stfusion.stages.data:generate",
        (Arg("--root", {"default": None, "metavar": "DIR", "help": "output folder (default: data.root)"},
             to="root", path="out"),),
        progress=True, timed="generate", resolve=_root, done=_result,
    ),
    Command(
        "prepare", "prepare the videos (clip cache or one file each) with train/val/test splits",
        "Read the dataset's annotations (data.dataset, data.root, data.annotations, data.split) and prepare "
        "every video in data.storage: 'cache' decodes each once at data.size into clips.npy; 'videos' "
        "re-encodes each (H.264, a key frame every 16 frames, short side data.short_side, no audio), packs "
        "JPEG frame folders into one file, or with data.prepare: link uses the files as they are; 'auto' "
        "takes the cache when its estimate is under data.cache_max_gb. Holds out data.val_fraction of the "
        "training videos for selection and marks data.calib_fraction of the rest for BN recalibration. "
        "Videos storage runs in shards (--shard I/N on many machines, then --merge N); a killed shard, run "
        "again, redoes only the videos it had not finished. Writes CACHE/manifest.csv, classes.csv, "
        "storage.json and clips.npy or videos/.",
        "stfusion.stages.data:prepare",
        (Arg("--root", {"default": None, "metavar": "DIR", "help": "dataset folder (default: data.root)"},
             to="root", path="in"),
         path("--cache", LAYOUT.cache, "DIR", "output folder", to="cache_dir", out=True),
         Arg("--workers", {"type": int, "default": None, "metavar": "N",
                           "help": "decoding processes (default: data.workers)"}, to="workers"),
         Arg("--shard", {"type": _shard_arg, "default": None, "metavar": "I/N",
                         "help": "videos storage: prepare only the videos k with k %% N == I (0 <= I < N), "
                                 f"writing {RunLayout(cache='CACHE').shard_manifest('I', 'N')}"},
             to="shard", exclusive="part"),
         Arg("--merge", {"type": int, "default": None, "metavar": "N",
                         "help": "videos storage: merge the N shard manifests into manifest.csv (with the val and "
                                 "calibration draws), classes.csv and storage.json"}, to="merge", exclusive="part"),
         timing(None, shown=f"{LAYOUT.timing('prepare')}; for --shard I/N: "
                            f"{RunLayout(cache='CACHE').shard_timing('I', 'N')}, added up by --merge")),
        progress=True, timed="prepare", resolve=_prepare_timing, done=_shards,
    ),
    Command(
        "train-supernet", "train the template network with Variational DropPath",
        "Train the template network (model.*): supernet.warmup_epochs without gates, then supernet.epochs "
        "with a learned Bernoulli gate on every S and ST path and the KL term (gate.*). Resumes from "
        "OUT/last.pt after an interruption. Writes OUT/model.pt, history.csv, drop_rates.csv, gate_stats.csv. "
        "Launch with 'torchrun --nproc_per_node=G -m stfusion.cli train-supernet' for several GPUs.",
        "stfusion.stages.supernet:train_supernet",
        (CACHE, path("--out", LAYOUT.supernet_dir, "DIR", "checkpoint folder", to="out_dir", out=True)),
        progress=True, distributed=True, timed="train_supernet", done=_result,
    ),
    Command(
        "sample-strategies", "list the most probable, sampled and hand-designed strategies",
        "From the learned drop rates: the scoring.top_k most probable strategies, scoring.n_samples strategies "
        "drawn from the posterior (seed), and the named families (all-S, all-ST, all-S+ST, ...). One row a "
        "distinct strategy: id, text form, log-probability, source. gate.keep_prob picks how drop rates "
        "become keep probabilities.",
        "stfusion.stages.strategies:sample_strategies",
        (CHECKPOINT, path("--out", LAYOUT.candidates, "CSV", "strategy list", out=True)),
        timed="sample_strategies", done=_count,
    ),
    Command(
        "score-strategies", "score every listed strategy with the supernet's shared weights",
        "Fix each strategy's gates, recalibrate BatchNorm on the calibration subset (scoring.recalibrate_bn; "
        "both modes are measured), and evaluate on the validation split (selection) and the test split "
        "(reporting). Writes the ranking with columns strategy, log_prob, top1, rank, per-kind accuracies.",
        "stfusion.stages.strategies:score_strategies",
        (CHECKPOINT, CACHE, path("--candidates", LAYOUT.candidates, "CSV", "strategy list"),
         Arg("--union", {"action": "append", "default": [], "metavar": "CSV",
                         "help": "another seed's strategy list, or the folder of every seed's (seed<s>.csv), "
                                 "whose strategies are scored too (repeatable)"},
             to="union", path="in"),
         path("--out", LAYOUT.ranking, "CSV", "ranking", out=True)),
        progress=True, timed="score_strategies", done=_count,
    ),
    Command(
        "analyze", "network-level table, layer-level preference and figures",
        "Write the network-level table (families and samples: probability, accuracy, rank), the layer-level "
        "preference (layers x {S, ST, S+ST, none} marginals with the raw p of each gate and the keep-prob "
        "rule) as CSV and Markdown, the preference heatmap, the log-probability vs score scatter plot and the "
        "drop-rate trajectories.",
        "stfusion.stages.strategies:analyze",
        (CHECKPOINT, RANKING, path("--drop-rates", LAYOUT.drop_rates, "CSV", "per-epoch drop rates"),
         path("--gate-stats", LAYOUT.gate_stats, "CSV", "per-epoch gate statistics, for the drop-rate figure"),
         path("--out-dir", LAYOUT.analysis, "DIR", "output folder", out=True)),
        timed="analyze",
    ),
    Command(
        "pool-seeds", "pool the supernet replicates of the seeds",
        "Read the ranking and analysis of every seed of 'seeds' (RESULTS/strategies/seed<s>/, "
        "RESULTS/analysis/seed<s>/), refuse replicates trained with different settings, and write the pooled "
        "ranking (mean score, interval over seeds, best in k of n seeds), preference (mean marginals, intervals, "
        "uncertain cells), heatmap, network table and summary where a single run writes them, and "
        f"{LAYOUT.stability} (stability figures).",
        "stfusion.stages.pooling:pool_seeds",
        (path("--results", LAYOUT.results, "DIR", "results folder", out=True),),
        timed="pool_seeds",
    ),
    Command(
        "derive", "new strategies from the preferences",
        "Derive strategies: the most probable state per layer, the derive.top_k most probable strategies, "
        "the P(ST) threshold rule (derive.st_threshold), one state per stage, and the best sampled "
        "strategy on validation.",
        "stfusion.stages.derive:derive",
        (path("--preference", LAYOUT.preference, "CSV", "preference"), RANKING,
         path("--checkpoint", LAYOUT.supernet, "PT", "supernet, for the networks' MACs and parameters"),
         path("--out", LAYOUT.derived, "CSV", "derived table", out=True)),
        timed="derive", done=_count,
    ),
    Command(
        "finetune", "export derived strategies as plain networks and finetune them",
        "For each derived strategy (all, or those given with --strategy): export a plain network holding "
        "only the strategy's convs with the supernet's weights, finetune it with cross-entropy "
        "(finetune.*), evaluate on validation and test. Writes RUNS/<id>.json and CKPT/<id>/.",
        "stfusion.stages.derive:finetune",
        (strategy("derived strategy id"), CHECKPOINT, CACHE, path("--derived", LAYOUT.derived, "CSV", "derived table"),
         *trained(LAYOUT.finetune_ckpt, LAYOUT.finetune_runs)),
        progress=True, distributed=True,
    ),
    Command(
        "finetune-table", "gather the finetuning runs into one table",
        "Gather RUNS/<id>.json of every derived strategy into the accuracy table (CSV + Markdown).",
        "stfusion.stages.derive:finetune_table",
        (path("--derived", LAYOUT.derived, "CSV", "derived table"),
         runs(LAYOUT.finetune_runs), SCORES,
         path("--out", LAYOUT.finetune_table, "CSV", "accuracy table", out=True)),
        params=False, timed="finetune", done=_gathered,
    ),
    Command(
        "select-standalone", "choose the strategies to train from scratch",
        "Choose standalone.n_strategies scored strategies spanning the score range, deterministically: the "
        "uniform families all-S, all-ST, all-S+ST, then strategies evenly spaced in score rank.",
        "stfusion.stages.fidelity:select",
        (RANKING, path("--out", LAYOUT.selection, "CSV", "selection", out=True)),
        fixed={"study": FIDELITY_CHECK},
    ),
    Command(
        "train-standalone", "train chosen strategies from scratch",
        "For each selected strategy (all, or those given with --strategy): a freshly initialised network of "
        "the supernet's architecture holding only the strategy's convs, trained with the standalone.* budget "
        "and the same seed, evaluated on validation and test. Writes RUNS/<id>.json and CKPT/<id>/.",
        "stfusion.stages.fidelity:train",
        (strategy("selected strategy id"), CACHE, ARCHITECTURE,
         selection(LAYOUT.selection), *trained(LAYOUT.standalone_ckpt, LAYOUT.standalone_runs)),
        progress=True, distributed=True, fixed={"study": FIDELITY_CHECK},
    ),
    Command(
        "validate-ranking", "rank correlations between stand-alone accuracy and supernet scores",
        "Gather the stand-alone runs; Kendall tau and Spearman rho between stand-alone accuracy and the "
        "supernet score (with and without BN recalibration) and the log-probability.",
        "stfusion.stages.fidelity:report",
        (selection(LAYOUT.selection), runs(LAYOUT.standalone_runs), SCORES,
         path("--out-dir", LAYOUT.validation, "DIR", "output folder", out=True)),
        timed="validate_ranking", done=_study_runs, fixed={"study": FIDELITY_CHECK},
    ),
    Command(
        "report", f"write {LAYOUT.report} and {LAYOUT.metrics}",
        "Assemble the report a person reads first: the docs/method.md §9 checks (pass/fail with numbers), motion "
        "vs appearance accuracies, network- and layer-level tables and figures, derived networks, ranking "
        "fidelity, time per stage; and the scalar metrics for DVC.",
        "stfusion.stages.report:report",
        (CACHE, path("--results", LAYOUT.results, "DIR", "results folder", out=True),
         path("--checkpoint-dir", LAYOUT.supernet_dir, "DIR", "supernet folder"),
         path("--out", LAYOUT.report, "MD", "report", out=True),
         path("--metrics", LAYOUT.metrics, "JSON", "metrics", out=True)),
    ),
    Command(
        "export", "a derived or finetuned network as a deployable file (torch.export, ONNX)",
        "Write the plain network of one strategy (only its kept convs, no gates) as a deployable file: "
        "'pt2' (torch.export, load with torch.export.load(path).module()) or 'onnx' (needs the onnx extra: "
        "pip install 'stfusion[onnx]'). The weights are the finetuned ones of CKPT/<id>/model.pt when the "
        "strategy was finetuned, else the supernet's. Input: clips (N, 3, T, H, W) normalised as in "
        "training; output: logits (N, classes). The file is checked against PyTorch on a random batch; a "
        "JSON file beside it records strategy, weights, input normalisation, classes, MACs and parameters.",
        "stfusion.stages.export:export",
        (Arg("--strategy", {"required": True, "metavar": "ID|TEXT|best",
                            "help": "strategy id (e.g. stb), text (e.g. 'S|ST|S+ST') or 'best': the derived "
                                    "strategy with the best validation top-1 after finetuning"}, to="strategy"),
         Arg("--format", {"default": "pt2", "choices": ["pt2", "onnx"], "help": "file format (default: %(default)s)"},
             to="fmt"),
         CHECKPOINT,
         path("--finetuned", LAYOUT.finetune_ckpt, "CKPT", "finetuned networks, CKPT/<id>/model.pt",
              to="finetuned_dir"),
         path("--finetune-table", LAYOUT.finetune_table, "CSV", "finetuned accuracies, read by --strategy best",
              to="finetune_table"),
         Arg("--out", {"default": None, "metavar": "FILE",
                       "help": f"output file (default: {LAYOUT.export_dir}/<id>.<format>)"}, to="out", path="out")),
        params=False,
    ),
    Command(
        "init", "a new project folder: params.yaml (and the pipeline for Snakemake and DVC)",
        "Write DIR/params.yaml, the commented defaults every command reads (edit the keys you change; "
        "the others keep their packaged defaults). With --workflow also the pipeline: DIR/Snakefile and "
        "DIR/workflow/ (rules, profiles, conda environment, report captions), DIR/profiles/default, DIR/dvc.yaml, "
        "DIR/.gitignore and DIR/.dvcignore, so 'snakemake --cores all' (also with --use-conda) or 'dvc repro' "
        "runs the pipeline there.",
        "stfusion.stages.project:init_project",
        (Arg("dir", {"nargs": "?", "default": ".", "metavar": "DIR",
                     "help": "project folder (default: the working folder)"}, to="folder", path="out"),
         Arg("--workflow", {"action": "store_true", "help": "also write the Snakemake workflow"}, to="workflow"),
         Arg("--force", {"action": "store_true", "help": "overwrite existing project files"}, to="force")),
        params=False, done=_initialised,
    ),
    Command(
        "select-fidelity", "choose the strategies of the ranking-fidelity study",
        "Choose fidelity.n_strategies scored strategies spanning the score range, as select-standalone "
        "chooses its standalone.n_strategies: the uniform families, then strategies evenly spaced in score rank.",
        "stfusion.stages.fidelity:select",
        (RANKING, path("--out", LAYOUT.fidelity_selection, "CSV", "selection", out=True)),
        fixed={"study": FIDELITY_STUDY},
    ),
    Command(
        "train-fidelity", "train the study's strategies from scratch under several seeds",
        "For each selected strategy (all, or --strategy) and seed index (0 .. fidelity.seeds-1, or "
        "--seed-index): a fresh network of the supernet's architecture holding only the strategy's convs, "
        "initialised with seed + index, trained with the standalone.* budget. Writes RUNS/seed<j>/<id>.json.",
        "stfusion.stages.fidelity:train",
        (strategy("selected strategy id"),
         Arg("--seed-index", {"type": int, "action": "append", "metavar": "J",
                              "help": "seed index (repeatable; default: 0 .. fidelity.seeds-1)"}, to="seeds"),
         CACHE, ARCHITECTURE, selection(LAYOUT.fidelity_selection),
         *trained(LAYOUT.fidelity_ckpt, LAYOUT.fidelity_runs)),
        progress=True, distributed=True, fixed={"study": FIDELITY_STUDY},
    ),
    Command(
        "fidelity", "statistics of the ranking-fidelity study",
        "Gather the study's runs: Kendall tau-b and Spearman rho (p-values, 95%% bootstrap intervals over "
        "strategies) of the supernet score, plain-BN score and log-probability against the mean "
        "stand-alone accuracy; the seed-to-seed ceiling; top-k overlap; regret; paired differences; a figure.",
        "stfusion.stages.fidelity:report",
        (RANKING, selection(LAYOUT.fidelity_selection), runs(LAYOUT.fidelity_runs),
         path("--out-dir", LAYOUT.fidelity_dir, "DIR", "output folder", out=True),
         timing(LAYOUT.fidelity_timing, "of the study",
                f"%(default)s; kept apart from {LAYOUT.timing_dir} so the default run's total leaves the study out")),
        timed="fidelity", done=_study_runs, fixed={"study": FIDELITY_STUDY},
    ),
    Command(
        "compare", "one ranked table across several runs' result folders",
        f"Read {RunLayout(results='RESULTS').metrics} (and {RunLayout(results='RESULTS').fidelity_study} where "
        "present) of every RESULTS folder given, or the experiments of 'dvc exp show --json' (--dvc-json), and "
        "write one table ranked by the best sampled strategy's validation top-1: entropy and its ratio to the "
        "start, drop-rate spread, best sampled, all-S / all-ST / all-S+ST, tau (CSV, Markdown and a figure).",
        "stfusion.analysis.compare:compare",
        (Arg("results_dirs", {"nargs": "*", "metavar": "RESULTS", "help": "result folders (one a run)"},
             to="folders", path="in"),
         Arg("--dvc-json", {"metavar": "JSON", "help": "output of 'dvc exp show --json' (instead of folders)"},
             to="dvc_json", path="in"),
         path("--out-dir", LAYOUT.compare_dir, "DIR", "output folder", out=True)),
        params=False, done=_compared,
    ),
)
