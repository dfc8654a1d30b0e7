"""Stages ``derive``, ``finetune`` and ``finetune_table``: new strategies read off the preferences, exported
from the supernet and finetuned."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from stfusion.config.settings import Settings
from stfusion.io.files import file_digest, read_table
from stfusion.io.tables import write_table
from stfusion.stages.plain_runs import gather_runs, train_plain_runs
from stfusion.stages.common import clip_shape, load_supernet, strategy_of

if TYPE_CHECKING:  # heavy imports stay inside the functions (the CLI's --help imports the stages)
    import pandas as pd


log = logging.getLogger(__name__)


def derive(params: dict, *, preference: str | Path, ranking: str | Path, out: str | Path,
           checkpoint: str | Path) -> pd.DataFrame:
    """Stage ``derive``: new strategies from the preferences (see :mod:`stfusion.analysis.derive`), with the MACs and
    parameters of each derived network (:mod:`stfusion.core.costs`) for the supernet's input clips."""
    from stfusion.core.costs import add_costs
    from stfusion.analysis.derive import derive_strategies

    pref = read_table(preference, "preference table")
    ranked = read_table(ranking, "ranking")
    model, ckpt = load_supernet(checkpoint)
    d = Settings.for_stage(params).derive
    df = derive_strategies(pref, ranked, top_k=d.top_k, st_threshold=d.st_threshold)
    df = add_costs(df, model, clip_shape(ckpt, checkpoint))
    write_table(df, out)
    return df


def finetune(
    params: dict, *, checkpoint: str | Path, cache_dir: str | Path, derived: str | Path,
    strategies: Sequence[str] | None = None, ckpt_dir: str | Path, runs_dir: str | Path, progress: bool = True,
) -> list[dict]:
    """Stage ``finetune`` (one job): export each derived strategy (all, or the given ids) from the supernet as a
    plain network holding only its kept convs (``model.export``), finetune it with cross-entropy (no gates, no
    logits) and evaluate it on the validation and test splits. Writes ``runs_dir/<id>.json``."""
    supernet, _ = load_supernet(checkpoint)
    table = read_table(derived, "derived strategy table")

    def make(row):
        return supernet.export(strategy_of(row["strategy"], supernet.n_fusion_layers))

    return train_plain_runs(params, "finetune", table, strategies, make, cache_dir=cache_dir, ckpt_dir=ckpt_dir,
                             runs_dir=runs_dir, seed_offset=0, progress=progress, what="finetune",
                             origin={"supernet": file_digest(checkpoint)})


def finetune_table(*, derived: str | Path, runs_dir: str | Path, ranking: str | Path,
                   out: str | Path) -> pd.DataFrame:
    """Gather the finetuning runs of every derived strategy into one accuracy table (CSV + Markdown), with each
    strategy's supernet score before finetuning where it was scored."""
    from stfusion.engine.evaluation import copy_best_run
    from stfusion.analysis.supernet_side import supernet_scores

    table = read_table(derived, "derived strategy table")
    runs = gather_runs(table["id"].astype(str), runs_dir, "stfusion finetune")
    keep = ["id", "name", "rule", "strategy", "log_prob"]
    table = supernet_scores(table[keep], read_table(ranking, "ranking"))
    table = table.drop(columns=["supernet_top1_recal", "supernet_top1_plain_bn", "supernet_rank"], errors="ignore")
    df = table.merge(runs.drop(columns=["strategy", "name"], errors="ignore"), on="id", how="left")
    df = df.sort_values("top1_val", ascending=False, kind="stable").reset_index(drop=True)
    write_table(df, out)
    copy_best_run(df, "top1_val", runs_dir, Path(out).parent)
    return df
