"""``stfusion``: the command line of the pipeline. One subcommand a stage; Snakemake rules and DVC stages call
these commands, and so can a person.

    stfusion generate            write the built-in benchmark videos
    stfusion prepare             prepare the videos (clip cache or one file each) with train / val / test splits
    stfusion train-supernet      train the template network with Variational DropPath
    stfusion sample-strategies   list the most probable, sampled and hand-designed strategies
    stfusion score-strategies    score every listed strategy with the supernet's shared weights
    stfusion analyze             network-level table, layer-level preference, figures
    stfusion derive              new strategies from the preferences
    stfusion finetune            export derived strategies as plain networks and finetune them
    stfusion finetune-table      gather the finetuning runs into one table
    stfusion select-standalone   choose the strategies to train from scratch
    stfusion train-standalone    train chosen strategies from scratch
    stfusion validate-ranking    rank correlations between stand-alone accuracy and supernet scores
    stfusion report              results/report.md and results/metrics.json
    stfusion export              a derived or finetuned network as a deployable file (torch.export, ONNX)
    stfusion init                a new project folder: params.yaml (and the Snakemake workflow)
    stfusion select-fidelity     choose the strategies of the ranking-fidelity study (stratified by score)
    stfusion train-fidelity      train the study's strategies from scratch under several seeds
    stfusion fidelity            the study's statistics: tau / rho with intervals, seed ceiling, top-k, regret
    stfusion compare             one ranked table across several runs' result folders

Every subcommand takes ``--params`` (default ``params.yaml``), ``--set KEY=VALUE`` overrides, explicit input and
output paths (defaults: the standard layout), ``--log FILE`` and ``--threads N``. Errors with a plain
explanation end the command with one line ``stfusion: error: ...`` and exit status 2. A training command stopped
by SIGTERM or SIGUSR1 writes its checkpoint and exits with status 75 (``EXIT_RESUME``); running it again resumes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: with parallel Snakemake jobs on few cores, spinning threads
# took the cores from the working ones (training steps ran 2-9x slower in benchmarks/run.py). Must be set
# before torch loads; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import yaml

from stfusion.config import layout
from stfusion.io.files import read_json, write_json
from stfusion.stages import runtime as stage_io
from stfusion.errors import EXIT_RESUME, ResumableStop, StfusionError

# Idle OpenMP threads sleep instead of spinning. On a shared or oversubscribed CPU, spinning threads make every
# parallel torch op wait for descheduled peers: a training step measured 10x slower with 2 threads than with 1
# on a busy 2-core machine, and as fast as 1 thread with this setting. It must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

log = logging.getLogger("stfusion")

EPILOG = ("Paths default to the standard layout (data/, checkpoints/, results/). "
          "See README.md for what every stage writes.")


# ------------------------------------------------------------------------------------------- arguments
def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("--params", default=None, metavar="FILE",
                   help="parameters file merged over the packaged defaults and validated against the schema "
                        "(default: $STFUSION_PARAMS if set, else params.yaml of the working folder if present)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter, e.g. --set scoring.n_samples=50 (YAML value; repeatable)")
    g.add_argument("--log", metavar="FILE", help="also write the log to FILE")
    g.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    prog = g.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="show progress bars (default: only on a terminal)")
    prog.add_argument("--no-progress", dest="progress", action="store_false", help="never show progress bars")
    g.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on the console")
    return p


#: the input files several commands read: option -> (default, metavar, what it is)
_STANDARD_FILES = {
    "--checkpoint": (layout.SUPERNET, "PT", "supernet"),
    "--cache": (layout.CACHE, "DIR", "clip cache"),
    "--ranking": (layout.RANKING, "CSV", "ranking"),
    "--candidates": (layout.CANDIDATES, "CSV", "strategy list"),
    "--derived": (layout.DERIVED, "CSV", "derived table"),
    "--preference": (layout.PREFERENCE, "CSV", "preference"),
}


def _files(p: argparse.ArgumentParser, *standard: str, **own: tuple[str, str, str]) -> None:
    """Add path options to a subcommand: ``standard`` ones by name (:data:`_STANDARD_FILES`), the command's ``own``
    as ``out_dir=(default, metavar, what)`` for ``--out-dir``. Every help line ends with the default."""
    specs = [(flag, *_STANDARD_FILES[flag]) for flag in standard]
    specs += [("--" + name.replace("_", "-"), *spec) for name, spec in own.items()]
    for flag, default, metavar, what in specs:
        p.add_argument(flag, default=default, metavar=metavar, help=f"{what} (default: %(default)s)")


def _timing(p: argparse.ArgumentParser, stage: str) -> None:
    p.add_argument("--timing", default=f"{layout.TIMING}/{stage}.json", metavar="JSON",
                   help="where to record the seconds this stage took (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stfusion", description=__doc__.split("\n\n")[0].replace("``", ""), epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from stfusion import __version__

    parser.add_argument("--version", action="version", version=f"stfusion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    common = _common()

    def add(name, func, help_, description, needs_params=True):
        sp = sub.add_parser(name, parents=[common], help=help_, description=description, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(func=func, stage_name=name.replace("-", "_"), needs_params=needs_params)
        return sp

    sp = add("generate", cmd_generate, "write the built-in benchmark videos",
             "Render the built-in benchmark (classes that differ only in motion, classes that differ only in "
             "appearance) as lossless H.264 videos with annotations.csv and classes.csv. Reads data.builtin.* and "
             "seed.")
    sp.add_argument("--root", default=None, metavar="DIR", help="output folder (default: data.root)")
    _timing(sp, "generate")

    sp = add("prepare", cmd_prepare, "prepare the videos (clip cache or one file each) with train/val/test splits",
             "Read the dataset's annotations (data.dataset, data.root, data.annotations, data.split) and prepare "
             "every video in data.storage: 'cache' decodes each once at data.size into clips.npy; 'videos' "
             "re-encodes each (H.264, a key frame every 16 frames, short side data.short_side, no audio), packs "
             "JPEG frame folders into one file, or with data.prepare: link uses the files as they are; 'auto' "
             "takes the cache when its estimate is under data.cache_max_gb. Holds out data.val_fraction of the "
             "training videos for selection and marks data.calib_fraction of the rest for BN recalibration. "
             "Videos storage runs in shards (--shard I/N on many machines, then --merge N); a killed shard, run "
             "again, redoes only the videos it had not finished. Writes CACHE/manifest.csv, classes.csv, "
             "storage.json and clips.npy or videos/.")
    sp.add_argument("--root", default=None, metavar="DIR", help="dataset folder (default: data.root)")
    _files(sp, cache=(layout.CACHE, "DIR", "output folder"))
    sp.add_argument("--workers", type=int, default=None, metavar="N", help="decoding processes (default: data.workers)")
    part = sp.add_mutually_exclusive_group()
    part.add_argument("--shard", type=_shard_arg, default=None, metavar="I/N",
                      help="videos storage: prepare only the videos k with k %% N == I (0 <= I < N), writing "
                           "CACHE/shards/manifest-I-of-N.csv")
    part.add_argument("--merge", type=int, default=None, metavar="N",
                      help="videos storage: merge the N shard manifests into manifest.csv (with the val and "
                           "calibration draws), classes.csv and storage.json")
    sp.add_argument("--timing", default=None, metavar="JSON",
                    help=f"where to record the seconds this stage took (default: {layout.TIMING}/prepare.json; for "
                         "--shard I/N: CACHE/shards/timing-I-of-N.json, added up by --merge)")

    sp = add("train-supernet", cmd_train_supernet, "train the template network with Variational DropPath",
             "Train the template network (model.*): supernet.warmup_epochs without gates, then supernet.epochs "
             "with a learned Bernoulli gate on every S and ST path and the KL term (gate.*). Resumes from "
             "OUT/last.pt after an interruption. Writes OUT/model.pt, history.csv, drop_rates.csv. Launch with "
             "'torchrun --nproc_per_node=G -m stfusion.cli train-supernet' for several GPUs.")
    _files(sp, "--cache", out=(layout.SUPERNET_DIR, "DIR", "checkpoint folder"))
    _timing(sp, "train_supernet")

    sp = add("sample-strategies", cmd_sample, "list the most probable, sampled and hand-designed strategies",
             "From the learned drop rates: the scoring.top_k most probable strategies, scoring.n_samples strategies "
             "drawn from the posterior (seed), and the named families (all-S, all-ST, all-S+ST, ...). One row a "
             "distinct strategy: id, text form, log-probability, source. gate.keep_prob picks how drop rates "
             "become keep probabilities.")
    _files(sp, "--checkpoint", out=(layout.CANDIDATES, "CSV", "strategy list"))
    _timing(sp, "sample_strategies")

    sp = add("score-strategies", cmd_score, "score every listed strategy with the supernet's shared weights",
             "Fix each strategy's gates, recalibrate BatchNorm on the calibration subset (scoring.recalibrate_bn; "
             "both modes are measured), and evaluate on the validation split (selection) and the test split "
             "(reporting). Writes the ranking with columns strategy, log_prob, top1, rank, per-kind accuracies.")
    _files(sp, "--checkpoint", "--cache", "--candidates", out=(layout.RANKING, "CSV", "ranking"))
    _timing(sp, "score_strategies")

    sp = add("analyze", cmd_analyze, "network-level table, layer-level preference and figures",
             "Write the network-level table (families and samples: probability, accuracy, rank), the layer-level "
             "preference (layers x {S, ST, S+ST, none} marginals with the raw p of each gate and the keep-prob "
             "rule) as CSV and Markdown, the preference heatmap, the log-probability vs score scatter plot and the "
             "drop-rate trajectories.")
    _files(sp, "--checkpoint", "--ranking",
           drop_rates=(f"{layout.SUPERNET_DIR}/drop_rates.csv", "CSV", "per-epoch drop rates"),
           out_dir=(layout.ANALYSIS, "DIR", "output folder"))
    _timing(sp, "analyze")

    sp = add("derive", cmd_derive, "new strategies from the preferences",
             "Derive strategies: the most probable state per layer, the derive.top_k most probable strategies, "
             "the P(ST) threshold rule (derive.st_threshold), one state per stage, and the best sampled "
             "strategy on validation.")
    _files(sp, "--preference", "--ranking",
           checkpoint=(layout.SUPERNET, "PT", "supernet, for the networks' MACs and parameters"),
           out=(layout.DERIVED, "CSV", "derived table"))
    _timing(sp, "derive")

    sp = add("finetune", cmd_finetune, "export derived strategies as plain networks and finetune them",
             "For each derived strategy (all, or those given with --strategy): export a plain network holding "
             "only the strategy's convs with the supernet's weights, finetune it with cross-entropy "
             "(finetune.*), evaluate on validation and test. Writes RUNS/<id>.json and CKPT/<id>/.")
    sp.add_argument("--strategy", action="append", metavar="ID", help="derived strategy id (repeatable; default: all)")
    _files(sp, "--checkpoint", "--cache", "--derived", ckpt_dir=(layout.FINETUNE_CKPT, "DIR", "checkpoints"),
           runs_dir=(layout.FINETUNE_RUNS, "DIR", "run records"))

    sp = add("finetune-table", cmd_finetune_table, "gather the finetuning runs into one table",
             "Gather RUNS/<id>.json of every derived strategy into the accuracy table (CSV + Markdown).")
    _files(sp, "--derived", runs_dir=(layout.FINETUNE_RUNS, "DIR", "run records"),
           ranking=(layout.RANKING, "CSV", "ranking, for the supernet scores"),
           out=(layout.FINETUNE_TABLE, "CSV", "accuracy table"))
    _timing(sp, "finetune")

    sp = add("select-standalone", cmd_select, "choose the strategies to train from scratch",
             "Choose standalone.n_strategies scored strategies spanning the score range, deterministically: the "
             "uniform families all-S, all-ST, all-S+ST, then strategies evenly spaced in score rank.")
    _files(sp, "--ranking", out=(layout.SELECTION, "CSV", "selection"))

    sp = add("train-standalone", cmd_train_standalone, "train chosen strategies from scratch",
             "For each selected strategy (all, or those given with --strategy): a freshly initialised network of "
             "the supernet's architecture holding only the strategy's convs, trained with the standalone.* budget "
             "and the same seed, evaluated on validation and test. Writes RUNS/<id>.json and CKPT/<id>/.")
    sp.add_argument("--strategy", action="append", metavar="ID", help="selected strategy id (repeatable; default: all)")
    _files(sp, "--cache", checkpoint=(layout.SUPERNET, "PT", "supernet, for its architecture only"),
           selection=(layout.SELECTION, "CSV", "selection"), ckpt_dir=(layout.STANDALONE_CKPT, "DIR", "checkpoints"),
           runs_dir=(layout.STANDALONE_RUNS, "DIR", "run records"))

    sp = add("validate-ranking", cmd_validate, "rank correlations between stand-alone accuracy and supernet scores",
             "Gather the stand-alone runs; Kendall tau and Spearman rho between stand-alone accuracy and the "
             "supernet score (with and without BN recalibration) and the log-probability.")
    _files(sp, selection=(layout.SELECTION, "CSV", "selection"),
           runs_dir=(layout.STANDALONE_RUNS, "DIR", "run records"),
           ranking=(layout.RANKING, "CSV", "ranking, for the supernet scores"),
           out_dir=(layout.VALIDATION, "DIR", "output folder"))
    _timing(sp, "validate_ranking")

    sp = add("report", cmd_report, "write results/report.md and results/metrics.json",
             "Assemble the report a person reads first: the METHOD.md §9 checks (pass/fail with numbers), motion "
             "vs appearance accuracies, network- and layer-level tables and figures, derived networks, ranking "
             "fidelity, time per stage; and the scalar metrics for DVC.")
    _files(sp, "--cache", results=(layout.RESULTS, "DIR", "results folder"),
           checkpoint_dir=(layout.SUPERNET_DIR, "DIR", "supernet folder"), out=(layout.REPORT, "MD", "report"),
           metrics=(layout.METRICS, "JSON", "metrics"))

    sp = add("export", cmd_export, "a derived or finetuned network as a deployable file (torch.export, ONNX)",
             "Write the plain network of one strategy (only its kept convs, no gates) as a deployable file: "
             "'pt2' (torch.export, load with torch.export.load(path).module()) or 'onnx' (needs the onnx extra: "
             "pip install 'stfusion[onnx]'). The weights are the finetuned ones of CKPT/<id>/model.pt when the "
             "strategy was finetuned, else the supernet's. Input: clips (N, 3, T, H, W) normalised as in "
             "training; output: logits (N, classes). The file is checked against PyTorch on a random batch; a "
             "JSON file beside it records strategy, weights, input normalisation, classes, MACs and parameters.",
             needs_params=False)
    sp.add_argument("--strategy", required=True, metavar="ID|TEXT",
                    help="strategy id (e.g. stb) or text (e.g. 'S|ST|S+ST')")
    sp.add_argument("--format", default="pt2", choices=["pt2", "onnx"], help="file format (default: %(default)s)")
    _files(sp, "--checkpoint", finetuned=(layout.FINETUNE_CKPT, "CKPT", "finetuned networks, CKPT/<id>/model.pt"))
    sp.add_argument("--out", default=None, metavar="FILE",
                    help="output file (default: results/export/<id>.<format>)")

    sp = add("init", cmd_init, "a new project folder: params.yaml (and the Snakemake workflow)",
             "Write DIR/params.yaml, the commented defaults every command reads (edit the keys you change; "
             "the others keep their packaged defaults). With --workflow also the Snakemake workflow: "
             "DIR/Snakefile and DIR/workflow/ (rules, profiles, conda environment, report captions), so "
             "'snakemake --cores all' runs the pipeline there.", needs_params=False)
    sp.add_argument("dir", nargs="?", default=".", metavar="DIR", help="project folder (default: the working folder)")
    sp.add_argument("--workflow", action="store_true", help="also write the Snakemake workflow")
    sp.add_argument("--force", action="store_true", help="overwrite existing project files")
    sp = add("select-fidelity", cmd_select_fidelity, "choose the strategies of the ranking-fidelity study",
             "Choose fidelity.n_strategies scored strategies: the uniform families, then the others stratified "
             "over the score range (equal-width bins of the validation score, taken in rounds).")
    _files(sp, "--ranking", out=(layout.FIDELITY_SELECTION, "CSV", "selection"))

    sp = add("train-fidelity", cmd_train_fidelity, "train the study's strategies from scratch under several seeds",
             "For each selected strategy (all, or --strategy) and seed index (0 .. fidelity.seeds-1, or "
             "--seed-index): a fresh network of the supernet's architecture holding only the strategy's convs, "
             "initialised with seed + index, trained with the standalone.* budget. Writes RUNS/seed<j>/<id>.json.")
    sp.add_argument("--strategy", action="append", metavar="ID", help="selected strategy id (repeatable; default: all)")
    sp.add_argument("--seed-index", type=int, action="append", metavar="J",
                    help="seed index (repeatable; default: 0 .. fidelity.seeds-1)")
    _files(sp, "--cache", checkpoint=(layout.SUPERNET, "PT", "supernet, for its architecture only"),
           selection=(layout.FIDELITY_SELECTION, "CSV", "selection"),
           ckpt_dir=(layout.FIDELITY_CKPT, "DIR", "checkpoints"),
           runs_dir=(layout.FIDELITY_RUNS, "DIR", "run records"))

    sp = add("fidelity", cmd_fidelity, "statistics of the ranking-fidelity study",
             "Gather the study's runs: Kendall tau-b and Spearman rho (p-values, 95%% bootstrap intervals over "
             "strategies) of the supernet score, plain-BN score and log-probability against the mean "
             "stand-alone accuracy; the seed-to-seed ceiling; top-k overlap; regret; paired differences; a figure.")
    _files(sp, "--ranking", selection=(layout.FIDELITY_SELECTION, "CSV", "selection"),
           runs_dir=(layout.FIDELITY_RUNS, "DIR", "run records"),
           out_dir=(layout.FIDELITY_DIR, "DIR", "output folder"))
    sp.add_argument("--timing", default=f"{layout.FIDELITY_DIR}/timing.json", metavar="JSON",
                    help="where to record the seconds of the study (default: %(default)s; kept apart from "
                         "results/timing so the default run's total leaves the study out)")

    sp = add("compare", cmd_compare, "one ranked table across several runs' result folders",
             "Read results/metrics.json (and results/fidelity/fidelity.json where present) of every RESULTS "
             "folder given, or the experiments of 'dvc exp show --json' (--dvc-json), and write one table ranked "
             "by the best sampled strategy's validation top-1: entropy and its ratio to the start, drop-rate "
             "spread, best sampled, all-S / all-ST / all-S+ST, tau (CSV, Markdown and a figure).")
    sp.add_argument("results_dirs", nargs="*", metavar="RESULTS", help="result folders (one a run)")
    sp.add_argument("--dvc-json", metavar="JSON", help="output of 'dvc exp show --json' (instead of folders)")
    _files(sp, out_dir=(f"{layout.RESULTS}/compare", "DIR", "output folder"))
    return parser


# ------------------------------------------------------------------------------------------- commands
def _stage(args, params, stage: str) -> dict:
    """The part of ``params`` that ``stage`` reads (a stage that reads another key fails loudly)."""
    return layout.stage_params(params, stage)


def cmd_generate(args, params):
    from stfusion.stages import data

    sp = _stage(args, params, "generate")
    root = args.root or params["data"]["root"]
    with stage_io.timed("generate", args.timing) as info:
        info.update(data.generate(sp, root=root, progress=args.progress))


def _shard_arg(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    if not (sep and i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return int(i), int(n)


def cmd_prepare(args, params):
    from stfusion.stages import data

    shards = Path(args.cache) / "shards"
    timing = args.timing or (shards / "timing-{}-of-{}.json".format(*args.shard) if args.shard
                             else f"{layout.TIMING}/prepare.json")
    with stage_io.timed("prepare", timing) as info:
        info.update(data.prepare(_stage(args, params, "prepare"), root=args.root, cache_dir=args.cache,
                              workers=args.workers, progress=args.progress, shard=args.shard, merge=args.merge))
    if args.merge:
        runs = [read_json(shards / f"timing-{i}-of-{args.merge}.json") for i in range(args.merge)
                if (shards / f"timing-{i}-of-{args.merge}.json").is_file()]
        info.update(jobs=len(runs), run_seconds=round(sum(r["seconds"] for r in runs), 3))
        _add_run_seconds(timing, info)


def cmd_train_supernet(args, params):
    from stfusion.engine import distributed
    from stfusion.stages import supernet

    distributed.init_from_env()
    try:
        timing = args.timing if distributed.is_main() else None
        with stage_io.timed("train_supernet", timing) as info:
            info.update(supernet.train_supernet(_stage(args, params, "train_supernet"), cache_dir=args.cache,
                                         out_dir=args.out, progress=args.progress))
    finally:
        distributed.cleanup()


def cmd_sample(args, params):
    from stfusion.stages import strategies

    with stage_io.timed("sample_strategies", args.timing) as info:
        df = strategies.sample_strategies(_stage(args, params, "sample_strategies"), checkpoint=args.checkpoint, out=args.out)
        info["strategies"] = int(len(df))


def cmd_score(args, params):
    from stfusion.stages import strategies

    with stage_io.timed("score_strategies", args.timing) as info:
        df = strategies.score_strategies(_stage(args, params, "score_strategies"), checkpoint=args.checkpoint,
                                cache_dir=args.cache, candidates=args.candidates, out=args.out,
                                progress=args.progress)
        info["strategies"] = int(len(df))


def cmd_analyze(args, params):
    from stfusion.stages import strategies

    with stage_io.timed("analyze", args.timing):
        strategies.analyze(_stage(args, params, "analyze"), checkpoint=args.checkpoint, ranking=args.ranking,
                  drop_rates=args.drop_rates, out_dir=args.out_dir)


def cmd_derive(args, params):
    from stfusion.stages import derive

    with stage_io.timed("derive", args.timing) as info:
        df = derive.derive(_stage(args, params, "derive"), preference=args.preference, ranking=args.ranking, out=args.out,
                      checkpoint=args.checkpoint)
        info["strategies"] = int(len(df))


def cmd_finetune(args, params):
    from stfusion.engine import distributed
    from stfusion.stages import derive

    distributed.init_from_env()  # under torchrun: one process a GPU
    try:
        derive.finetune(_stage(args, params, "finetune"), checkpoint=args.checkpoint, cache_dir=args.cache,
                   derived=args.derived, strategies=args.strategy, ckpt_dir=args.ckpt_dir, runs_dir=args.runs_dir,
                   progress=args.progress)
    finally:
        distributed.cleanup()


def cmd_finetune_table(args, params):
    from stfusion.stages import derive

    with stage_io.timed("finetune", args.timing) as info:
        df = derive.finetune_table(derived=args.derived, runs_dir=args.runs_dir, ranking=args.ranking, out=args.out)
        info["jobs"] = int(len(df))
        info["run_seconds"] = float(df["seconds"].sum()) if "seconds" in df else 0.0
    _add_run_seconds(args.timing, info)


def cmd_select(args, params):
    from stfusion.stages import validate

    validate.select_standalone(_stage(args, params, "select_standalone"), ranking=args.ranking, out=args.out)


def cmd_train_standalone(args, params):
    from stfusion.engine import distributed
    from stfusion.stages import validate

    distributed.init_from_env()  # under torchrun: one process a GPU
    try:
        validate.train_standalone(_stage(args, params, "train_standalone"), checkpoint=args.checkpoint,
                           cache_dir=args.cache, selection=args.selection, strategies=args.strategy,
                           ckpt_dir=args.ckpt_dir, runs_dir=args.runs_dir, progress=args.progress)
    finally:
        distributed.cleanup()


def cmd_validate(args, params):
    from stfusion.stages import plain_runs
    from stfusion.stages import validate

    with stage_io.timed("validate_ranking", args.timing) as info:
        res = validate.validate_ranking(selection=args.selection, runs_dir=args.runs_dir, ranking=args.ranking,
                                 out_dir=args.out_dir)
        info["jobs"] = int(res.get("n") or 0)
        runs = plain_runs.gather_runs(res["strategies"], args.runs_dir, "stfusion train-standalone")
        info["run_seconds"] = float(runs["seconds"].sum()) if "seconds" in runs else 0.0
    _add_run_seconds(args.timing, info)


def _add_run_seconds(path, info: dict) -> None:
    """A gather stage's time is its own plus the seconds of the per-strategy jobs it gathers."""
    info["seconds"] = round(info["seconds"] + info.get("run_seconds", 0.0), 3)
    write_json(path, info)


