"""Stage ``report``: ``report.md``, ``metrics.json``, ``versions.json`` and the report folder."""

from __future__ import annotations

import logging
from pathlib import Path

from stfusion.config.layout import LAYOUT, RunLayout
from stfusion.config.settings import Settings
from stfusion.errors import StfusionError
from stfusion.stages.runtime import library_versions
from stfusion.io.files import write_json
from stfusion.stages.common import class_groups

log = logging.getLogger(__name__)


def report_layout(results: str | Path, checkpoint_dir: str | Path, cache_dir: str | Path) -> RunLayout:
    """The layout of the run the report reads: ``checkpoint_dir`` is its supernet folder
    (``<checkpoints>/supernet``, holding a ``seed<s>`` folder a replicate)."""
    layout = RunLayout(cache=str(cache_dir), checkpoints=str(Path(checkpoint_dir).parent), results=str(results))
    if Path(layout.supernet_dir) != Path(checkpoint_dir):
        raise StfusionError(f"{checkpoint_dir} is not a supernet folder of a run layout: the supernet's files are "
                            f"in {Path(LAYOUT.supernet_dir).name}/ below the checkpoints folder")
    return layout


def report(params: dict, *, results: str | Path, checkpoint_dir: str | Path, cache_dir: str | Path, out: str | Path,
           metrics: str | Path) -> dict:
    """Stage ``report``: ``report.md`` (at ``out``), ``metrics.json`` (numbers only, at ``metrics``),
    ``versions.json`` and the report folder (:mod:`stfusion.report.files`), from every table of the run."""
    from stfusion.io.files import write_text
    from stfusion.report.document import build_report, summary_lines
    from stfusion.report.files import write_report_files

    layout, versions = report_layout(results, checkpoint_dir, cache_dir), library_versions()
    settings = Settings.for_stage(params)
    classes = [str(row["name"]) for row in class_groups(layout.cache)[0]]
    write_report_files(layout, classes, layout.run_supernet(settings.seeds))
    text, scalars = build_report(layout, seed=settings.seed, seeds=settings.seeds, versions=versions, page=out)
    write_text(out, text)
    write_json(metrics, scalars)
    write_json(layout.versions, versions)
    log.info("report written to %s (%d of %d checks pass)", out, scalars.get("checks_passed", 0),
             scalars.get("checks_total", 0))
    for line in summary_lines(results, Path(out)):
        log.info("%s", line)
    return scalars
