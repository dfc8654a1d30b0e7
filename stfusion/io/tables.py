"""Writing tables: CSV (the data), Markdown (``report.md`` and the ``.md`` files beside the CSVs) and HTML
(the Snakemake report's viewer shows CSV only as a download), all through pandas."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # light at import: the CLI imports this module before any stage runs
    import pandas as pd


def to_markdown(df: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A Markdown table (pandas ``to_markdown``); ``|`` inside cells (strategies' text form) is escaped, a missing
    value reads ``n/a`` (as in the HTML tables)."""
    import pandas as pd

    if df is None or df.empty:
        return "_(empty)_"
    df = df.copy()
    for col in df.columns:
        if not pd.api.types.is_numeric_dtype(df[col]):
            df[col] = df[col].map(lambda v: v.replace("|", "\\|") if isinstance(v, str) else v)
    df = df.astype(object).where(df.notna(), None)  # tabulate's missingval covers None, not NaN
    return df.to_markdown(index=False, floatfmt=floatfmt, missingval="n/a")


def write_table(df: pd.DataFrame, csv_path: str | Path, markdown: bool = True, floatfmt: str = ".4f") -> None:
    """Write ``df`` as CSV and, with ``markdown``, as a Markdown table beside it (same name, ``.md``)."""
    from stfusion.io.files import write_csv, write_text

    write_csv(df, csv_path)
    if markdown:
        write_text(Path(csv_path).with_suffix(".md"), to_markdown(df, floatfmt) + "\n")


def write_html(df: pd.DataFrame, path: str | Path, title: str, note: str = "", digits: int = 4) -> Path:
    """``df`` as a standalone HTML page (pandas ``to_html``) with a title and an optional note above it."""
    from stfusion.io.files import write_text

    body = df.to_html(index=False, float_format=lambda x: f"{x:.{digits}g}", na_rep="n/a", border=0,
                      classes="dataframe")
    head = ("<style>body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse}"
            "th,td{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right} th{background:#f3f3f3}</style>")
    note_html = f"<p>{note}</p>" if note else ""
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>{head}</head>"
            f"<body><h3>{title}</h3>{note_html}{body}</body></html>\n")
    return write_text(path, page)