def cmd_report(args, params):
    from stfusion.stages import report

    scalars = report.report(_stage(args, params, "report"), results=args.results, checkpoint_dir=args.checkpoint_dir,
                       cache_dir=args.cache, out=args.out, metrics=args.metrics)
    from stfusion.report.document import summary_lines

    log.info("report written to %s (%d of %d checks pass)", args.out, scalars.get("checks_passed", 0),
             scalars.get("checks_total", 0))
    for line in summary_lines(Path(args.results), Path(args.out)):
        log.info("%s", line)


def cmd_export(args, params):
    from stfusion.stages.export import export

    export(args.strategy, args.format, args.out, checkpoint=args.checkpoint, finetuned_dir=args.finetuned)


def cmd_init(args, params):
    from stfusion.stages.project import init_project

    written = init_project(args.dir, workflow=args.workflow, force=args.force)
    log.info("wrote %d file(s) to %s%s", len(written), args.dir,
             "; run the pipeline there with 'snakemake --cores all'" if args.workflow else "")


def cmd_select_fidelity(args, params):
    from stfusion.stages import fidelity as FS

    FS.select_fidelity(_stage(args, params, "select_fidelity"), ranking=args.ranking, out=args.out)


def cmd_train_fidelity(args, params):
    from stfusion.stages import fidelity as FS

    FS.train_fidelity(_stage(args, params, "train_fidelity"), checkpoint=args.checkpoint, cache_dir=args.cache,
                      selection=args.selection, strategies=args.strategy, seeds=args.seed_index,
                      ckpt_dir=args.ckpt_dir, runs_dir=args.runs_dir, progress=args.progress)


