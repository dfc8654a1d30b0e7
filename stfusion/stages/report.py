"""Stage ``report``: ``report.md``, ``metrics.json``, ``versions.json`` and the report folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from stfusion.config.layout import CACHE, METRICS, REPORT, REPORT_DIR, RESULTS, SUPERNET_DIR, VERSIONS
from stfusion.config.settings import Settings
from stfusion.stages.runtime import library_versions
from stfusion.io.files import write_json
from stfusion.stages.common import class_groups

if TYPE_CHECKING:  # heavy imports stay inside the functions (the CLI's --help imports the stages)

    pass

log = logging.getLogger(__name__)


def report(params: dict, *, results: str | Path = RESULTS, checkpoint_dir: str | Path = SUPERNET_DIR,
           cache_dir: str | Path = CACHE, out: str | Path = REPORT, metrics: str | Path = METRICS) -> dict:
    """Stage ``report``: ``report.md``, ``metrics.json`` (numbers only) and ``versions.json`` in ``results``,
    and the report folder ``results/report/`` (:mod:`stfusion.report.files`), from every table above."""
    from stfusion.io.files import write_text
    from stfusion.report.document import build_report
    from stfusion.report.files import write_report_files

    results, versions = Path(results), library_versions()
    classes = [str(row["name"]) for row in class_groups(cache_dir)[0]]
    write_report_files(results, Path(checkpoint_dir), results / Path(REPORT_DIR).name, classes)
    text, scalars = build_report(results, Path(checkpoint_dir), Path(cache_dir), seed=Settings.for_stage(params).seed,
                                 versions=versions)
    write_text(out, text)
    write_json(metrics, scalars)
    write_json(results / Path(VERSIONS).name, versions)
    return scalars
