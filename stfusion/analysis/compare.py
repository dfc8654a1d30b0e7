"""``stfusion compare``: one ranked table across experiments (runs of the pipeline with other parameters).

Each experiment is a ``results`` folder (its ``metrics.json``, and ``fidelity/fidelity.json`` when the study
ran) or an entry of ``dvc exp show --json`` (the metrics file of the standard layout). One row an experiment with
the columns of :data:`COLUMNS`, ranked by the best sampled strategy's validation top-1 (then by tau); written as
``compare.csv``, ``compare.md`` and ``compare.png`` (the accuracies and the posterior's figures side by side).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from stfusion.config.layout import LAYOUT, RunLayout
from stfusion.errors import StfusionError

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


def row_from_metrics(name: str, metrics: dict, study: dict | None = None) -> dict:
    """One table row from a run's ``metrics.json`` (and its fidelity study, whose tau then wins). A run of
    several seeds gives each figure's mean over its seeds with the interval over seeds (``<column>_low``,
    ``<column>_high``; :func:`stfusion.analysis.pooling.pool_figures`) and ``n_seeds``."""
    row = {"experiment": name, "n_seeds": metrics.get("n_seeds", 1)}
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
        rows.append(row_from_metrics(name, metrics, study))
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
        if metrics:
            rows.append(row_from_metrics(entry.get("name") or d.get("name") or entry.get("rev") or fallback,
                                         metrics))

    for i, commit in enumerate(data if isinstance(data, list) else []):
        add(commit, f"commit-{i}")
        for j, exp in enumerate(commit.get("experiments") or []):
            for k, rev in enumerate(exp.get("revs") or []):
                add({**rev, "name": exp.get("name") or rev.get("name")}, f"exp-{i}-{j}-{k}")
    if not rows:
        raise StfusionError(f"{path} holds no experiment with {LAYOUT.metrics} metrics")
    return rows


def rank_table(rows: list[dict]) -> pd.DataFrame:
    """The rows as a table ranked by ``best_sampled`` (then ``tau``), best first, with a ``rank`` column."""
    df = pd.DataFrame(rows)
    df = df.sort_values(["best_sampled", "tau"], ascending=[False, False], na_position="last", kind="stable")
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
    from stfusion.io.tables import write_table

    if bool(folders) == bool(dvc_json):
        raise StfusionError("give either result folders or --dvc-json FILE (one of the two)")
    rows = rows_from_dvc(dvc_json) if dvc_json else rows_from_folders(folders)
    df = rank_table(rows)
    out_dir = Path(out_dir)
    write_table(df, out_dir / "compare.csv")
    plot_compare(df, out_dir / "compare.png")
    return df
