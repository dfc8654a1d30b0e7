"""The package's layers (pyproject.toml, ``[tool.importlinter]``): a module imports only from the layers below its
own, checked with import-linter on the installed package and on a copy with one upward import added."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports")

pytestmark = pytest.mark.skipif(LINT is None, reason="import-linter is a test dependency")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(root), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    return subprocess.run([LINT, "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True)


def test_layers_hold():
    res = _lint(REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "1 kept, 0 broken" in res.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    shutil.copytree(REPO / "stfusion", tmp_path / "stfusion", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    core = tmp_path / "stfusion" / "core" / "strategies.py"
    core.write_text(core.read_text() + "\n\ndef _upward():\n    from stfusion.stages import common  # noqa: F401\n")
    res = _lint(tmp_path)
    assert res.returncode != 0
    assert "stfusion.core.strategies -> stfusion.stages.common" in res.stdout


def test_config_and_storage_stay_light():
    """The Snakemake rules import stfusion.config and stfusion.data.storage: neither may pull torch or pandas."""
    code = ("import sys, stfusion.config.layout, stfusion.config.loading, stfusion.data.storage; "
            "print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
