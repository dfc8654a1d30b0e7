"""Packaging hook (the metadata is in pyproject.toml): the built package carries the workflow, the top-level
Snakefile, workflow/ (rules, profiles, environment, report captions), dvc.yaml, .gitignore, .dvcignore and
profiles/default, as
``stfusion/project/`` for ``stfusion init --workflow``. One copy lives in the source tree; the build copies it."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent


class BuildWithWorkflow(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "stfusion" / "project"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(HERE / "workflow", target / "workflow",
                        ignore=shutil.ignore_patterns("__pycache__", ".snakemake"))
        for name in ("Snakefile", "dvc.yaml", ".gitignore", ".dvcignore", "profiles/default/config.yaml"):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(HERE / name, target / name)


setup(cmdclass={"build_py": BuildWithWorkflow})
