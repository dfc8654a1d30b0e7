"""What a training job needs from SLURM: a request checked against the partition before anything is submitted,
and a job that requeues itself when its training stopped to be resumed.

    python -m stfusion.engine.slurm --launch python -m stfusion.cli train-supernet ...

runs the command and returns its exit status. Inside a SLURM job, a command that exits with
:data:`~stfusion.errors.EXIT_RESUME` (it wrote its checkpoint after SLURM's time-limit warning, a preemption's
SIGTERM or ``scancel --signal=USR1``) makes the job ask SLURM to requeue it: the job keeps its id, waits in the
queue, and its next run resumes from the checkpoint (``dvc repro`` in a job step,
``srun python -m stfusion.engine.slurm dvc repro``, reruns from its first unfinished stage). A job cancelled by
``scancel`` is not requeued (the user, or Snakemake on Ctrl-C, stopped it). While the command runs, SIGUSR1 is
ignored (it reaches every process of the job step; the command inherits the disposition, and the training
processes set their own handler), and SIGTERM and SIGINT are passed on to the command. The command's ``--log``
file keeps the log of every attempt (:class:`Attempts`).

This module imports nothing heavy: Snakemake reads :func:`request_problem` while it starts a run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from stfusion.errors import EXIT_RESUME

#: set for a command run with ``--launch`` (by :func:`stfusion.engine.launch.launch_prefix`): a training command
#: that finds it is not relaunched (:func:`stfusion.cli.app.relaunch`)
LAUNCHED = "STFUSION_LAUNCHED"

#: sacct's state of a job that ``scancel`` (of the user, or of Snakemake on Ctrl-C) stopped: ``CANCELLED by <uid>``
_CANCELLED = re.compile(r"^CANCELLED\b")


def gpus_in(gres: str | None) -> int:
    """The GPUs of a gres text: "gpu:4", "gpu:a100:2,gpu:v100:1" (3), "(null)" (0)."""
    return sum(int(n) for n in re.findall(r"gpu(?::[\w.-]+)?:(\d+)", gres or ""))


def job_request(resources, threads: int) -> dict[str, int]:
    """What a Snakemake job's resources ask of each node, as the executor plugin's sbatch options do:
    {"cpus", "mem_mb", "gpus", "nodes"}."""
    cpus = resources.get("cpus_per_task") or threads
    mem = (resources.get("mem_mb_per_cpu") or 0) * cpus or resources.get("mem_mb") or 0
    return {"cpus": cpus, "mem_mb": mem, "gpus": gpus_in(resources.get("gres")), "nodes": resources.get("nodes") or 1}


def final_state(state: str) -> str:
    """A job state as snakemake-executor-plugin-slurm should read it: ``CANCELLED by <uid>`` (a plain scancel)
    and ``PREEMPTED`` (PreemptMode=CANCEL, a job that did not requeue itself) are CANCELLED, a failure; the
    plugin (up to 2.8 at least) reads both as a job still running and waits for ever."""
    return "CANCELLED" if _CANCELLED.match(state) or state == "PREEMPTED" else state


def node_offers(partition: str | None) -> list[dict[str, int]]:
    """The nodes of ``partition`` (the cluster's default one for None or ""), each as {"cpus", "mem_mb", "gpus"},
    from ``sinfo``."""
    cmd = ["sinfo", "--noheader", "--Node", "--format=%c|%m|%G|%P"]
    lines = subprocess.run(cmd + (["--partition", partition] if partition else []), capture_output=True,
                           text=True, check=True, timeout=60).stdout.splitlines()
    nodes = []
    for line in lines:
        cpus, mem, gres, part = line.split("|")
        if partition or part.endswith("*"):  # without a partition: the default one's nodes
            nodes.append({"cpus": int(cpus), "mem_mb": int(mem.rstrip("+")), "gpus": gpus_in(gres)})
    return nodes


def request_problem(rule: str, request: dict[str, int], nodes: list[dict[str, int]],
                    partition: str | None) -> str | None:
    """None when ``request`` ({"cpus", "mem_mb", "gpus", "nodes"}: per node, and the node count) fits
    ``request["nodes"]`` of ``nodes``, else one line naming the rule, the request and what the partition offers."""
    where = f"partition {partition}" if partition else "the default partition"
    fit = [n for n in nodes if all(request[k] <= n[k] for k in ("cpus", "mem_mb", "gpus"))]
    if len(fit) >= request["nodes"]:
        return None
    asked = f"{request['nodes']} node(s) with {request['cpus']} CPUs, {request['mem_mb']} MB"
    asked += f", {request['gpus']} GPU(s)" if request["gpus"] else ""
    largest = {k: max((n[k] for n in nodes), default=0) for k in ("cpus", "mem_mb", "gpus")}
    return (f"rule {rule} asks SLURM for {asked}, but {where} has {len(nodes)} node(s), {len(fit)} of them large "
            f"enough (at most {largest['cpus']} CPUs, {largest['mem_mb']} MB, {largest['gpus']} GPU(s) a node): "
            f"lower it in your copy of the profile (cores; mem_mb under set-resources) or in params.yaml "
            f"(compute.device, compute.gpus_per_node, compute.nodes)")


def _job_cancelled(job_id: str) -> bool:
    """Whether sacct records the job as cancelled by ``scancel`` (not preempted, not warned of its time limit)."""
    out = subprocess.run(["sacct", "--noheader", "--allocations", "--parsable2", "--format=State", "--jobs", job_id],
                         capture_output=True, text=True, timeout=60)
    return any(_CANCELLED.match(s) for s in out.stdout.split())


class Attempts:
    """The command's ``--log`` file keeps every attempt: Snakemake deletes a job's log before each run, so the
    log of a run that stopped to be resumed is kept beside it (``<log>.earlier``) and put back in front of the
    next run's, which appends to it; a run that ends otherwise removes the copy."""

    def __init__(self, command: list[str]):
        log = command[command.index("--log") + 1] if "--log" in command[:-1] else None
        self.log, self.earlier = (Path(log), Path(f"{log}.earlier")) if log else (None, None)

    def restore(self) -> None:
        if self.earlier and self.earlier.is_file() and not (self.log.is_file() and self.log.stat().st_size):
            from stfusion.io.files import write_text

            write_text(self.log, self.earlier.read_text())

    def keep(self, resumed: bool) -> None:
        if self.earlier and resumed and self.log.is_file():
            from stfusion.io.files import write_text

            write_text(self.earlier, self.log.read_text())
        elif self.earlier:
            self.earlier.unlink(missing_ok=True)


def run(command: list[str], launch: bool = False) -> int:
    """Run ``command``; inside a SLURM job, requeue the job when it exits with EXIT_RESUME (see the module).
    ``launch``: the command is a training launch (it is told so through the environment)."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # inherited: the training processes install their own handler
    attempts = Attempts(command)
    attempts.restore()
    child = subprocess.Popen(command, env={**os.environ, **({LAUNCHED: "1"} if launch else {})})
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda signum, frame: child.send_signal(signum))
    status = child.wait()
    attempts.keep(status == EXIT_RESUME)
    job = os.environ.get("SLURM_JOB_ID")
    if status == EXIT_RESUME and job and not _job_cancelled(job):
        print(f"stfusion: training stopped to resume; requeueing SLURM job {job}", file=sys.stderr, flush=True)
        subprocess.run(["scontrol", "requeue", job], check=False, timeout=60)
    return status


if __name__ == "__main__":
    launch = sys.argv[1:2] == ["--launch"]
    sys.exit(run(sys.argv[1 + launch:], launch))
