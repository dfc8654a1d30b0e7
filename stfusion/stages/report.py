"""Stage ``report``: ``report.md``, ``metrics.json``, ``versions.json`` and the report folder."""

from __future__ import annotations

import logging
from pathlib import Path

from stfusion.config.layout import LAYOUT, RunLayout
from stfusion.errors import StfusionError
from stfusion.io.files import write_json
from stfusion.stages.common import class_groups
from stfusion.stages.runtime import library_versions

log = logging.getLogger(__name__)


def report_layout(results: str | Path, checkpoint_dir: str | Path, cache_dir: str | Path) -> RunLayout:
    """The layout of the run the report reads: ``checkpoint_dir`` is its supernet folder
    (``<checkpoints>/supernet``)."""
    layout = RunLayout(cache=str(cache_dir), checkpoints=str(Path(checkpoint_dir).parent), results=str(results))
    if Path(layout.supernet_dir) != Path(checkpoint_dir):
        raise StfusionError(f"{checkpoint_dir} is not a supernet folder of a run layout: the supernet's files are "
                            f"in {Path(LAYOUT.supernet_dir).name}/ below the checkpoints folder")
    return layout


def report(params: dict, *, results: str | Path = LAYOUT.results, checkpoint_dir: str | Path = LAYOUT.supernet_dir,
           cache_dir: str | Path = LAYOUT.cache, out: str | Path = LAYOUT.report,
           metrics: str | Path = LAYOUT.metrics) -> dict:
    """Stage ``report``: ``report.md`` (at ``out``), ``metrics.json`` (numbers only, at ``metrics``),
    ``versions.json`` and the report folder (:mod:`stfusion.report.files`), from every table of the run."""
    from stfusion.io.files import write_text
    from stfusion.report.document import build_report
    from stfusion.report.files import write_report_files

    layout, versions = report_layout(results, checkpoint_dir, cache_dir), library_versions()
    classes = [str(row["name"]) for row in class_groups(layout.cache)[0]]
    write_report_files(layout, classes)
    text, scalars = build_report(layout, seed=int(params["seed"]), versions=versions, page=out)
    write_text(out, text)
    write_json(metrics, scalars)
    write_json(layout.versions, versions)
    return scalars
