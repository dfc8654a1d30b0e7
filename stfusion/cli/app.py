"""``stfusion``: the command line of the pipeline. One subcommand a stage; Snakemake rules and DVC stages call
these commands, and so can a person.

``stfusion --help`` lists the commands, ``stfusion COMMAND --help`` describes one; each is declared once, in
:mod:`stfusion.cli.commands`. Every subcommand takes ``--params`` (default ``params.yaml``), ``--set KEY=VALUE``
overrides, explicit input and output paths (defaults: the standard layout), ``--log FILE`` and ``--threads N``.
Errors with a plain explanation end the command with one line ``stfusion: error: ...`` and exit status 2. A
training command stopped by SIGTERM, SIGUSR1 or Ctrl-C writes its checkpoint and exits with status 75
(``EXIT_RESUME``); running it again resumes.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
import sys
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning. On a shared or oversubscribed CPU, spinning threads make every
# parallel torch op wait for descheduled peers: a training step measured 10x slower with 2 threads than with 1
# on a busy 2-core machine, and as fast as 1 thread with this setting. It must be set before torch is imported;
# an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import yaml  # noqa: E402

from stfusion import __version__  # noqa: E402
from stfusion.cli.commands import COMMANDS, Command  # noqa: E402
from stfusion.config import layout  # noqa: E402
from stfusion.config.layout import LAYOUT  # noqa: E402
from stfusion.errors import EXIT_RESUME, ResumableStop, StfusionError  # noqa: E402
from stfusion.stages import runtime as stage_io  # noqa: E402

log = logging.getLogger("stfusion")

EPILOG = (f"Paths default to the standard layout ({Path(LAYOUT.cache).parent}/, {LAYOUT.checkpoints}/, "
          f"{LAYOUT.results}/). See README.md for what every stage writes.")


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


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command in :data:`~stfusion.cli.commands.COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="stfusion", description=__doc__.split("\n\n")[0].replace("``", ""), epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"stfusion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    common = _common()
    for cmd in COMMANDS:
        sp = sub.add_parser(cmd.name, parents=[common], help=cmd.help, description=cmd.description, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(cmd=cmd)
        groups: dict = {}  # exclusive name -> its mutually exclusive group
        for arg in cmd.arguments():
            if arg.exclusive and arg.exclusive not in groups:
                groups[arg.exclusive] = sp.add_mutually_exclusive_group()
            (groups[arg.exclusive] if arg.exclusive else sp).add_argument(arg.flag, **arg.spec)
    return parser


# ------------------------------------------------------------------------------------------- dispatch
@contextmanager
def _processes(distributed: bool):
    """Under ``torchrun``, one process a GPU for a distributed command (the process group is set up before the
    stage and torn down after it); yields whether this is the main process."""
    if not distributed:
        yield True
        return
    from stfusion.engine import distributed as dist

    dist.init_from_env()
    try:
        yield dist.is_main()
    finally:
        dist.cleanup()


def _run_supernet(cmd: Command, args: argparse.Namespace, params: dict | None) -> None:
    """A supernet path left at its default names the run's supernet (:meth:`RunLayout.run_supernet`: after the
    workflow, the first seed's replicate)."""
    for arg in cmd.arguments():
        if arg.spec.get("default") == LAYOUT.supernet and getattr(args, arg.dest) == LAYOUT.supernet:
            from stfusion.config.loading import load_params

            seeds = (params or load_params(args.params))["seeds"]
            setattr(args, arg.dest, LAYOUT.run_supernet(seeds).supernet)


def relaunch(cmd: Command, argv: list[str], params: dict | None) -> None:
    """A distributed command started by itself (a DVC stage, in an ``sbatch`` allocation or not, or by hand)
    while compute.gpus_per_node x compute.nodes asks for several processes, or inside a SLURM job: replace this
    process with the same command under the launcher of the Snakemake training rules
    (:func:`stfusion.engine.launch.launch_prefix`: torchrun on this node or srun + torchrun over the
    allocation's nodes, under :mod:`stfusion.engine.slurm`, which requeues the job when training stops to be
    resumed). Returns when there is nothing to relaunch: one process outside SLURM, or a launched command."""
    if not cmd.distributed:
        return
    from stfusion.config.settings import Settings
    from stfusion.engine.launch import launch_prefix
    from stfusion.engine.slurm import LAUNCHED

    if LAUNCHED in os.environ or "WORLD_SIZE" in os.environ:
        return

    compute, in_job = Settings.from_params(params).compute, bool(os.environ.get("SLURM_JOB_ID"))
    if compute.gpus_per_node * compute.nodes == 1 and not in_job:
        return
    if compute.nodes > 1 and not in_job:
        raise StfusionError(f"compute.nodes: {compute.nodes} needs a SLURM allocation of as many nodes (sbatch "
                            f"--nodes={compute.nodes}); outside one, set compute.nodes: 1")
    prefix = launch_prefix(compute.gpus_per_node, compute.nodes, compute.max_restarts)
    line = f"{prefix} stfusion.cli {shlex.join(argv)}"
    log.info("%d x %d training processes: %s", compute.nodes, compute.gpus_per_node, line)
    logging.shutdown()
    os.execvp("sh", ["sh", "-c", line])


def run(cmd: Command, args: argparse.Namespace, params: dict | None) -> None:
    """Run ``cmd``'s stage with its part of ``params`` and the parsed ``args``; record its seconds when it is
    timed (the main process of a distributed command only)."""
    _run_supernet(cmd, args, params)
    if cmd.resolve:
        cmd.resolve(args, params)
    module, _, name = cmd.stage.partition(":")
    stage = getattr(importlib.import_module(module), name)
    first = (layout.stage_params(params, cmd.stage_name),) if cmd.params else ()
    kwargs = {arg.to: getattr(args, arg.dest) for arg in cmd.arguments() if arg.to}
    kwargs.update(cmd.fixed)
    if cmd.progress:
        kwargs["progress"] = args.progress
    with _processes(cmd.distributed) as main_process:
        clock = stage_io.timed(cmd.timed, args.timing if main_process else None) if cmd.timed else nullcontext({})
        with clock as info:
            result = stage(*first, **kwargs)
            info.update((cmd.done(result, args) if cmd.done else None) or {})


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


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as one log line: stfusion's own by its message, another with its category and origin."""
    text = " ".join(str(message).split())
    return text if category.__module__.startswith("stfusion") else f"{category.__name__}: {text} ({filename}:{lineno})"


def setup_logging(log_file: str | None, quiet: bool = False) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
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
    warnings.formatwarning = _one_line_warning
    logging.captureWarnings(True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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
        if args.cmd.params:
            params = load_params(args.params, parse_overrides(args.overrides))
            log.info("stfusion %s (params %s)", args.command, args.params or "packaged defaults + ./params.yaml")
        relaunch(args.cmd, argv, params)
        run(args.cmd, args, params)
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
        print("stfusion: interrupted; run the same command again: training resumes from last.pt, scoring keeps its "
              "finished chunks", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
