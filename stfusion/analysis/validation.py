"""Validating the probability space (METHOD.md §7): do supernet scores and posterior probabilities predict how
well a strategy does when trained on its own?

:func:`select_strategies` picks the strategies to train from scratch, deterministically, so that they span the
range of supernet scores: the three uniform families first (all-S, all-ST, all-S+ST: the hand-designed
baselines, and all-S is the expected loser on motion), then strategies evenly spaced in score rank over all other
scored strategies (best and worst included). :func:`fidelity` computes Kendall's tau-b and Spearman's rho (scipy)
between stand-alone accuracy and (a) the supernet score with BN recalibration, (b) without it (the paper's plain
mode), (c) the log-probability.

Stand-alone accuracy is measured on the **test** split; supernet scores are the **validation** split's (the split
strategies are selected on), so the correlation asks whether the selection signal predicts held-out quality.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from stfusion.errors import StfusionError

UNIFORM = ("all-S", "all-ST", "all-S+ST")
STANDALONE = "standalone_top1_test"
#: (label, column of the supernet side)
PREDICTORS = (
    ("score", "supernet_top1"),
    ("recal", "supernet_top1_recal"),
    ("plain_bn", "supernet_top1_plain_bn"),
    ("log_prob", "log_prob"),
)


def select_strategies(ranked: pd.DataFrame, n: int) -> pd.DataFrame:
    """``n`` distinct scored strategies spanning the score range (see the module docstring).

    Returns ``id, name, source, strategy, log_prob`` only, no scores: training depends on which strategies were
    chosen, not on their scores, so a rescoring that picks the same strategies leaves the table (and the
    stand-alone runs that depend on it) unchanged. :func:`supernet_scores` joins the scores back."""
    if n < 2:
        raise StfusionError(f"standalone.n_strategies must be at least 2, got {n}")
    ranked = ranked[ranked["top1"].notna()]  # racing: dropped strategies hold no full-split score
    ranked = ranked.sort_values(["top1", "log_prob"], ascending=[False, False], kind="stable").reset_index(drop=True)
    if len(ranked) < n:
        raise StfusionError(
            f"only {len(ranked)} strategies were scored on the whole validation split but standalone.n_strategies "
            f"is {n}: raise scoring.n_samples (or scoring.keep_top with scoring.racing) or lower "
            "standalone.n_strategies"
        )
    chosen: list[int] = []
    names = ranked["name"].astype(str)
    for fam in UNIFORM:
        hit = ranked.index[names == fam]
        if len(hit) and len(chosen) < n:
            chosen.append(int(hit[0]))
    rest = [i for i in ranked.index if i not in chosen]
    m = n - len(chosen)
    if m > 0:
        picks = np.unique(np.round(np.linspace(0, len(rest) - 1, m)).astype(int))
        chosen += [rest[i] for i in picks]
        extra = [i for i in rest if i not in chosen]
        chosen += extra[: n - len(chosen)]
    sel = ranked.loc[sorted(chosen), ["id", "name", "source", "strategy", "log_prob"]]
    sel["id"] = sel["id"].astype(str)
    return sel.reset_index(drop=True)


SCORE_COLUMNS = {"top1": "supernet_top1", "top1_recal": "supernet_top1_recal",
                 "top1_plain_bn": "supernet_top1_plain_bn", "top1_test": "supernet_top1_test", "rank": "supernet_rank"}


def supernet_scores(table: pd.DataFrame, ranked: pd.DataFrame) -> pd.DataFrame:
    """``table`` (with an ``id`` column) with the supernet scores of its strategies joined from the ranking:
    ``supernet_top1`` (validation, configured BN mode), ``supernet_top1_recal``, ``supernet_top1_plain_bn``,
    ``supernet_top1_test``, ``supernet_rank`` (NaN for strategies that were not scored)."""
    cols = {k: v for k, v in SCORE_COLUMNS.items() if k in ranked.columns}
    scores = ranked.assign(id=ranked["id"].astype(str))[["id", *cols]].rename(columns=cols)
    out = table.assign(id=table["id"].astype(str)).drop(columns=list(cols.values()), errors="ignore")
    return out.merge(scores, on="id", how="left")


def _clean(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def correlations(a, b) -> dict:
    """Kendall tau-b and Spearman rho (with p-values) of two sequences; ``None`` where undefined (constant)."""
    from scipy.stats import kendalltau, spearmanr

    a = np.asarray(a, float)
    b = np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return {"kendall_tau": None, "kendall_p": None, "spearman_rho": None, "spearman_p": None, "n": int(len(a))}
    kt = kendalltau(a, b)
    sr = spearmanr(a, b)
    return {"kendall_tau": _clean(kt.statistic), "kendall_p": _clean(kt.pvalue),
            "spearman_rho": _clean(sr.statistic), "spearman_p": _clean(sr.pvalue), "n": int(len(a))}


def fidelity(df: pd.DataFrame) -> dict:
    """Ranking fidelity of a table with ``standalone_top1_test`` and the predictor columns.

    The top-level ``kendall_tau``, ``spearman_rho``, ``n`` compare stand-alone accuracy with the supernet score
    in the configured BN mode (``supernet_top1``); ``*_recal``, ``*_plain_bn`` and ``*_log_prob`` the others."""
    if STANDALONE not in df:
        raise StfusionError(f"stand-alone table lacks column {STANDALONE!r}")
    out: dict = {"standalone": f"{STANDALONE} (stand-alone accuracy, test split)",
                 "supernet_score": "supernet top-1 on the validation split"}
    for label, col in PREDICTORS:
        c = correlations(df[STANDALONE], df[col]) if col in df else correlations([], [])
        if label == "score":
            out.update(c)
        else:
            out.update({f"{k}_{label}": v for k, v in c.items() if k != "n"})
    out["strategies"] = list(df["id"].astype(str))
    return out


def plot_fidelity(df: pd.DataFrame, path: str | Path) -> Path:
    """Stand-alone accuracy vs supernet score (with and without BN recalibration)."""
    from stfusion.analysis.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for col, label, marker in (("supernet_top1_recal", "BN recalibrated", "o"),
                               ("supernet_top1_plain_bn", "plain BN (paper)", "x")):
        if col in df:
            ax.scatter(df[col], df[STANDALONE], marker=marker, label=label)
    for r in df.itertuples():
        ax.annotate(str(r.name), (getattr(r, "supernet_top1_recal", np.nan), getattr(r, STANDALONE)), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("supernet score (validation top-1)")
    ax.set_ylabel("stand-alone top-1 (test)")
    ax.set_title("ranking fidelity")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
