"""The supernet's side of a table of strategies trained as plain networks (the finetuned derived networks, the
strategies trained stand-alone for ranking fidelity): their scores joined from the ranking, and the names of the
uniform families every such table is read against."""

from __future__ import annotations

import pandas as pd

UNIFORM = ("all-S", "all-ST", "all-S+ST")

SCORE_COLUMNS = {"top1": "supernet_top1", "top1_recal": "supernet_top1_recal",
                 "top1_plain_bn": "supernet_top1_plain_bn", "top1_test": "supernet_top1_test", "rank": "supernet_rank",
                 "exposure": "exposure", "extrapolated": "extrapolated"}


def supernet_scores(table: pd.DataFrame, ranked: pd.DataFrame) -> pd.DataFrame:
    """``table`` (with an ``id`` column) with the supernet scores of its strategies joined from the ranking:
    ``supernet_top1`` (validation, configured BN mode), ``supernet_top1_recal``, ``supernet_top1_plain_bn``,
    ``supernet_top1_test``, ``supernet_rank``, and where the ranking has them the ``exposure`` of each
    configuration and whether its score is ``extrapolated`` (:mod:`stfusion.analysis.exposure`; NaN for
    strategies that were not scored)."""
    cols = {k: v for k, v in SCORE_COLUMNS.items() if k in ranked.columns}
    scores = ranked.assign(id=ranked["id"].astype(str))[["id", *cols]].rename(columns=cols)
    out = table.assign(id=table["id"].astype(str)).drop(columns=list(cols.values()), errors="ignore")
    return out.merge(scores, on="id", how="left")
