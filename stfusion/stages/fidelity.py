"""The ranking-fidelity study as its own target (``snakemake fidelity``, DVC stages ``select_fidelity``,
``train_fidelity``, ``fidelity``): ``fidelity.n_strategies`` scored strategies, chosen stratified over the score
range, each trained stand-alone from scratch with the ``validate`` budget under ``fidelity.seeds`` seeds; then
the statistics of :mod:`stfusion.analysis.fidelity`.

Seed ``j`` of a strategy initialises its network with ``seed + j`` and shuffles / augments with the same
offset, so seed 0 is the run the default ranking check makes.

Files (``results/fidelity/``): ``strategies.csv|md`` (the selection), ``runs/seed<j>/<id>.json`` (one
stand-alone run), ``table.csv|md`` (predictors and per-seed accuracies), ``fidelity.json`` (every statistic,
plus the training time), ``fidelity.md`` (the summary), ``fidelity.png`` (the figure).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from stfusion.errors import StfusionError
from stfusion.config.layout import FIDELITY_CKPT, FIDELITY_DIR, FIDELITY_RUNS
from stfusion.config.settings import Settings


def select_stratified(ranked: pd.DataFrame, n: int) -> pd.DataFrame:
    """``n`` distinct strategies spread over the score range: the uniform families (all-S, all-ST, all-S+ST)
    first, then the others from ``n - 3`` equal-width bins of the validation score (``top1``), taken in rounds
    (every non-empty bin gives the unchosen strategy nearest its centre, ties by log-probability) until ``n``
    are chosen. Returns ``id, name, source, strategy, log_prob`` (no scores, like the default selection)."""
    from stfusion.analysis.validation import UNIFORM

    if n < 3:
        raise StfusionError(f"fidelity.n_strategies must be at least 3, got {n}")
    if len(ranked) < n:
        raise StfusionError(
            f"only {len(ranked)} strategies were scored but fidelity.n_strategies is {n}: "
            "raise scoring.n_samples or lower fidelity.n_strategies"
        )
    ranked = ranked.sort_values(["top1", "log_prob"], ascending=[False, False], kind="stable").reset_index(drop=True)
    names = ranked["name"].astype(str)
    chosen = [int(ranked.index[names == f][0]) for f in UNIFORM if (names == f).any()][:n]
    rest = ranked.drop(index=chosen)
    m = n - len(chosen)
    if m > 0:
        lo, hi = float(rest["top1"].min()), float(rest["top1"].max())
        edges = np.linspace(lo, hi, m + 1)
        bins = np.clip(np.searchsorted(edges, rest["top1"].to_numpy(float), side="right") - 1, 0, m - 1)
        centre = (edges[bins] + edges[bins + 1]) / 2
        rest = rest.assign(_bin=bins, _dist=np.abs(rest["top1"].to_numpy(float) - centre))
        queues = [g.sort_values(["_dist", "log_prob"], ascending=[True, False], kind="stable").index.tolist()
                  for _, g in rest.groupby("_bin", sort=True)]
        while len(chosen) < n:
            for q in queues:
                if q and len(chosen) < n:
                    chosen.append(int(q.pop(0)))
    sel = ranked.loc[sorted(chosen), ["id", "name", "source", "strategy", "log_prob"]]
    return sel.assign(id=sel["id"].astype(str)).reset_index(drop=True)


def select_fidelity(params: dict, *, ranking, out) -> pd.DataFrame:
    """Stage ``select_fidelity``: the stratified selection (:func:`select_stratified`)."""
    from stfusion.io.files import read_table
    from stfusion.io.tables import write_table

    df = select_stratified(read_table(ranking, "ranking"), Settings.for_stage(params).fidelity.n_strategies)
    write_table(df, out)
    return df


def seed_indices(params: dict) -> list[int]:
    return list(range(Settings.for_stage(params).fidelity.seeds))


def train_fidelity(params: dict, *, checkpoint, cache_dir, selection, strategies: Sequence[str] | None = None,
                   seeds: Sequence[int] | None = None, ckpt_dir=FIDELITY_CKPT, runs_dir=FIDELITY_RUNS,
                   progress: bool = True) -> list[dict]:
    """Stage ``train_fidelity``: train every selected strategy (or the given ids) stand-alone under every seed
    index (or the given ones), ``runs_dir/seed<j>/<id>.json`` a run."""
    import torch

    from stfusion.engine.checkpoint import load_checkpoint
    from stfusion.stages.plain_runs import train_plain_runs
    from stfusion.stages.common import build_from_checkpoint, strategy_of
    from stfusion.io.files import read_table

    ckpt = load_checkpoint(checkpoint)
    table = read_table(selection, "fidelity selection")
    results, settings = [], Settings.for_stage(params)
    for j in (seeds if seeds is not None else seed_indices(params)):
        seed = settings.seed + int(j)

        def make(row, seed=seed):
            torch.manual_seed(seed)
            fresh = build_from_checkpoint(ckpt, checkpoint)
            return fresh.export(strategy_of(row["strategy"], fresh.n_fusion_layers))

        results += train_plain_runs(
            params, "standalone", table, strategies, make, cache_dir=cache_dir,
            ckpt_dir=Path(ckpt_dir) / f"seed{j}", runs_dir=Path(runs_dir) / f"seed{j}", seed_offset=int(j),
            progress=progress, what=f"fidelity seed {j}")
    return results


def gather(selection, runs_dir, ranking, n_seeds: int) -> tuple[pd.DataFrame, dict]:
    """The study table (selection + supernet scores + ``seed0..`` stand-alone test accuracies) and the
    training time: ``train_seconds`` (all runs, one after another) and ``wall_seconds`` (first start to last
    end, from the run files' times)."""
    from stfusion.stages.plain_runs import gather_runs
    from stfusion.io.files import read_table
    from stfusion.analysis.validation import supernet_scores

    sel = supernet_scores(read_table(selection, "fidelity selection"), read_table(ranking, "ranking"))
    ids = sel["id"].astype(str)
    starts, ends, total = [], [], 0.0
    for j in range(n_seeds):
        folder = Path(runs_dir) / f"seed{j}"
        runs = gather_runs(ids, folder, f"stfusion train-fidelity --seed-index {j}").set_index("id")
        sel[f"seed{j}"] = sel["id"].map(runs["top1_test"]).to_numpy(float)
        for i in ids:
            end = (folder / f"{i}.json").stat().st_mtime
            starts.append(end - float(runs.loc[i, "seconds"]))
            ends.append(end)
            total += float(runs.loc[i, "seconds"])
    seeds = [f"seed{j}" for j in range(n_seeds)]
    sel["standalone_mean"] = sel[seeds].mean(axis=1)
    sel["standalone_min"] = sel[seeds].min(axis=1)
    sel["standalone_max"] = sel[seeds].max(axis=1)
    timing = {"train_seconds": round(total, 1), "wall_seconds": round(max(ends) - min(starts), 1) if ends else 0.0}
    return sel, timing


def fidelity_report(params: dict, *, selection, runs_dir, ranking, out_dir=FIDELITY_DIR) -> dict:
    """Stage ``fidelity``: ``table.csv|md``, ``fidelity.json``, ``fidelity.md`` and ``fidelity.png``."""
    from stfusion.io.files import write_text
    from stfusion.analysis.fidelity import plot_study, study, summary_lines
    from stfusion.io.files import write_json
    from stfusion.io.tables import to_markdown, write_table

    out_dir = Path(out_dir)
    df, timing = gather(selection, runs_dir, ranking, len(seed_indices(params)))
    write_table(df, out_dir / "table.csv")
    settings = Settings.for_stage(params)
    result = {**study(df, seed=settings.seed), **timing,
              "budget": {k: getattr(settings.standalone, k) for k in ("epochs", "lr", "batch_size", "weight_decay")}}
    write_json(out_dir / "fidelity.json", result)
    plot_study(df, out_dir / "fidelity.png")
    lines = ["# Ranking fidelity study", "", *summary_lines(result), "",
             f"Training: {timing['train_seconds'] / 60:.1f} min of runs one after another, "
             f"{timing['wall_seconds'] / 60:.1f} min from the first start to the last end.", "",
             to_markdown(df), "", "![fidelity](fidelity.png)", ""]
    write_text(out_dir / "fidelity.md", "\n".join(lines))
    return result
