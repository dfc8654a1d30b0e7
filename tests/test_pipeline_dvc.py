"""The DVC front end: its parameter lists agree with the stages' own, and, in a temporary git repository with a
local DVC remote, `dvc repro` runs the tiny configuration end to end, `dvc push` / `dvc pull` restore
checkpoints and tables in a fresh clone, and `dvc exp run -S` of a scoring parameter does not retrain."""

from __future__ import annotations

import ast
import hashlib
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import GIT_ENV, REPO, dvc_project
from stfusion.cli.commands import COMMANDS
from stfusion.config.loading import deep_merge
from stfusion.config.layout import LAYOUT, STAGE_PARAMS

TINY = REPO / "tests" / "configs" / "tiny.yaml"
SEED0 = LAYOUT.of_seed(0)  # the tiny configuration's one supernet
pytestmark = pytest.mark.skipif(shutil.which("dvc") is None or shutil.which("git") is None,
                                reason="dvc and git are needed")


FIRST_SEED = yaml.safe_load((REPO / "params.yaml").read_text())["seeds"][0]


def _load(path: Path) -> dict:
    """The stages of a dvc.yaml, a `foreach` stage as its `do` for the first seed (as DVC expands it)."""
    text = path.read_text().replace("${seeds[0]}", str(FIRST_SEED))
    stages = yaml.safe_load(text)["stages"]
    return {name: yaml.safe_load(yaml.safe_dump(s["do"]).replace("${item}", str(FIRST_SEED))) if "foreach" in s
            else s for name, s in stages.items()}


def test_dvc_params_match_the_stages():
    stages = _load(REPO / "dvc.yaml")
    study = _load(REPO / "studies" / "fidelity" / "dvc.yaml")
    assert not set(stages) & set(study) and all(s["wdir"] == "../.." for s in study.values())
    for name, stage in {**stages, **study}.items():
        listed = sorted(stage.get("params", []))
        assert listed == sorted(STAGE_PARAMS.get(name, [])), name
        assert stage["cmd"], name


def test_dvc_outputs_do_not_overlap():
    stages = _load(REPO / "dvc.yaml")
    outs = [o if isinstance(o, str) else next(iter(o)) for s in stages.values()
            for o in s.get("outs", []) + s.get("metrics", [])]
    assert len(outs) == len(set(outs))
    for a in outs:
        for b in outs:
            assert a == b or not b.startswith(a.rstrip("/") + "/"), (a, b)


