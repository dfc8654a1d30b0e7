"""On a real SLURM (tests/slurm/start-cluster.sh starts one node on this machine; .ci/run does): a job runs and sacct
lists it; a request the partition cannot hold stops a Snakemake run before anything is submitted; a training job
warned with SIGUSR1 checkpoints, exits 75, requeues itself and resumes, and its history equals an uninterrupted
run's; a job cancelled with a plain scancel ends the Snakemake run instead of leaving it waiting; the README's
sbatch script of `dvc repro` runs the tiny pipeline in one job, its training stages under the launcher.

Each SLURM job costs seconds here (the whole tiny pipeline as Snakemake's one job a rule takes minutes and is
not a test; as one `dvc repro` job it takes about as long as without SLURM), so these tests submit the fewest
jobs that show each behaviour."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stfusion.config.loading import deep_merge
from stfusion.engine.launch import launch_prefix
from stfusion.engine.slurm import node_offers

from conftest import GIT_ENV, REPO, dvc_project

TINY = REPO / "tests" / "configs" / "tiny.yaml"


def _no_cluster() -> str | None:
    """Why the SLURM tests cannot run here, or None when sbatch answers."""
    if shutil.which("sbatch") is None:
        return "sbatch is not installed (tests/slurm/start-cluster.sh installs and starts a one-node SLURM)"
    out = subprocess.run(["sbatch", "--test-only", "--wrap", "true"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return f"sbatch does not answer (tests/slurm/start-cluster.sh starts a local SLURM): {out.stderr.strip()}"
    return None


REASON = _no_cluster()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(REASON is not None, reason=str(REASON))]


def _sh(*cmd: str, check: bool = True, timeout: float = 60) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed: {out.stderr}")
    return out.stdout


def _state(job: str) -> str:
    """The job's state as sacct records it ("" while slurmdbd has not heard of it)."""
    return _sh("sacct", "-X", "-n", "-P", "-o", "State", "-j", job).strip()


def _wait(what: str, condition, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_a_job_runs_and_sacct_lists_it(tmp_path):
    job = _sh("sbatch", "--parsable", "--wait", "-o", str(tmp_path / "out"), "--wrap", "echo ran").strip()
    assert (tmp_path / "out").read_text() == "ran\n"
    _wait("sacct", lambda: _state(job) == "COMPLETED", 30)


def _copy_profile(tmp_path: Path, **block) -> Path:
    """The README's `cp -r workflow/profiles/slurm my-cluster`, its block edited."""
    profile = tmp_path / "my-cluster"
    shutil.copytree(REPO / "workflow" / "profiles" / "slurm", profile)
    config = profile / "config.yaml"
    config.write_text(yaml.safe_dump(deep_merge(yaml.safe_load(config.read_text()), block), sort_keys=False))
    return profile


def _snakemake(tmp_path: Path, profile: Path, *args: str, timeout: float = 120):
    return subprocess.run(["snakemake", "-s", str(REPO / "Snakefile"), "--profile", str(profile), "-d",
                           str(tmp_path), "--configfile", str(TINY), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=timeout)


def test_a_request_the_partition_cannot_hold_stops_the_run_before_any_submission(tmp_path):
    """compute.device auto on this GPU-less node: train_supernet's gpu:1 is refused at once, in one line."""
    auto = tmp_path / "gpus.yaml"
    auto.write_text(yaml.safe_dump({"compute": {"device": "auto"}}))
    out = _snakemake(tmp_path, _copy_profile(tmp_path, cores=2), "--configfile", str(auto), "--until",
                     "train_supernet")
    assert out.returncode != 0
    lines = [line for line in (out.stdout + out.stderr).splitlines() if "asks SLURM for" in line]
    assert len(lines) == 1, out.stderr[-3000:]
    assert "rule train_supernet asks SLURM for 1 node(s) with 2 CPUs, 8000 MB, 1 GPU(s)" in lines[0], lines[0]
    assert "0 GPU(s) a node" in lines[0]
    submitted_here = [line for line in _sh("sacct", "-X", "-n", "-P", "-o", "JobID,WorkDir").splitlines()
                      if line.endswith(f"|{tmp_path}")]
    assert not submitted_here, "a job was submitted"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder with the tiny params (supernet: 25 epochs, so that the signal comes mid-run) and a prepared
    cache, and an uninterrupted run's history."""
    root = tmp_path_factory.mktemp("slurm")
    params = deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()), yaml.safe_load(TINY.read_text()))
    (root / "params.yaml").write_text(yaml.safe_dump(deep_merge(params, {"supernet": {"epochs": 25}})))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for stage in ("generate", "prepare", "train-supernet"):
        subprocess.run([sys.executable, "-m", "stfusion.cli", stage, "--no-progress"], cwd=root, env=env,
                       check=True, capture_output=True, timeout=300)
    history = (root / "checkpoints" / "supernet" / "history.csv").read_bytes()
    shutil.rmtree(root / "checkpoints")
    return root, history


