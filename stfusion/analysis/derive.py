"""Derived strategies (docs/method.md §6): new fusion strategies read off the learned preferences.

Rules, each a row of the derived table (a strategy found by several rules appears once, its rules joined):

``most-probable``
    The most probable state of every layer (the posterior's mode: the top-1 strategy).
``top-<k>``
    The k most probable strategies (``derive.top_k``), exact best-first search over the factorised posterior.
``threshold``
    Per layer, with ``t = derive.st_threshold``, ``P(ST kept) = P(ST) + P(S+ST)`` and
    ``P(S kept) = P(S) + P(S+ST)``: **S+ST** if both kept-probabilities exceed t; **ST** if only
    ``P(ST kept)`` does; **S** if only ``P(S kept)`` does; if neither does, the path with the larger
    kept-probability (S on a tie). The rule never yields ``none``: a derived layer always computes something.
``per-stage``
    One state per stage: the state with the highest mean marginal over the stage's layers (the paper read its
    ResNet pattern, S+ST / ST per stage, off the preference this way).
``best-sampled``
    The sampled strategy with the best supernet score on the validation split (ties: the more probable one).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from stfusion.errors import StfusionError
from stfusion.core.strategies import BOTH, NONE, STATE_ORDER, S, ST, Posterior, Strategy

STATE_COLUMNS = {S: "P(S)", ST: "P(ST)", BOTH: "P(S+ST)", NONE: "P(none)"}


def layer_probs(pref: pd.DataFrame) -> np.ndarray:
    """``(L, 4)`` state probabilities from a preference table, columns indexed by state (none, S, ST, S+ST)."""
    missing = [c for c in STATE_COLUMNS.values() if c not in pref.columns]
    if missing:
        raise StfusionError(f"preference table lacks column {missing[0]!r}")
    pref = pref.sort_values("layer")
    out = np.zeros((len(pref), 4))
    for state, col in STATE_COLUMNS.items():
        out[:, state] = pref[col].to_numpy(dtype=float)
    return out


def posterior_from_preference(pref: pd.DataFrame) -> Posterior:
    """The factorised posterior behind a preference table (keep probabilities and where ``none`` is allowed)."""
    pref = pref.sort_values("layer")
    keep = pref[["keep_S", "keep_ST"]].to_numpy(dtype=float)
    allow_none = pref["P(none)"].to_numpy(dtype=float) > 0
    rule = str(pref["keep_prob_rule"].iloc[0]) if "keep_prob_rule" in pref else "paper"
    return Posterior(keep, allow_none, rule)


def threshold_strategy(probs: np.ndarray, threshold: float) -> Strategy:
    """The ``threshold`` rule (see the module docstring)."""
    kept_st = probs[:, ST] + probs[:, BOTH]
    kept_s = probs[:, S] + probs[:, BOTH]
    states = []
    for ps, pst in zip(kept_s, kept_st):
        if pst > threshold and ps > threshold:
            states.append(BOTH)
        elif pst > threshold:
            states.append(ST)
        elif ps > threshold:
            states.append(S)
        else:
            states.append(ST if pst > ps else S)
    return Strategy(tuple(states))


def per_stage_strategy(probs: np.ndarray, stages: np.ndarray) -> Strategy:
    """One state per stage: argmax of the stage's mean marginals (``none`` only where every layer allows it)."""
    states = np.zeros(len(probs), int)
    for st in np.unique(stages):
        idx = stages == st
        mean = probs[idx].mean(axis=0)
        if (probs[idx, NONE] == 0).any():
            mean[NONE] = -1.0
        best = max(STATE_ORDER, key=lambda s: mean[s])
        states[idx] = best
    return Strategy(tuple(int(s) for s in states))


def derive_strategies(pref: pd.DataFrame, ranked: pd.DataFrame | None, *, top_k: int = 3,
                      st_threshold: float = 0.5) -> pd.DataFrame:
    """The derived table: ``id, name, rule, strategy, log_prob`` plus the unit counts (``n_S`` ...). Scores are
    not copied in (the finetuning table joins them), so the table changes only when the derived strategies do."""
    probs = layer_probs(pref)
    post = posterior_from_preference(pref)
    entries: list[tuple[str, Strategy]] = [("most-probable", post.most_probable())]
    for rank, (strat, _) in enumerate(post.top_k(top_k), start=1):
        entries.append((f"top-{rank}", strat))
    entries.append(("threshold", threshold_strategy(probs, st_threshold)))
    stages = pref.sort_values("layer")["stage"].to_numpy() if "stage" in pref else np.zeros(len(pref), int)
    entries.append(("per-stage", per_stage_strategy(probs, stages)))
    if ranked is not None and len(ranked):
        sampled = ranked[ranked["source"].astype(str).str.contains("sample")]
        if len(sampled):
            best = sampled.sort_values(["top1", "log_prob"], ascending=[False, False], kind="stable").iloc[0]
            entries.append(("best-sampled", Strategy.parse(best["strategy"], post.n_layers)))
    rows: dict[str, dict] = {}
    for rule, strat in entries:
        if strat.id in rows:
            rows[strat.id]["rule"] += f";{rule}"
            continue
        rows[strat.id] = {"id": strat.id, "name": rule, "rule": rule, "strategy": strat.text,
                          "log_prob": post.log_prob(strat), **{f"n_{k}": v for k, v in strat.counts().items()}}
    return pd.DataFrame(list(rows.values()))


def best_finetuned(table: pd.DataFrame) -> pd.Series:
    """The derived strategy of the finetune table (``accuracy.csv``: one row a network, ``id``, ``strategy``,
    ``top1_val``) with the best validation top-1 after finetuning; a tie goes to the first row (the order of
    derivation). What ``stfusion export --strategy best`` exports and the report names."""
    scored = table.dropna(subset=["top1_val"])
    if scored.empty:
        raise StfusionError("the finetune table holds no validation accuracy: run the finetune stage first")
    return scored.loc[scored["top1_val"].idxmax()]