# ------------------------------------------------------------------------------- code dependencies
def _module_file(name: str) -> Path | None:
    """The file of module ``name`` (``stfusion.a.b``) in the checkout, or None."""
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(path: Path, skip: frozenset[str]) -> set[str]:
    """The stfusion modules ``path`` imports anywhere (inside functions too), with the packages above them;
    imports under ``if TYPE_CHECKING:`` do not run and are left out, and so are the modules in ``skip``."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
                   for stmt in node.body for n in ast.walk(stmt)}
    targets: set[str] = set()  # `from a import b`: module a.b if there is one, else a
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and id(node) not in typing_only:
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and id(node) not in typing_only:
            targets.update(f"{node.module}.{a.name}" if _module_file(f"{node.module}.{a.name}") else node.module
                           for a in node.names)
    parts = [name.split(".") for name in targets - skip if name.split(".")[0] == "stfusion"]
    return {".".join(p[:i]) for p in parts for i in range(1, len(p) + 1) if _module_file(".".join(p[:i]))}


def code_closure(command: str) -> set[str]:
    """The files of stfusion that ``python -m stfusion.cli <command>`` runs: the command line (every module
    of stfusion/cli), the command's stage module, and what they import, transitively. The command line imports
    stfusion.engine.distributed, launch and slurm only for a distributed command."""
    cmd = next(c for c in COMMANDS if c.name == command)
    skip = frozenset() if cmd.distributed else frozenset(
        {"stfusion.engine.distributed", "stfusion.engine.launch", "stfusion.engine.slurm"})
    todo = {f"stfusion.cli.{p.stem}" for p in (REPO / "stfusion" / "cli").glob("*.py")}
    todo |= {"stfusion", "stfusion.cli", cmd.stage.partition(":")[0]}
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        seen.add(name)
        todo |= _imported(_module_file(name), skip if name.startswith("stfusion.cli.") else frozenset()) - seen
    return {_module_file(name).relative_to(REPO).as_posix() for name in seen}


def _dvc_stages() -> dict[str, dict]:
    return {**_load(REPO / "dvc.yaml"), **_load(REPO / "studies" / "fidelity" / "dvc.yaml")}


def _layout_paths(layout) -> dict[str, str]:
    return {name: getattr(layout, name) for name, v in vars(type(layout)).items() if isinstance(v, property)}


#: a path of the standard layout -> the same file of the first seed's replicate (a `foreach` stage's)
OF_FIRST_SEED = {p: _layout_paths(LAYOUT.of_seed(FIRST_SEED))[name] for name, p in _layout_paths(LAYOUT).items()}


def _command(stage: dict) -> tuple[str, list[str]]:
    words = shlex.split(stage["cmd"])
    assert words[:3] == ["python", "-m", "stfusion.cli"], stage["cmd"]
    return words[3], words[4:]


def _covered(path: str, listed: list[str]) -> bool:
    """``path`` is listed, lies in a listed folder, or is a folder holding a listed path."""
    return any(path == d or path.startswith(d.rstrip("/") + "/") or d.startswith(path.rstrip("/") + "/")
               for d in listed)


def test_dvc_code_deps_cover_every_module_a_stage_imports():
    """DVC reruns a stage when code it runs changes: every module of its command's import closure is a dep
    (a file, or a folder above it), and every code dep is code the stage runs."""
    for name, stage in _dvc_stages().items():
        closure = code_closure(_command(stage)[0])
        deps = [d for d in stage.get("deps", []) if d.startswith("stfusion")]
        missing = sorted(f for f in closure if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))
        assert not missing, f"dvc stage {name}: add to its deps {missing}"
        stale = [d for d in deps if not any(f == d or f.startswith(d.rstrip("/") + "/") for f in closure)]
        assert not stale, f"dvc stage {name}: {stale} in its deps is code it does not run"


def test_dvc_commands_use_the_standard_layout():
    """Each path a dvc stage passes is the command's default (the standard layout: one definition) and is
    listed among the stage's deps (a file it reads) or outs (a file it writes)."""
    for name, stage in _dvc_stages().items():
        command, words = _command(stage)
        args = {a.flag: a for a in next(c for c in COMMANDS if c.name == command).arguments() if a.path}
        deps = [str(d) for d in stage.get("deps", [])]
        outs = [o if isinstance(o, str) else next(iter(o)) for o in stage.get("outs", []) + stage.get("metrics", [])]
        for flag, value in zip(words, words[1:]):
            if flag not in args:
                continue
            default = args[flag].spec.get("default")
            if not isinstance(default, str):  # no default (or a repeatable option's empty list)
                continue
            seeded = {OF_FIRST_SEED.get(default), LAYOUT.of_seed(FIRST_SEED).timing(name)}
            assert value in {default} | seeded, f"dvc stage {name}: {flag} {value} (layout: {default})"
            assert _covered(value, deps if args[flag].path == "in" else outs), f"dvc stage {name}: {flag} {value}"


def run(cmd, cwd, timeout=900):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **GIT_ENV})
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out.stdout + out.stderr


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w@-]+)'", output))


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory):
    """A git + DVC repository holding the project (tiny parameters) with a local remote, after `dvc repro`."""
    base = tmp_path_factory.mktemp("dvc")
    repo = base / "repo"
    params = deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()), yaml.safe_load(TINY.read_text()))
    dvc_project(repo, base / "remote", params)
    out = run(["dvc", "repro"], repo)
    return repo, base, out


@pytest.mark.slow
def test_dvc_repro_end_to_end(dvc_repo):
    repo, _, out = dvc_repo
    seeds = yaml.safe_load((repo / "params.yaml").read_text())["seeds"]
    declared = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    stages = {f"{name}@{s}" for name, st in declared.items() if "foreach" in st for s in seeds}
    assert ran_stages(out) == stages | {name for name, st in declared.items() if "foreach" not in st}
    for path in ("results/strategies/ranking.csv", "results/analysis/preference.csv", "results/analysis/preference.png",
                 "results/validation/ranking_fidelity.json", "results/metrics.json", "results/report.md",
                 SEED0.supernet, LAYOUT.stability, "results/finetune/accuracy.csv"):
        assert (repo / path).is_file(), path
    shown = run(["dvc", "metrics", "show"], repo)
    assert "seed" in shown and "checks_passed" in shown and "torch" not in shown  # numbers only
    # the default pipeline (the study, studies/fidelity/dvc.yaml, is its own and has not run)
    assert "Data and pipelines are up to date" in run(["dvc", "status", "dvc.yaml"], repo)


