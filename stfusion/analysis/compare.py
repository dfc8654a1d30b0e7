"""``stfusion compare``: one ranked table across experiments (runs of the pipeline with other parameters).

Each experiment is a ``results`` folder (its ``metrics.json``, and ``fidelity/fidelity.json`` when the study
ran; its parameters from ``params.yaml`` beside it) or an entry of ``dvc exp show --json`` (the metrics file of
the standard layout and ``params.yaml``). One row an experiment: the parameters that differ between the
experiments (the swept keys, dotted), the columns of :data:`COLUMNS` and ``missing``, why a figure is empty;
ranked as :data:`ORDER` says. Written as ``compare.csv`` (a missing figure is an empty cell), ``compare.md`` (the
order, then the table; a missing figure reads ``n/a``) and ``compare.png`` (the accuracies and the posterior's
figures side by side).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import pandas as pd
import yaml

from stfusion.config.layout import LAYOUT, RunLayout
from stfusion.config.loading import PARAMS_FILE, leaves
from stfusion.errors import StfusionError

log = logging.getLogger(__name__)

#: (column, key in metrics.json) — what the table shows of every experiment
COLUMNS = (
    ("entropy", "entropy"),
    ("entropy_ratio", "entropy_ratio"),
    ("drop_rate_spread", "drop_rate_spread"),
    ("best_sampled", "best_sampled_top1"),
    ("all_S", "all_S_top1"),
    ("all_ST", "all_ST_top1"),
    ("all_SST", "all_SST_top1"),
    ("all_SST_appearance", "all_SST_top1_appearance"),
    ("all_S_motion", "all_S_top1_motion"),
    ("tau", "kendall_tau"),
)


#: the rank order of the table, stated in compare.md and the command's log
ORDER = ("ranked by best_sampled (validation top-1), then tau, then experiment name; an experiment without a "
         "figure comes after those with one")


def _why_missing(row: dict) -> str:
    """Why the row's empty figures are empty, ``; ``-joined (empty when none is)."""
    absent = [col for col, _ in COLUMNS if row.get(col) is None and col != "tau"]
    reasons = [f"not in the run's metrics: {', '.join(absent)}"] if absent else []
    if row.get("tau") is None:
        reasons.append(f"tau: {why_no_tau(row.get('tau_n'))}")
    return "; ".join(reasons)


def why_no_tau(n_standalone: int | None) -> str:
    """Why Kendall tau is empty over ``n_standalone`` stand-alone runs: too few runs, or a ranking of ties (tau
    is undefined when one side is constant, e.g. every network at chance on a tiny configuration)."""
    if (n_standalone or 0) < 2:
        return "fewer than 2 stand-alone runs"
    return "undefined, the stand-alone accuracies (or the supernet scores) all tie"


def row_from_metrics(name: str, metrics: dict, study: dict | None = None, params: dict | None = None) -> dict:
    """One table row from a run's ``metrics.json`` (and its fidelity study, whose tau then wins); ``params`` (the
    run's parameters) are kept for the swept-key columns. A run of several seeds gives each figure's mean over its
    seeds with the interval over seeds (``<column>_low``, ``<column>_high``;
    :func:`stfusion.analysis.pooling.pool_figures`) and ``n_seeds``."""
    row = {"experiment": name, "_params": leaves(params or {}), "n_seeds": metrics.get("n_seeds", 1)}
    for col, key in COLUMNS:
        value = metrics.get(f"{key}_seed_mean", metrics.get(key))
        row[col] = float(value) if isinstance(value, (int, float)) else None
        if f"{key}_seed_low" in metrics:
            row[f"{col}_low"], row[f"{col}_high"] = metrics[f"{key}_seed_low"], metrics[f"{key}_seed_high"]
    if study:
        s = study.get("supernet", {})
        row["tau"] = s.get("kendall_tau")
        row["tau_ci_low"], row["tau_ci_high"] = (s.get("kendall_ci") or [None, None])
        row["tau_n"] = study.get("n_strategies")
    else:
        row["tau_n"] = metrics.get("n_standalone")
    row["missing"] = _why_missing(row)
    return row


def partial_metrics(files: RunLayout) -> dict | None:
    """The figures of a run from its supernets' analyses and scores alone (a run stopped after scoring): each
    seed's (:meth:`~stfusion.config.layout.RunLayout.replicate_seeds`) pooled, or the single run's; None when
    there are none."""
    from stfusion.analysis.pooling import pool_figures, run_figures

    runs = [files.of_seed(s) for s in files.replicate_seeds()] or [files]
    runs = [r for r in runs if Path(r.analysis_summary).is_file() and Path(r.ranking).is_file()]
    if not runs:
        return None
    return pool_figures([run_figures(json.loads(Path(r.analysis_summary).read_text()), pd.read_csv(r.ranking))
                         for r in runs])


