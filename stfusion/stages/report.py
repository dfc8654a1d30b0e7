"""Stage ``report``: ``report.md``, ``metrics.json``, ``versions.json`` and the report folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from stfusion.config.layout import RunLayout
from stfusion.config.settings import Settings
from stfusion.stages.runtime import library_versions
from stfusion.io.files import write_json
from stfusion.stages.common import class_groups

if TYPE_CHECKING:  # heavy imports stay inside the functions (the CLI's --help imports the stages)

    pass

log = logging.getLogger(__name__)


def report(params: dict, *, results: str | Path, checkpoint_dir: str | Path, cache_dir: str | Path, out: str | Path,
           metrics: str | Path) -> dict:
    """Stage ``report``: ``report.md``, ``metrics.json`` (numbers only) and ``versions.json`` in ``results``,
    and the report folder ``results/report/`` (:mod:`stfusion.report.files`), from every table above."""
    from stfusion.io.files import write_text
    from stfusion.report.document import build_report, summary_lines
    from stfusion.report.files import write_report_files

    results, versions, files = Path(results), library_versions(), RunLayout(results=str(results))
    classes = [str(row["name"]) for row in class_groups(cache_dir)[0]]
    write_report_files(results, Path(checkpoint_dir), Path(files.report_dir), classes)
    text, scalars = build_report(results, Path(checkpoint_dir), Path(cache_dir), seed=Settings.for_stage(params).seed,
                                 versions=versions)
    write_text(out, text)
    write_json(metrics, scalars)
    write_json(files.versions, versions)
    log.info("report written to %s (%d of %d checks pass)", out, scalars.get("checks_passed", 0),
             scalars.get("checks_total", 0))
    for line in summary_lines(results, Path(out)):
        log.info("%s", line)
    return scalars
