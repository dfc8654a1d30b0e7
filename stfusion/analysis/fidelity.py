"""Ranking fidelity (docs/method.md §7): can the supernet's ranking of strategies be believed? The selection of
the strategies to train stand-alone and every statistic of the default run's check and of the study.

:func:`select_strategies` picks them deterministically, spanning the range of supernet scores: the three uniform
families first (all-S, all-ST, all-S+ST: the hand-designed baselines; all-S is the expected loser on motion),
then, where the ranking marks extrapolated scores (:mod:`stfusion.analysis.exposure`), extrapolated strategies
evenly spaced in score rank until at least a quarter of the selection is extrapolated (as far as there are), then
strategies evenly spaced in score rank over all other fully scored strategies (best and worst included), so that
the chosen ones are spread as the scored population is and the study can show whether extrapolated scores rank
worse (:func:`exposure_effect`).

:func:`study` takes one row per strategy, the supernet-side predictors (the score in the configured BN mode, with
and without BN recalibration, the log-probability), and the stand-alone test accuracy of every seed, an
``(n_strategies, n_seeds)`` array. The stand-alone accuracy of a strategy is the mean over its seeds. Supernet
scores are the **validation** split's (the split strategies are selected on), stand-alone accuracies the **test**
split's, so the correlation asks whether the selection signal predicts held-out quality. Everything is computed
over strategies; intervals resample **strategies** (rows), keeping each row's values together.

* :func:`rank_stats` — Kendall tau-b and Spearman rho (``scipy.stats``) with p-values and 95% bootstrap intervals
  (``scipy.stats.bootstrap``, percentile method, paired resampling of rows). Kendall's p-value is exact
  (``method="exact"``) when neither side has ties, else a permutation p-value; Spearman's is a permutation
  p-value (``scipy.stats.permutation_test``, pairings; exact enumeration when n! is at most the resample count).
  A resample in which one side is constant has no ordering; its tau counts as 0.
* :func:`seed_ceiling` — tau between two seeds of the same strategies (mean over seed pairs): how well any
  predictor can rank one seed's accuracies. The supernet's per-seed tau (mean over seeds) is reported relative
  to it, so both sides rank single-seed accuracies. Its ``mean_reliability`` is the Spearman-Brown projection
  (:func:`spearman_brown`) of that tau to the mean over all the study's seeds: the reliability of the ground
  truth the predictors are judged against.
* :func:`exposure_effect` — whether extrapolated supernet scores (:mod:`stfusion.analysis.exposure`) rank worse:
  the mean rank error of the extrapolated and the other strategies, and tau over the others alone.
* :func:`topk_overlap` — share of the supernet's top k among the stand-alone top k.
* :func:`regret` — best stand-alone mean accuracy minus that of the supernet's pick.
* :func:`paired_difference` — tau(predictor a) - tau(predictor b) against the same stand-alone means, with a
  paired bootstrap interval (the same resampled strategies for both).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from stfusion.analysis.supernet_side import UNIFORM
from stfusion.errors import StfusionError

N_RESAMPLES = 2000  # bootstrap resamples
N_PERMUTATIONS = 9999  # permutation-test resamples (exact enumeration where n! is smaller)
CONFIDENCE = 0.95


def select_strategies(ranked: pd.DataFrame, n: int, setting: str = "n_strategies") -> pd.DataFrame:
    """``n`` distinct fully scored strategies spanning the score range (see the module docstring); ``setting``
    names the parameter ``n`` came from, for the error messages.

    Returns ``id, name, source, strategy, log_prob`` only, no scores: training depends on which strategies were
    chosen, not on their scores, so a rescoring that picks the same strategies leaves the table (and the
    stand-alone runs that depend on it) unchanged. :func:`stfusion.analysis.supernet_side.supernet_scores` joins the
    scores back."""
    if n < 2:
        raise StfusionError(f"{setting} must be at least 2, got {n}")
    ranked = ranked[ranked["top1"].notna()]  # racing: dropped strategies hold no full-split score
    ranked = ranked.sort_values(["top1", "log_prob"], ascending=[False, False], kind="stable").reset_index(drop=True)
    if len(ranked) < n:
        raise StfusionError(
            f"only {len(ranked)} strategies were scored on the whole validation split but {setting} is {n}: "
            f"raise scoring.n_samples (or scoring.keep_top with scoring.racing) or lower {setting}"
        )
    chosen: list[int] = []
    names = ranked["name"].astype(str)
    for fam in UNIFORM:
        hit = ranked.index[names == fam]
        if len(hit) and len(chosen) < n:
            chosen.append(int(hit[0]))
    if "extrapolated" in ranked:
        flagged = ranked["extrapolated"].astype(bool)
        chosen += _evenly_spaced([i for i in ranked.index[flagged] if i not in chosen],
                                 min(-(-n // 4) - int(flagged[chosen].sum()), n - len(chosen)))
    rest = [i for i in ranked.index if i not in chosen]
    chosen += _evenly_spaced(rest, n - len(chosen))
    sel = ranked.loc[sorted(chosen), ["id", "name", "source", "strategy", "log_prob"]]
    sel["id"] = sel["id"].astype(str)
    return sel.reset_index(drop=True)


def _evenly_spaced(indices: list[int], m: int) -> list[int]:
    """``min(m, len(indices))`` of ``indices`` evenly spaced over the list (first and last included)."""
    m = min(m, len(indices))
    if m <= 0:
        return []
    return [indices[i] for i in np.round(np.linspace(0, len(indices) - 1, m)).astype(int)]


def _tau(a, b, axis: int = -1) -> np.ndarray | float:
    """Kendall tau-b along ``axis`` (vectorised over the other axes): ``sum s_a s_b / sqrt(sum s_a^2 sum s_b^2)``
    over all pairs ``i < j``, ``s = sign`` of the pairwise differences (tied pairs count 0, as in tau-b); 0 where
    one side is constant. Equal to ``scipy.stats.kendalltau(a, b).statistic`` for 1-d inputs."""
    a, b = np.moveaxis(np.asarray(a, float), axis, -1), np.moveaxis(np.asarray(b, float), axis, -1)
    i, j = np.triu_indices(a.shape[-1], k=1)
    sa = np.sign(a[..., i] - a[..., j])
    sb = np.sign(b[..., i] - b[..., j])
    num = (sa * sb).sum(axis=-1)
    den = np.sqrt(np.abs(sa).sum(axis=-1) * np.abs(sb).sum(axis=-1))
    out = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return out[()]  # a numpy scalar for 1-d inputs


def _rho(a, b, axis: int = -1) -> np.ndarray | float:
    """Spearman rho along ``axis`` (average ranks for ties; vectorised); 0 where one side is constant."""
    from scipy.stats import rankdata

    ra = rankdata(np.asarray(a, float), axis=axis)
    rb = rankdata(np.asarray(b, float), axis=axis)
    ra = ra - ra.mean(axis=axis, keepdims=True)
    rb = rb - rb.mean(axis=axis, keepdims=True)
    num = (ra * rb).sum(axis=axis)
    den = np.sqrt((ra * ra).sum(axis=axis) * (rb * rb).sum(axis=axis))
    out = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return out[()]  # a numpy scalar for 1-d inputs


def _finite_pairs(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    return a[ok], b[ok]


def bootstrap_interval(stat: Callable[..., np.ndarray], columns: Sequence[np.ndarray], seed: int = 0,
                       n_resamples: int = N_RESAMPLES) -> tuple[float, float]:
    """95% percentile bootstrap interval of ``stat(*columns, axis=-1)`` (a vectorised statistic), resampling
    rows (paired)."""
    from scipy.stats import bootstrap

    res = bootstrap(tuple(np.asarray(c, float) for c in columns), stat, paired=True, vectorized=True,
                    n_resamples=n_resamples, confidence_level=CONFIDENCE, method="percentile",
                    random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _permutation_p(stat: Callable[..., np.ndarray], a, b, seed: int, n_resamples: int = N_PERMUTATIONS) -> float:
    from scipy.stats import permutation_test

    res = permutation_test((a, b), stat, permutation_type="pairings", vectorized=True, n_resamples=n_resamples,
                           alternative="two-sided", random_state=np.random.default_rng(seed))
    return float(res.pvalue)


def rank_stats(a, b, seed: int = 0, n_resamples: int = N_RESAMPLES, n_permutations: int = N_PERMUTATIONS) -> dict:
    """Kendall tau-b and Spearman rho of ``a`` vs ``b`` (``scipy.stats.kendalltau`` / ``spearmanr``) with p-values
    and 95% bootstrap intervals, over the pairs where both are finite.

    Keys ``n`` (those pairs), ``kendall_tau, kendall_p, kendall_p_method, kendall_ci, spearman_rho, spearman_p,
    spearman_ci``; the statistics are ``None`` where undefined (fewer than 2 pairs, or a constant side)."""
    from scipy.stats import kendalltau, spearmanr

    a, b = _finite_pairs(a, b)
    out = {"n": int(len(a))}
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return {**out, **dict.fromkeys(("kendall_tau", "kendall_p", "kendall_p_method", "kendall_ci", "spearman_rho",
                                        "spearman_p", "spearman_ci"))}
    ties = len(np.unique(a)) < len(a) or len(np.unique(b)) < len(b)
    if ties:
        kp, method = _permutation_p(_tau, a, b, seed, n_permutations), "permutation"
    else:
        kp, method = float(kendalltau(a, b, method="exact").pvalue), "exact"
    return {**out, "kendall_tau": float(kendalltau(a, b).statistic), "kendall_p": kp, "kendall_p_method": method,
            "kendall_ci": list(bootstrap_interval(_tau, (a, b), seed, n_resamples)),
            "spearman_rho": float(spearmanr(a, b).statistic),
            "spearman_p": _permutation_p(_rho, a, b, seed + 1, n_permutations),
            "spearman_ci": list(bootstrap_interval(_rho, (a, b), seed + 2, n_resamples))}


def seed_ceiling(per_seed: np.ndarray, seed: int = 0, n_resamples: int = N_RESAMPLES) -> dict:
    """Tau between seeds of the same strategies: ``per_seed`` is ``(n_strategies, n_seeds)``. The mean tau over
    all seed pairs, with a bootstrap interval over strategies (``None`` with fewer than 2 seeds)."""
    per_seed = np.asarray(per_seed, float)
    if per_seed.ndim != 2 or per_seed.shape[1] < 2:
        return {"tau": None, "ci": None, "pairs": 0, "mean_reliability": None}
    pairs = list(itertools.combinations(range(per_seed.shape[1]), 2))

    def mean_tau(*cols, axis=-1):
        return np.mean([_tau(cols[i], cols[j], axis=axis) for i, j in pairs], axis=0)

    cols = [per_seed[:, j] for j in range(per_seed.shape[1])]
    tau = float(mean_tau(*cols))
    return {"tau": tau, "ci": list(bootstrap_interval(mean_tau, cols, seed, n_resamples)), "pairs": len(pairs),
            "mean_reliability": spearman_brown(tau, per_seed.shape[1])}


def spearman_brown(r: float, m: int) -> float | None:
    """Reliability of the mean of ``m`` measurements whose pairwise agreement is ``r``: ``m r / (1 + (m - 1) r)``
    (applied to a rank correlation as an approximation; docs/method.md §7); ``None`` where ``r <= -1/(m-1)``."""
    den = 1 + (m - 1) * r
    return m * r / den if den > 0 else None


def exposure_effect(df: pd.DataFrame, pred, truth) -> dict | None:
    """Do extrapolated scores (``df["extrapolated"]``) rank worse? ``n_extrapolated``, the mean absolute rank
    error (supernet rank vs stand-alone rank among all strategies, 1 = best) of the extrapolated strategies and of
    the others, and Kendall tau over the others alone (``None`` with fewer than 3 of them). ``None`` where the
    table has no exposure."""
    if "extrapolated" not in df:
        return None
    flag = df["extrapolated"].fillna(False).astype(bool).to_numpy()
    gap = np.abs(pd.Series(pred).rank(ascending=False).to_numpy() - pd.Series(truth).rank(ascending=False).to_numpy())
    pred, truth = np.asarray(pred, float), np.asarray(truth, float)
    return {"n_extrapolated": int(flag.sum()),
            "rank_error_extrapolated": float(gap[flag].mean()) if flag.any() else None,
            "rank_error_exposed": float(gap[~flag].mean()) if (~flag).any() else None,
            "kendall_tau_exposed": float(_tau(truth[~flag], pred[~flag])) if (~flag).sum() >= 3 else None}


def per_seed_tau(predictor, per_seed: np.ndarray) -> float:
    """Mean over seeds of tau(predictor, that seed's accuracies): comparable with :func:`seed_ceiling`."""
    per_seed = np.asarray(per_seed, float)
    return float(np.mean([_tau(predictor, per_seed[:, j]) for j in range(per_seed.shape[1])]))


def topk_overlap(predictor, truth, k: int) -> float | None:
    """``|top-k(predictor) & top-k(truth)| / k`` (ties broken by position); ``None`` when k exceeds n."""
    predictor, truth = np.asarray(predictor, float), np.asarray(truth, float)
    if k > len(truth):
        return None
    top_pred = set(np.argsort(-predictor, kind="stable")[:k])
    top_true = set(np.argsort(-truth, kind="stable")[:k])
    return len(top_pred & top_true) / k


def regret(predictor, truth) -> dict:
    """The supernet's pick (argmax of ``predictor``): its stand-alone accuracy, the best stand-alone accuracy
    and their difference (``regret`` >= 0)."""
    predictor, truth = np.asarray(predictor, float), np.asarray(truth, float)
    pick = int(np.argmax(predictor))
    best = float(np.max(truth))
    return {"pick_index": pick, "pick_standalone": float(truth[pick]), "best_standalone": best,
            "regret": best - float(truth[pick])}


def paired_difference(truth, a, b, seed: int = 0, n_resamples: int = N_RESAMPLES) -> dict:
    """``tau(truth, a) - tau(truth, b)`` with a paired 95% bootstrap interval (same strategies resampled)."""
    truth, a, b = (np.asarray(x, float) for x in (truth, a, b))
    ok = np.isfinite(truth) & np.isfinite(a) & np.isfinite(b)
    truth, a, b = truth[ok], a[ok], b[ok]
    if len(truth) < 3:
        return {"difference": None, "ci": None}

    def diff(t, x, y, axis=-1):
        return _tau(t, x, axis=axis) - _tau(t, y, axis=axis)

    return {"difference": float(diff(truth, a, b)), "ci": list(bootstrap_interval(diff, (truth, a, b), seed, n_resamples))}


#: the predictor whose ranking is judged: the supernet score in the configured BN mode
MAIN = "supernet_top1"
#: (label, column) of the supernet-side predictors compared beside it
PREDICTORS = (("recal", "supernet_top1_recal"), ("plain_bn", "supernet_top1_plain_bn"), ("log_prob", "log_prob"))
_HEADLINE = ("kendall_tau", "kendall_p", "spearman_rho", "spearman_p")


def headline(res: dict) -> dict:
    """The flat keys of a :func:`study` result: ``kendall_tau``, ``kendall_p``, ``spearman_rho``, ``spearman_p``
    and ``n`` of the main predictor, the same four suffixed ``_recal``, ``_plain_bn``, ``_log_prob`` of the
    others (``None`` where a predictor is missing)."""
    out = {k: res["supernet"][k] for k in (*_HEADLINE, "n")}
    for label, _ in PREDICTORS:
        out.update({f"{k}_{label}": (res.get(label) or {}).get(k) for k in _HEADLINE})
    return out


def study(df: pd.DataFrame, per_seed: np.ndarray, main: str = MAIN, seed: int = 0, n_resamples: int = N_RESAMPLES,
          n_permutations: int = N_PERMUTATIONS) -> dict:
    """All statistics of a study: ``df`` has a row a strategy with ``id``, ``strategy`` and the predictor columns;
    ``per_seed`` is its stand-alone test accuracies, ``(n_strategies, n_seeds)``.

    The stand-alone accuracy of a strategy is the mean over its seeds; ``main`` is the predictor whose ranking is
    judged. The result holds the :func:`headline` keys too."""
    per_seed = np.asarray(per_seed, float)
    truth = per_seed.mean(axis=1)
    pred = df[main].to_numpy(float)
    out: dict = {"n_strategies": int(len(df)), "n_seeds": int(per_seed.shape[1]), "predictor": main,
                 "standalone": "mean stand-alone top-1 over seeds (test split)"}
    out["supernet"] = rank_stats(truth, pred, seed, n_resamples, n_permutations)
    for label, col in PREDICTORS:
        if col in df:
            out[label] = rank_stats(truth, df[col].to_numpy(float), seed, n_resamples, n_permutations)
    out["ceiling"] = seed_ceiling(per_seed, seed, n_resamples)
    out["supernet_per_seed_tau"] = per_seed_tau(pred, per_seed)
    ceil = out["ceiling"]["tau"]
    out["relative_to_ceiling"] = out["supernet_per_seed_tau"] / ceil if ceil and ceil > 0 else None
    out["topk_overlap"] = {str(k): topk_overlap(pred, truth, k) for k in (3, 5)}
    reg = regret(pred, truth)
    reg["pick"] = str(df["id"].iloc[reg.pop("pick_index")])
    out["regret"] = reg
    out["differences"] = {
        f"{a}-{b}": paired_difference(truth, df[ca].to_numpy(float), df[cb].to_numpy(float), seed, n_resamples)
        for (a, ca), (b, cb) in itertools.combinations(PREDICTORS, 2) if ca in df and cb in df
    }
    out["misranked"] = misranked(df, pred, truth)
    out["exposure"] = exposure_effect(df, pred, truth)
    return {**headline(out), **out}


def misranked(df: pd.DataFrame, pred, truth, n: int = 5) -> list[dict]:
    """The ``n`` strategies whose supernet rank is farthest from their stand-alone rank (1 = best)."""
    pred_rank = pd.Series(pred).rank(ascending=False, method="average").to_numpy()
    true_rank = pd.Series(truth).rank(ascending=False, method="average").to_numpy()
    gap = pred_rank - true_rank
    order = np.argsort(-np.abs(gap), kind="stable")[:n]
    return [{"id": str(df["id"].iloc[i]), "strategy": str(df["strategy"].iloc[i]) if "strategy" in df else "",
             "supernet_rank": float(pred_rank[i]), "standalone_rank": float(true_rank[i]),
             "supernet_score": float(pred[i]), "standalone_mean": float(truth[i])} for i in order]


def plot_study(df: pd.DataFrame, per_seed: np.ndarray, path):
    """Mean stand-alone accuracy over seeds (bars: min-max) against the supernet score, BN recalibrated and plain
    BN; strategy names beside the recalibrated points. ``per_seed``: ``(n_strategies, n_seeds)``."""
    from stfusion.analysis.plots import finish, pyplot

    plt = pyplot()
    per_seed = np.asarray(per_seed, float)
    mean = per_seed.mean(axis=1)
    bars = [mean - per_seed.min(axis=1), per_seed.max(axis=1) - mean]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for col, label, marker in (("supernet_top1_recal", "BN recalibrated", "o"),
                               ("supernet_top1_plain_bn", "plain BN (paper)", "x")):
        if col in df:
            ax.errorbar(df[col], mean, yerr=bars, fmt=marker, ms=4, capsize=2, label=label)
    if "supernet_top1_recal" in df:
        for name, x, y in zip(df["name"].astype(str), df["supernet_top1_recal"], mean):
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    return finish(fig, ax, path, xlabel="supernet score (validation top-1)", title="ranking fidelity",
                  ylabel=f"stand-alone top-1 (test), mean over {per_seed.shape[1]} seed(s), bars min-max")


def _fmt(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _ci(ci) -> str:
    return "n/a" if not ci else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def summary_lines(res: dict) -> list[str]:
    """Markdown lines stating every figure of a study result (:func:`study`)."""
    s = res["supernet"]
    seeds = "1 seed" if res["n_seeds"] == 1 else f"{res['n_seeds']} seeds"
    L = [f"Over {res['n_strategies']} strategies x {seeds} (stand-alone accuracy: the mean over seeds, test "
         f"split; predictor `{res['predictor']}`):", ""]
    L.append(f"* Kendall tau-b {_fmt(s['kendall_tau'])} (95% CI {_ci(s['kendall_ci'])}, p = "
             f"{_fmt(s['kendall_p'], 4)}, {s['kendall_p_method'] or 'n/a'}); Spearman rho {_fmt(s['spearman_rho'])} "
             f"(95% CI {_ci(s['spearman_ci'])}, permutation p = {_fmt(s['spearman_p'], 4)})")
    for label in ("recal", "plain_bn", "log_prob"):
        r = res.get(label)
        if r:
            L.append(f"* {label}: tau {_fmt(r['kendall_tau'])} {_ci(r['kendall_ci'])}, p {_fmt(r['kendall_p'], 4)}; "
                     f"rho {_fmt(r['spearman_rho'])} {_ci(r['spearman_ci'])}")
    c = res["ceiling"]
    L.append(f"* seed-to-seed ceiling: tau {_fmt(c['tau'])} (95% CI {_ci(c['ci'])}, {c['pairs']} seed pair(s)); "
             f"the supernet's per-seed tau {_fmt(res['supernet_per_seed_tau'])} is "
             f"{_fmt(res['relative_to_ceiling'])} of it")
    if c.get("mean_reliability") is not None:
        L.append(f"* reliability of the ground truth (the mean over {res['n_seeds']} seeds, Spearman-Brown from the "
                 f"seed-to-seed tau): {_fmt(c['mean_reliability'])}")
    e = res.get("exposure")
    if e:
        L.append(f"* extrapolated supernet scores: {e['n_extrapolated']} of {res['n_strategies']}; mean rank error "
                 f"{_fmt(e['rank_error_extrapolated'], 1)} for them vs {_fmt(e['rank_error_exposed'], 1)} for the "
                 f"others; tau over the others alone {_fmt(e['kendall_tau_exposed'])}")
    L.append("* top-k overlap: " + ", ".join(f"k={k}: {_fmt(v)}" for k, v in res["topk_overlap"].items()))
    r = res["regret"]
    L.append(f"* regret of the supernet's pick `{r['pick']}`: {_fmt(r['regret'], 3)} (its stand-alone "
             f"{_fmt(r['pick_standalone'], 3)} vs the best {_fmt(r['best_standalone'], 3)})")
    for k, d in res["differences"].items():
        L.append(f"* paired difference of tau, {k}: {_fmt(d['difference'])} (95% CI {_ci(d['ci'])})")
    if res.get("misranked"):
        L.append("* most mis-ranked: " + "; ".join(
            f"`{m['id']}` supernet rank {m['supernet_rank']:.0f} vs stand-alone {m['standalone_rank']:.0f}"
            for m in res["misranked"]))
    return L
