"""How the Snakemake training rules start a training command on ``nodes x gpus_per_node`` processes, and the
torchrun agent they use. Each launch runs under ``python -m stfusion.engine.slurm --launch``, which requeues a
SLURM job whose training stopped to be resumed (elsewhere it only runs the command):

    one process:       python -m stfusion.cli train-supernet ...
    one node, G > 1:   python -m stfusion.engine.launch --standalone --nproc-per-node=G --max-restarts=K -m stfusion.cli ...
    N > 1 nodes:       srun --overlap --nodes=N --ntasks-per-node=1 python -m stfusion.engine.launch --nnodes=N
                         --nproc-per-node=G --max-restarts=K --rdzv-backend=c10d
                         --rdzv-endpoint=<first node of the job>:PORT --rdzv-id=<job id> -m stfusion.cli ...

``python -m stfusion.engine.launch`` is ``torchrun`` (same arguments) whose agent ignores SIGUSR1: SLURM's warning
signal (``--signal=USR1@300`` in workflow/profiles/slurm) goes to every process of the job step, and an agent
that died of it would take its workers down before they could write their checkpoint. The workers (the training
processes) handle SIGUSR1 and SIGTERM themselves (:mod:`stfusion.engine.train`). ``--max-restarts=K``: a lost rank makes
torchrun restart every rank, which resume from the last checkpoint.

This module imports nothing heavy: Snakemake reads :func:`launch_prefix` while parsing the workflow.
"""

from __future__ import annotations

import signal
import sys


def launch_prefix(gpus_per_node: int = 1, nodes: int = 1, max_restarts: int = 3, port: int = 29500) -> str:
    """The command line before ``stfusion.cli <command> ...`` (a module name follows) for ``nodes`` nodes with
    ``gpus_per_node`` training processes each, run under :mod:`stfusion.engine.slurm` (a SLURM job whose training
    stopped to be resumed requeues itself; elsewhere it only runs the command)."""
    if gpus_per_node < 1 or nodes < 1:
        raise ValueError(f"gpus_per_node and nodes must be at least 1, got {gpus_per_node} and {nodes}")
    return f"python -m stfusion.engine.slurm --launch {_processes(gpus_per_node, nodes, max_restarts, port)}"


def _processes(gpus_per_node: int, nodes: int, max_restarts: int, port: int) -> str:
    """The launch of the training processes: one, torchrun on one node, or srun + torchrun on several."""
    if gpus_per_node == 1 and nodes == 1:
        return "python -m"
    agent = f"python -m stfusion.engine.launch --nproc-per-node={gpus_per_node} --max-restarts={max_restarts}"
    if nodes == 1:
        return f"{agent} --standalone -m"
    head = '$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
    return (f"srun --overlap --nodes={nodes} --ntasks-per-node=1 {agent} --nnodes={nodes} --rdzv-backend=c10d "
            f"--rdzv-endpoint={head}:{port} --rdzv-id=$SLURM_JOB_ID-${{SLURM_RESTART_COUNT:-0}} -m")


def main(argv: list[str]) -> int:
    """``torchrun`` with SIGUSR1 ignored. Everything after ``-m MODULE`` goes to the module untouched (torchrun's
    own parser would take ``--log`` for an abbreviation of its ``--log-dir``)."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # inherited by the workers until they install their handler
    from torch.distributed.run import parse_args, run

    cut = argv.index("-m") + 2 if "-m" in argv else len(argv)
    args = parse_args(argv[:cut])
    args.training_script_args = argv[cut:]
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