def rows_from_folders(folders: Sequence[str | Path]) -> list[dict]:
    """A row a results folder: from its ``metrics.json``, else (a partial run: supernets and their scores, no
    report yet) from :func:`partial_metrics`."""
    rows = []
    for folder in folders:
        folder, files = Path(folder), RunLayout(results=str(folder))
        path, study_path = Path(files.metrics), Path(files.fidelity_study)
        metrics = json.loads(path.read_text()) if path.is_file() else partial_metrics(files)
        if metrics is None:
            raise StfusionError(f"no {path.name} and no scored supernet in {folder} (give the results folder of a "
                                "run that has scored its strategies)")
        study = json.loads(study_path.read_text()) if study_path.is_file() else None
        name = folder.resolve().parent.name if folder.name == Path(LAYOUT.results).name else folder.name
        params_path = folder.resolve().parent / PARAMS_FILE
        params = yaml.safe_load(params_path.read_text()) if params_path.is_file() else None
        rows.append(row_from_metrics(name, metrics, study, params))
    return rows


def rows_from_dvc(path: str | Path) -> list[dict]:
    """Rows from ``dvc exp show --json``: a list of commits, each with ``experiments`` whose ``revs`` carry
    ``data.metrics[<the standard layout's metrics file>].data`` (the commit itself is a row too, named by its
    ``rev``)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StfusionError(f"cannot read {path} as 'dvc exp show --json' output: {exc}") from None
    rows = []

    def add(entry: dict, fallback: str) -> None:
        d = entry.get("data") or {}
        metrics = ((d.get("metrics") or {}).get(LAYOUT.metrics) or {}).get("data")
        params = ((d.get("params") or {}).get(PARAMS_FILE) or {}).get("data")
        if metrics:
            rows.append(row_from_metrics(entry.get("name") or d.get("name") or entry.get("rev") or fallback,
                                         metrics, params=params))

    for i, commit in enumerate(data if isinstance(data, list) else []):
        add(commit, f"commit-{i}")
        for j, exp in enumerate(commit.get("experiments") or []):
            for k, rev in enumerate(exp.get("revs") or []):
                add({**rev, "name": exp.get("name") or rev.get("name")}, f"exp-{i}-{j}-{k}")
    if not rows:
        raise StfusionError(f"{path} holds no experiment with {LAYOUT.metrics} metrics")
    return rows


def swept_keys(rows: list[dict]) -> list[str]:
    """The parameters whose values differ between the rows' experiments (a key some lack counts), sorted."""
    keys = sorted({k for row in rows for k in row["_params"]})
    return [k for k in keys if len({repr(row["_params"].get(k)) for row in rows}) > 1]


def rank_table(rows: list[dict]) -> pd.DataFrame:
    """The rows as a table in :data:`ORDER`, best first, with a ``rank`` column and the swept keys after the
    experiment's name."""
    swept = swept_keys(rows)
    df = pd.DataFrame([{"experiment": r["experiment"], **{k: r["_params"].get(k) for k in swept},
                        **{k: v for k, v in r.items() if k not in ("experiment", "_params")}} for r in rows])
    df = df.sort_values(["best_sampled", "tau", "experiment"], ascending=[False, False, True], na_position="last",
                        kind="stable")
    df.insert(0, "rank", range(1, len(df) + 1))
    return df.reset_index(drop=True)


def plot_compare(df: pd.DataFrame, path) -> Path:
    """Accuracies (best sampled, all-S, all-ST, all-S+ST) and posterior figures (entropy ratio, spread, tau)."""
    from stfusion.analysis.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(df))
    for ax, cols in ((axes[0], ["best_sampled", "all_S", "all_ST", "all_SST"]),
                     (axes[1], ["entropy_ratio", "drop_rate_spread", "tau"])):
        width = 0.8 / len(cols)
        for i, col in enumerate(cols):
            ax.bar([v + i * width for v in x], pd.to_numeric(df[col], errors="coerce").fillna(0), width, label=col)
        ax.set_xticks([v + 0.4 - width / 2 for v in x])
        ax.set_xticklabels(df["experiment"], rotation=30, ha="right", fontsize=7)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_title("validation top-1")
    axes[1].set_title("posterior and ranking fidelity")
    fig.tight_layout()
    return save_figure(fig, path)


def compare(folders: Sequence[str | Path] = (), *, dvc_json: str | Path | None = None, out_dir) -> pd.DataFrame:
    """Write ``compare.csv|md|png`` to ``out_dir`` for the given result folders or dvc experiments (one of the
    two)."""
    from stfusion.io.files import write_csv, write_text
    from stfusion.io.tables import to_markdown

    if bool(folders) == bool(dvc_json):
        raise StfusionError("give either result folders or --dvc-json FILE (one of the two)")
    rows = rows_from_dvc(dvc_json) if dvc_json else rows_from_folders(folders)
    df = rank_table(rows)
    out_dir = Path(out_dir)
    write_csv(df, out_dir / "compare.csv")
    write_text(out_dir / "compare.md", f"{ORDER}.\n\n{to_markdown(df)}\n")
    log.info("compare: %s", ORDER)
    plot_compare(df, out_dir / "compare.png")
    return df