@pytest.mark.slow
def test_dvc_plots_show_renders_every_plot(dvc_repo):
    repo, base, _ = dvc_repo
    out = base / "plots"
    run(["dvc", "plots", "show", "-o", str(out)], repo)
    html = (out / "index.html").read_text()
    first = yaml.safe_load((repo / "params.yaml").read_text())["seeds"][0]
    declared = yaml.safe_load((repo / "dvc.yaml").read_text().replace("${seeds[0]}", str(first)))["plots"]
    for plot in declared:
        name = plot if isinstance(plot, str) else next(iter(plot))
        assert name in html, name  # every plot is rendered (images by path, data plots by id)
    templates = {next(iter(p.values()))["template"] for p in declared if isinstance(p, dict)}
    assert templates == {"linear", "scatter", "confusion"}
    assert '"predicted"' in html and '"val_top1"' in html  # the data of the confusion matrix and of the curves


@pytest.mark.slow
def test_dvc_push_pull_restores_outputs(dvc_repo):
    repo, base, _ = dvc_repo
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "results"], repo)
    run(["dvc", "push"], repo)
    clone = base / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], base)
    assert not (clone / "checkpoints").exists()
    assert md5(clone / "results" / "metrics.json") == md5(repo / "results" / "metrics.json")  # git, not DVC
    run(["dvc", "pull"], clone)
    for path in (SEED0.supernet, SEED0.history, "data/cache/manifest.csv",
                 "results/strategies/ranking.csv", "results/analysis/preference.csv", "results/metrics.json",
                 "results/validation/ranking_fidelity.json", "results/report.md"):
        assert md5(clone / path) == md5(repo / path), path
    assert any((clone / "checkpoints" / "finetune").iterdir())
    assert "Data and pipelines are up to date" in run(["dvc", "status", "dvc.yaml"], clone)


@pytest.mark.slow
def test_dvc_exp_run_scoring_parameter_does_not_retrain_and_applies(dvc_repo):
    """`dvc exp run -S scoring.calib_batches=2`, then `dvc exp apply <exp>`: the study's outputs, which never ran,
    are not asked for."""
    repo, _, _ = dvc_repo
    run(["git", "add", "-A"], repo)
    if subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=repo).returncode:
        run(["git", "commit", "-qm", "results"], repo)
    model = repo / SEED0.supernet
    before = (md5(model), model.stat().st_mtime_ns)
    out = run(["dvc", "exp", "run", "-S", "scoring.calib_batches=2"], repo)
    ran = ran_stages(out)
    assert "score_strategies@0" in ran and "report" in ran
    assert not ran & {"generate", "prepare", "train_supernet@0", "sample_strategies@0"}, ran
    assert (md5(model), model.stat().st_mtime_ns) == before
    assert yaml.safe_load((repo / "params.yaml").read_text())["scoring"]["calib_batches"] == 2
    assert "No file hash info found" not in out, out
    name = re.search(r"Ran experiment\(s\): (\S+)", out).group(1)
    run(["dvc", "exp", "apply", name], repo)
    assert yaml.safe_load((repo / "params.yaml").read_text())["scoring"]["calib_batches"] == 2
    # README, first hour: the columns that matter of `dvc exp show`
    drop, keep = re.search(r"dvc exp show --drop '([^']+)' --keep '([^']+)'", (REPO / "README.md").read_text()).groups()
    shown = run(["env", "COLUMNS=200", "dvc", "exp", "show", "--no-pager", "--drop", drop, "--keep", keep], repo)
    header = shown.splitlines()[1]
    assert header.split() == ["Experiment", "best_sampled_top1", "all_S_motion_gap", "checks_passed", "gate.kl_k"]


@pytest.mark.slow
@pytest.mark.parametrize("module", ["stfusion/core/droppath.py", "stfusion/engine/distributed.py",
                                    "stfusion/data/loader.py", "stfusion/stages/common.py"])
def test_dvc_reruns_train_supernet_after_a_change_to_code_it_imports(dvc_repo, module):
    repo, _, _ = dvc_repo
    assert module in code_closure("train-supernet")
    path = repo / module
    original = path.read_text()
    try:
        path.write_text(original + "# changed\n")
        out = run(["dvc", "status", "train_supernet"], repo)
        assert "train_supernet@0:" in out and "changed deps" in out, out
    finally:
        path.write_text(original)
    assert "up to date" in run(["dvc", "status", "train_supernet"], repo)
