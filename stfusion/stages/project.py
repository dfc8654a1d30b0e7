"""``stfusion init DIR``: a new project folder with a commented ``params.yaml`` (the packaged defaults) and, with
``workflow=True``, the pipeline for Snakemake and DVC alike (``Snakefile``, ``workflow/``: rules, profiles, conda
environment, report captions; ``dvc.yaml`` without the package's code as dependencies; ``.gitignore``,
``.dvcignore``).

The workflow files come from the installed package (``stfusion/project/``, copied in by the build, see
``setup.py``) or, in an editable install, from the checkout the package lies in.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from stfusion.config.loading import DEFAULTS_PATH, PARAMS_FILE
from stfusion.errors import StfusionError

PACKAGE_DIR = Path(__file__).parents[1]  # the stfusion package
#: files of the project folder copied as they are (besides ``Snakefile`` and ``workflow/``)
PROJECT_FILES = (".gitignore", ".dvcignore", "profiles/default/config.yaml")
DVC_FILE = "dvc.yaml"
#: a dependency of a DVC stage on the package's own code: a checkout's, absent from a project folder
_CODE_DEP = re.compile(r"^\s+- stfusion(/\S*)?\n", re.MULTILINE)
_NO_DEPS = re.compile(r"^\s+deps:\n(?!\s+- )", re.MULTILINE)
_DVC_NOTE = ("# Written by `stfusion init`: the pipeline of the installed stfusion, whose code is not a dependency\n"
             "# here; after upgrading stfusion, `dvc repro --force` reruns every stage.\n")


def workflow_source() -> Path:
    """The folder holding ``Snakefile`` and ``workflow/`` for this installation."""
    for folder in (PACKAGE_DIR / "project", PACKAGE_DIR.parent):
        if (folder / "workflow" / "Snakefile").is_file() and (folder / "Snakefile").is_file():
            return folder
    raise StfusionError(f"this installation of stfusion ({PACKAGE_DIR}) holds no workflow files; "
                        "reinstall it with pip (not from a copy of the package folder alone)")


def _targets(folder: Path, workflow: bool) -> list[tuple[Path, Path]]:
    """(source, destination) of every file ``init`` writes."""
    pairs = [(DEFAULTS_PATH, folder / PARAMS_FILE)]
    if workflow:
        src = workflow_source()
        pairs += [(src / name, folder / name) for name in ("Snakefile", DVC_FILE, *PROJECT_FILES)]
        for path in sorted((src / "workflow").rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                pairs.append((path, folder / path.relative_to(src)))
    return pairs


def _copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst``; ``dvc.yaml`` loses its dependencies on the package's code."""
    if dst.name != DVC_FILE:
        shutil.copyfile(src, dst)
        return
    dst.write_text(_DVC_NOTE + _NO_DEPS.sub("", _CODE_DEP.sub("", src.read_text())))


def init_project(folder: str | Path, *, workflow: bool = False, force: bool = False) -> list[Path]:
    """Write the project files to ``folder`` (created if needed); refuse to overwrite any existing one unless
    ``force``. Returns the files written."""
    folder = Path(folder)
    pairs = _targets(folder, workflow)
    existing = [dst for _, dst in pairs if dst.exists()]
    if existing and not force:
        raise StfusionError(f"{existing[0]} already exists (use --force to overwrite the project files)")
    for src, dst in pairs:
        dst.parent.mkdir(parents=True, exist_ok=True)
        _copy(src, dst)
    return [dst for _, dst in pairs]
