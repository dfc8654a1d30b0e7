"""Stages ``select_standalone``, ``train_standalone`` and ``validate_ranking``: strategies trained from scratch,
against which the supernet's ranking is checked."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from stfusion.config.layout import CACHE, RANKING, SELECTION, STANDALONE_CKPT, STANDALONE_RUNS, SUPERNET, VALIDATION
from stfusion.config.settings import Settings
from stfusion.io.files import read_table, write_json
from stfusion.io.tables import write_table
from stfusion.stages.plain_runs import gather_runs, train_plain_runs
from stfusion.stages.common import build_from_checkpoint, strategy_of

if TYPE_CHECKING:  # heavy imports stay inside the functions (the CLI's --help imports the stages)
    import pandas as pd


log = logging.getLogger(__name__)


def select_standalone(params: dict, *, ranking: str | Path = RANKING, out: str | Path = SELECTION) -> pd.DataFrame:
    """Choose the strategies to train from scratch (see :func:`stfusion.analysis.validation.select_strategies`)."""
    from stfusion.analysis.validation import select_strategies

    ranked = read_table(ranking, "ranking")
    df = select_strategies(ranked, Settings.for_stage(params).standalone.n_strategies)
    write_table(df, out)
    return df


def train_standalone(
    params: dict, *, checkpoint: str | Path = SUPERNET, cache_dir: str | Path = CACHE,
    selection: str | Path = SELECTION, strategies: Sequence[str] | None = None,
    ckpt_dir: str | Path = STANDALONE_CKPT, runs_dir: str | Path = STANDALONE_RUNS, progress: bool = True,
) -> list[dict]:
    """Train each selected strategy (all, or the given ids) from scratch: a freshly initialised network of the
    supernet's architecture holding only the strategy's convs, the ``standalone`` budget, the same seed for every
    strategy. Writes ``runs_dir/<id>.json``."""
    import torch
    from stfusion.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    table = read_table(selection, "stand-alone selection")
    seed = Settings.for_stage(params).seed

    def make(row):
        torch.manual_seed(seed)
        fresh = build_from_checkpoint(ckpt, checkpoint)
        return fresh.export(strategy_of(row["strategy"], fresh.n_fusion_layers))

    return train_plain_runs(params, "standalone", table, strategies, make, cache_dir=cache_dir, ckpt_dir=ckpt_dir,
                             runs_dir=runs_dir, seed_offset=0, progress=progress, what="stand-alone")


def validate_ranking(
    *, selection: str | Path = SELECTION, runs_dir: str | Path = STANDALONE_RUNS, ranking: str | Path = RANKING,
    out_dir: str | Path = VALIDATION,
) -> dict:
    """Gather the stand-alone runs; Kendall tau and Spearman rho between stand-alone accuracy and the supernet
    score (with and without BN recalibration) and the log-probability (``ranking_fidelity.json``)."""
    from stfusion.engine.evaluation import copy_best_run
    from stfusion.analysis.validation import fidelity, plot_fidelity, supernet_scores

    sel = supernet_scores(read_table(selection, "stand-alone selection"), read_table(ranking, "ranking"))
    runs = gather_runs(sel["id"].astype(str), runs_dir, "stfusion train-standalone")
    runs = runs.drop(columns=["strategy", "name"], errors="ignore")
    runs = runs.rename(columns={c: f"standalone_{c}" for c in runs.columns if c not in ("id", "macs", "params")})
    df = sel.merge(runs, on="id", how="left")
    out_dir = Path(out_dir)
    write_table(df, out_dir / "standalone.csv")
    copy_best_run(df, "standalone_top1_val", runs_dir, out_dir)
    result = fidelity(df)
    write_json(out_dir / "ranking_fidelity.json", result)
    plot_fidelity(df, out_dir / "ranking_fidelity.png")
    return result