def cmd_fidelity(args, params):
    from stfusion.stages import fidelity as FS

    with stage_io.timed("fidelity", args.timing) as info:
        res = FS.fidelity_report(_stage(args, params, "fidelity"), selection=args.selection,
                                 runs_dir=args.runs_dir, ranking=args.ranking, out_dir=args.out_dir)
        info.update(jobs=res["n_strategies"] * res["n_seeds"], run_seconds=res["train_seconds"],
                    wall_seconds=res["wall_seconds"])
    _add_run_seconds(args.timing, info)


def cmd_compare(args, params):
    from stfusion.analysis.compare import compare

    if bool(args.results_dirs) == bool(args.dvc_json):
        raise StfusionError("give either result folders or --dvc-json FILE (one of the two)")
    table = compare(args.results_dirs, dvc_json=args.dvc_json, out_dir=args.out_dir)
    log.info("compared %d runs: %s", len(table), args.out_dir)


# ----------------------------------------------------------------------------------------------- main
def parse_overrides(items: list[str]) -> dict:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}`` (values read as YAML)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise StfusionError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = parsed
    return out


def setup_logging(log_file: str | None, quiet: bool = False) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root.addHandler(console)
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, mode="a")
        fh.setFormatter(fmt)
        root.addHandler(fh)
    logging.captureWarnings(True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log, args.quiet)
    if args.progress is None:
        args.progress = sys.stderr.isatty()
    try:
        from stfusion.config.loading import load_params

        stage_io.set_threads(args.threads)
        if args.params is None:
            args.params = os.environ.get("STFUSION_PARAMS") or None
        params = None
        if args.needs_params:
            params = load_params(args.params, parse_overrides(args.overrides))
            log.info("stfusion %s (params %s)", args.command, args.params or "packaged defaults + ./params.yaml")
        args.func(args, params)
    except StfusionError as exc:
        message = " ".join(str(exc).split("\n"))
        for h in logging.getLogger().handlers:
            if isinstance(h, logging.FileHandler):
                h.stream.write(f"stfusion: error: {message}\n")
                h.flush()
        print(f"stfusion: error: {message}", file=sys.stderr)
        return 2
    except ResumableStop as exc:
        log.warning("%s", exc)
        print(f"stfusion: {exc}", file=sys.stderr)
        return EXIT_RESUME
    except KeyboardInterrupt:
        print("stfusion: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