def test_a_training_job_warned_by_slurm_checkpoints_requeues_itself_and_resumes(trained):
    """`scancel --signal=USR1` (what --signal=USR1@N sends before the time limit): exit 75, the job requeues itself
    under the same id, its next run resumes from the checkpoint, and history.csv equals the uninterrupted run's."""
    root, history = trained
    script = root / "train.sh"
    # the launch of the Snakemake training rules (stfusion.engine.launch.launch_prefix), in a job step as the
    # executor plugin runs it
    script.write_text("#!/bin/bash\nexport OMP_NUM_THREADS=1\n"
                      "srun python -m stfusion.engine.slurm --launch python -m stfusion.cli train-supernet "
                      "--no-progress --threads 1 --log train.log\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    job = subprocess.run(["sbatch", "--parsable", "--requeue", "-c", "1", "--mem", "2000", "-o",
                          str(root / "slurm-%j.out"), "--open-mode", "append", str(script)], cwd=root, env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    last = root / "checkpoints" / "supernet" / "last.pt"
    _wait("the first checkpoint", last.exists, 120)
    _sh("scancel", "--signal=USR1", job)
    _wait("the requeue", lambda: "PENDING" in _sh("squeue", "-h", "-j", job, "-o", "%T"), 60)
    (root / "train.log").unlink()  # what Snakemake does before it runs a job again
    _wait("the resumed run", lambda: _state(job) == "COMPLETED", 180)
    log = (root / f"slurm-{job}.out").read_text()
    assert "received SIGUSR1" in log and f"requeueing SLURM job {job}" in log, log[-3000:]
    assert "resuming checkpoints/supernet from epoch" in log, log[-3000:]
    assert _sh("sacct", "-X", "-D", "-n", "-P", "-o", "State", "-j", job).split() == ["REQUEUED", "COMPLETED"]
    assert (root / "checkpoints" / "supernet" / "history.csv").read_bytes() == history
    # the command's log keeps both runs, as it does when Snakemake deletes it before the second
    train_log = (root / "train.log").read_text()
    assert "received SIGUSR1" in train_log and "resuming checkpoints/supernet" in train_log


def test_a_job_cancelled_by_scancel_ends_the_run_instead_of_hanging(tmp_path):
    """sacct says `CANCELLED by <uid>`, which the executor plugin alone reads as still running: the workflow reads
    it as a failure, and the run (retries: 0 here) stops instead of waiting for ever."""
    profile = _copy_profile(tmp_path, cores=2, retries=0)
    run = subprocess.Popen(["snakemake", "generate_builtin", "-s", str(REPO / "Snakefile"), "--profile", str(profile),
                            "-d", str(tmp_path), "--configfile", str(TINY)], cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    jobs = []

    def running():
        jobs[:] = _sh("squeue", "-h", "-t", "RUNNING", "-o", "%i").split()
        return bool(jobs)

    try:
        _wait("the job", running, 90)
        job = jobs[0]
        _sh("scancel", job)
        out, _ = run.communicate(timeout=90)
    finally:
        run.kill()
    assert run.returncode != 0
    assert f"SLURM-job '{job}' failed, SLURM status is: 'CANCELLED'" in out, out[-3000:]
    assert _state(job).startswith("CANCELLED by ")


def test_dvc_repro_in_the_readmes_sbatch_job_runs_every_stage_and_trains_through_the_launcher(tmp_path):
    """The README's sbatch script of `dvc repro`, submitted from a git + DVC project (tiny parameters, a local
    remote): the job, its batch step and its srun step complete in sacct, every stage of dvc.yaml runs in it, and
    each training stage, started by DVC as one process inside the job, relaunches itself under the launcher of the
    Snakemake training rules (stfusion.cli.app.relaunch: stfusion.engine.slurm --launch) and finishes there."""
    repo = tmp_path / "repo"
    dvc_project(repo, tmp_path / "remote", deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()),
                                                      yaml.safe_load(TINY.read_text())))
    blocks = re.findall(r"```bash\n(#!/bin/bash\n.*?)```", (REPO / "README.md").read_text(), re.S)
    script = next(b for b in blocks if "dvc repro" in b)
    (repo / "repro.sbatch").write_text(script)
    # the script's memory (8000 MB), or what this node has when less: a command-line option overrides #SBATCH
    mem = min(8000, max(n["mem_mb"] for n in node_offers(None)))
    job = subprocess.run(["sbatch", "--parsable", f"--mem={mem}", "repro.sbatch"], cwd=repo, capture_output=True,
                         text=True, check=True, env={**os.environ, **GIT_ENV}).stdout.strip()
    try:
        _wait("the dvc repro job", lambda: _state(job) not in ("", "PENDING", "RUNNING"), 600)
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=60)
    log = (repo / f"slurm-{job}.out").read_text()  # sbatch's default output: the project folder
    steps = _sh("sacct", "-n", "-P", "-o", "JobID,JobName,State,ExitCode", "-j", job).split()
    assert steps == [f"{job}|stfusion-dvc|COMPLETED|0:0", f"{job}.batch|batch|COMPLETED|0:0",
                     f"{job}.0|python|COMPLETED|0:0"], log[-3000:]
    declared = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    stages = {f"{name}@0" if "foreach" in stage else name for name, stage in declared.items()}
    assert set(re.findall(r"Running stage '([\w@-]+)'", log)) == stages
    # each training command logs its start twice: started by DVC, then launched, with the launch line between
    for log_name, command in (("train_supernet/seed0", "train-supernet"), ("finetune", "finetune"),
                              ("train_standalone", "train-standalone")):
        lines = (repo / "logs" / f"{log_name}.log").read_text().splitlines()
        starts = [i for i, line in enumerate(lines) if f"INFO stfusion: stfusion {command} (params" in line]
        relaunch = [i for i, line in enumerate(lines) if "training processes:" in line]
        assert len(starts) == 2 and len(relaunch) == 1 and starts[0] < relaunch[0] < starts[1], lines[:5]
        assert f"1 x 1 training processes: {launch_prefix(1, 1)} stfusion.cli {command} " in lines[relaunch[0]]
