"""Pooling supernet replicates trained under different seeds (the ``pool_seeds`` stage, ``stfusion compare``).

Every figure pooled over ``n`` seeds is their mean with a 95% interval over the seeds (:func:`seed_interval`): a
Student t interval, ``mean +- t(0.975, n-1) * sd / sqrt(n)``, for fewer than :data:`BOOTSTRAP_FROM` seeds, a
percentile bootstrap over the seeds from :data:`BOOTSTRAP_FROM` on (the t interval assumes a normal spread the
few seeds cannot show; the bootstrap needs enough of them to resample). One seed has no interval (NaN).

* :func:`pool_preference`: layers x units, the mean marginal, its interval and between-seed SD; a cell is
  *uncertain* when its interval includes the value before training or overlaps the interval of the layer's
  next most probable unit.
* :func:`pool_ranking`: every strategy scored in every seed's supernet, ranked by its mean score, with its
  interval and in how many seeds it was the best.
* :func:`stability`: the share of layers whose preferred unit is the same in every seed, the mean pairwise
  Kendall tau between the seeds' scores over the common strategies (interval: bootstrap over the strategies)
  and the between-seed SD of each marginal.
* :func:`require_same_settings`: replicates differ in their seed only.
"""

from __future__ import annotations

from itertools import combinations
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from stfusion.analysis.space import STATE_COLUMNS
from stfusion.errors import StfusionError

LEVEL = 0.95  #: the level of every interval over seeds
BOOTSTRAP_FROM = 5  #: seeds from which the interval is a bootstrap over seeds instead of a t interval
N_BOOTSTRAP = 2000
#: the score columns of a ranking pooled over the seeds (each the mean; ``top1`` also with its interval)
SCORE_COLUMNS = ("log_prob", "prob", "top1", "top5", "top1_motion", "top1_appearance", "top1_test",
                 "top1_test_motion", "top1_test_appearance", "top1_recal", "top1_plain_bn")
#: the keys (dotted) of a replicate's training record (:func:`stfusion.stages.strategies.training_record`) that may differ
PER_SEED_KEYS = ("config.seed",)


def interval_method(n: int) -> str:
    """``t`` (fewer than :data:`BOOTSTRAP_FROM` seeds) or ``bootstrap`` (over seeds)."""
    return "bootstrap" if n >= BOOTSTRAP_FROM else "t"


def seed_interval(values: np.ndarray, level: float = LEVEL, rng_seed: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                                         np.ndarray]:
    """Mean and ``level`` interval over the seeds of ``values`` ``(n_seeds, ...)``: ``(mean, low, high)``, each
    of shape ``values.shape[1:]`` (:func:`interval_method`; NaN bounds for one seed)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    n = x.shape[0]
    mean = x.mean(axis=0)
    if n < 2:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan.copy()
    if interval_method(n) == "t":
        half = stats.t.ppf(0.5 + level / 2, n - 1) * x.std(axis=0, ddof=1) / np.sqrt(n)
        return mean, mean - half, mean + half
    idx = np.random.default_rng(rng_seed).integers(0, n, size=(N_BOOTSTRAP, n))
    means = x[idx].mean(axis=1)
    tail = (1 - level) / 2
    return mean, np.quantile(means, tail, axis=0), np.quantile(means, 1 - tail, axis=0)


def _sd(x: np.ndarray) -> np.ndarray:
    return x.std(axis=0, ddof=1) if x.shape[0] > 1 else np.zeros(x.shape[1:])


# -------------------------------------------------------------------------------------------- preference
def pool_preference(prefs: Sequence[pd.DataFrame], initial: Mapping[str, float]) -> pd.DataFrame:
    """The pooled preference table of the seeds' tables (:func:`stfusion.analysis.space.preference_table`, one
    row a layer): the per-seed columns averaged over the seeds (``preferred``: the unit of the largest mean
    marginal), and per unit ``X`` of ``P(X)``: ``P(X) low``, ``P(X) high`` (interval over seeds),
    ``P(X) sd`` and ``P(X) uncertain`` (the interval includes the marginal before training, ``initial``, or
    overlaps that of the layer's next most probable unit; never for a unit that has probability 0 in every seed,
    such as ``none`` in a layer without a bypass). Intervals are clipped to ``[0, 1]``. ``keep_S`` / ``keep_ST`` are the mean keep
    probabilities (the factorised posterior closest to the pooled one); with one seed the table is the seed's."""
    tables = [p.sort_values("layer").reset_index(drop=True) for p in prefs]
    out = tables[0].copy()
    numeric = [c for c in out.columns if c not in ("layer", "stage", "preferred", "keep_prob_rule")]
    for col in numeric:
        out[col] = np.mean([t[col].to_numpy(float) for t in tables], axis=0)
    values = np.stack([t[STATE_COLUMNS].to_numpy(float) for t in tables])  # (seeds, layers, units)
    mean, low, high = seed_interval(values)
    low, high = np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)  # probabilities: the t interval can pass 0 or 1
    possible = (values > 0).any(axis=0)  # (layers, units): False for `none` in a layer without a bypass
    order = np.argsort(-mean, axis=1, kind="stable")
    out["preferred"] = [STATE_COLUMNS[i][2:-1] for i in order[:, 0]]
    sd = _sd(values)
    for j, col in enumerate(STATE_COLUMNS):
        out[f"{col} low"], out[f"{col} high"], out[f"{col} sd"] = low[:, j], high[:, j], sd[:, j]
    uncertain = np.zeros_like(mean, dtype=bool)
    for i in range(len(out)):
        first, second = order[i, 0], order[i, 1]
        for j, col in enumerate(STATE_COLUMNS):
            rival = second if j == first else first
            prior = initial.get(col, np.nan)
            overlaps = high[i, j] >= low[i, rival] and high[i, rival] >= low[i, j]
            uncertain[i, j] = bool(possible[i, j] and (low[i, j] <= prior <= high[i, j] or overlaps))
    for j, col in enumerate(STATE_COLUMNS):
        out[f"{col} uncertain"] = uncertain[:, j]
    return out


# ------------------------------------------------------------------------------------------------ ranking
def pool_ranking(rankings: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """The strategies every seed scored (by ``id``), one row each, ranked by the mean validation top-1 over the
    seeds (ties by mean log-probability): the first seed's descriptive columns, the mean of each of
    :data:`SCORE_COLUMNS`, ``top1 low`` / ``top1 high`` (interval over seeds), ``top1 sd``, ``n_seeds`` and
    ``best_in_seeds`` (in how many seeds the strategy had the best top-1 of the common set). With one seed the
    table is the seed's ranking (plus those columns)."""
    seeds = list(rankings)
    common = set.intersection(*(set(r["id"].astype(str)) for r in rankings.values()))
    first = rankings[seeds[0]]
    ids = [i for i in first["id"].astype(str) if i in common]
    tables = {s: r.assign(id=r["id"].astype(str)).set_index("id").loc[ids] for s, r in rankings.items()}
    out = tables[seeds[0]].copy()
    for col in [c for c in SCORE_COLUMNS if c in out]:
        out[col] = np.mean([t[col].to_numpy(float) for t in tables.values()], axis=0)
    top1 = np.stack([t["top1"].to_numpy(float) for t in tables.values()])
    _, out["top1 low"], out["top1 high"] = seed_interval(top1)
    out["top1 sd"] = _sd(top1)
    out["n_seeds"] = len(seeds)
    best = np.zeros(len(ids), dtype=int)
    for row in top1:
        if np.isfinite(row).any():
            best[int(np.nanargmax(row))] += 1
    out["best_in_seeds"] = best
    out = out.reset_index().sort_values(["top1", "log_prob"], ascending=[False, False], kind="stable")
    out["rank"] = np.arange(1, len(out) + 1)
    return out.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- stability
def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import stats

    ok = np.isfinite(a) & np.isfinite(b)
    return float(stats.kendalltau(a[ok], b[ok]).statistic) if ok.sum() >= 2 else float("nan")


def mean_pairwise_tau(scores: np.ndarray) -> float:
    """Mean Kendall tau-b over every pair of seeds of ``scores`` ``(n_seeds, n_strategies)`` (NaN: one seed)."""
    taus = [kendall_tau(scores[i], scores[j]) for i, j in combinations(range(len(scores)), 2)]
    return float(np.nanmean(taus)) if taus and np.isfinite(taus).any() else float("nan")


def pairwise_tau_interval(scores: np.ndarray, level: float = LEVEL, rng_seed: int = 0) -> tuple[float, float]:
    """A ``level`` percentile bootstrap interval of :func:`mean_pairwise_tau` over the strategies (the seeds
    are few; the strategies are what resampling can vary)."""
    if len(scores) < 2 or scores.shape[1] < 3:
        return float("nan"), float("nan")
    rng = np.random.default_rng(rng_seed)
    draws = [mean_pairwise_tau(scores[:, rng.integers(0, scores.shape[1], scores.shape[1])]) for _ in range(400)]
    tail = (1 - level) / 2
    return float(np.nanquantile(draws, tail)), float(np.nanquantile(draws, 1 - tail))


def stability(prefs: Mapping[int, pd.DataFrame], rankings: Mapping[int, pd.DataFrame]) -> dict:
    """The stability figures of the replicates: ``same_preferred_share`` (layers whose most probable unit is
    the same in every seed, and ``layers_disagreeing`` with each seed's unit), ``tau_mean`` with ``tau_low`` /
    ``tau_high`` (mean pairwise Kendall tau of the seeds' validation top-1 over the strategies every seed
    scored), ``marginal_sd`` (between-seed SD of each marginal, per layer) and the interval method."""
    seeds = list(prefs)
    tables = [prefs[s].sort_values("layer").reset_index(drop=True) for s in seeds]
    preferred = np.array([t["preferred"].astype(str).to_numpy() for t in tables])  # (seeds, layers)
    same = (preferred == preferred[0]).all(axis=0)
    common = set.intersection(*(set(r["id"].astype(str)) for r in rankings.values()))
    ids = sorted(common)
    scores = np.stack([r.assign(id=r["id"].astype(str)).set_index("id").loc[ids, "top1"].to_numpy(float)
                       for r in rankings.values()])
    low, high = pairwise_tau_interval(scores)
    sd = _sd(np.stack([t[STATE_COLUMNS].to_numpy(float) for t in tables]))
    return {
        "seeds": [int(s) for s in seeds], "n_seeds": len(seeds), "interval": interval_method(len(seeds)),
        "level": LEVEL, "same_preferred": int(same.sum()), "n_layers": int(len(same)),
        "same_preferred_share": float(same.mean()),
        "layers_disagreeing": {int(tables[0]["layer"].iloc[i]): dict(zip(map(str, seeds), preferred[:, i].tolist()))
                               for i in np.flatnonzero(~same)},
        "n_common_strategies": len(ids), "tau_mean": mean_pairwise_tau(scores), "tau_low": low, "tau_high": high,
        "marginal_sd": {int(tables[0]["layer"].iloc[i]): dict(zip(STATE_COLUMNS, map(float, sd[i])))
                        for i in range(len(sd))},
    }


def derived_alone(pooled: pd.DataFrame, per_seed: Mapping[int, pd.DataFrame]) -> list[int]:
    """For each row of the derived table ``pooled`` (from the pooled evidence), the number of seeds whose own
    derived table (:func:`stfusion.analysis.derive.derive_strategies` of that seed alone) holds its strategy."""
    own = [set(t["id"].astype(str)) for t in per_seed.values()]
    return [sum(str(i) in s for s in own) for i in pooled["id"]]


# --------------------------------------------------------------------------------------------- settings
def require_same_settings(records: Mapping[int, Mapping]) -> None:
    """Stop with one line naming the first key (dotted) whose value differs between the seeds' training records
    (:data:`PER_SEED_KEYS` may differ): pooling replicates trained differently would mix two experiments."""
    items = list(records.items())
    (s0, first), rest = items[0], items[1:]
    for s, rec in rest:
        key = _first_difference(first, rec)
        if key is not None:
            raise StfusionError(f"seeds {s0} and {s} were trained with different settings: {key} differs; "
                                "retrain them with the same parameters before pooling")


def _first_difference(a, b, prefix: str = "") -> str | None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b)):
            name = f"{prefix}{key}"
            if name in PER_SEED_KEYS:
                continue
            if key not in a or key not in b:
                return name
            found = _first_difference(a[key], b[key], f"{name}.")
            if found is not None:
                return found
        return None
    return None if a == b else prefix.rstrip(".")


def stability_markdown(stab: dict) -> str:
    """The stability figures in words, with the between-seed SD of each marginal as a table."""
    from stfusion.io.tables import to_markdown

    sd = pd.DataFrame([{"layer": str(layer), **v} for layer, v in stab["marginal_sd"].items()])
    disagree = "; ".join(f"layer {layer}: " + ", ".join(f"seed {s} {u}" for s, u in units.items())
                         for layer, units in stab["layers_disagreeing"].items()) or "none"
    return "\n".join([
        f"Seeds {stab['seeds']} ({int(stab['level'] * 100)}% intervals: {stab['interval']} over seeds).", "",
        f"- layers whose preferred unit is the same in every seed: {stab['same_preferred']} of {stab['n_layers']} "
        f"(disagreeing: {disagree})",
        f"- mean pairwise Kendall tau of the seeds' supernet scores over {stab['n_common_strategies']} common "
        f"strategies: {stab['tau_mean']:.3f} (bootstrap over strategies: {stab['tau_low']:.3f} to "
        f"{stab['tau_high']:.3f})", "", "Between-seed SD of each marginal:", "", to_markdown(sd, ".3f"), ""])


# ------------------------------------------------------------------------------------------ run figures
#: the uniform strategies' names and the key of each in a run's figures
UNIFORM_KEYS = {"all-S": "all_S", "all-ST": "all_ST", "all-S+ST": "all_SST"}


def run_figures(summary: Mapping, ranked: pd.DataFrame | None) -> dict[str, float]:
    """The headline figures of one supernet (its analysis summary and ranking), under the keys of
    ``metrics.json``: posterior entropy, its ratio to the start, the drop-rate spread, the best sampled
    strategy's validation top-1 and the uniform strategies' (overall, on appearance and motion classes)."""
    out: dict[str, float] = {k: float(summary[k]) for k in ("entropy", "drop_rate_spread") if k in summary}
    if summary.get("entropy") is not None and summary.get("entropy_initial"):
        out["entropy_ratio"] = float(summary["entropy"]) / float(summary["entropy_initial"])
    if ranked is None or not len(ranked):
        return out
    sampled = ranked[ranked["source"].astype(str).str.contains("sample")]
    if len(sampled):
        out["best_sampled_top1"] = float(sampled.sort_values(["top1", "log_prob"], ascending=[False, False],
                                                             kind="stable").iloc[0]["top1"])
    for name, key in UNIFORM_KEYS.items():
        hit = ranked[ranked["name"].astype(str) == name]
        for col in ("top1", "top1_appearance", "top1_motion"):
            if len(hit) and col in hit:
                out[f"{key}_{col}"] = float(hit.iloc[0][col])
    return out


def pool_figures(per_seed: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Figures of several seeds (:func:`run_figures`) pooled: ``<key>_seed_mean``, the mean over the seeds
    that have it, with ``<key>_seed_low`` / ``<key>_seed_high`` (interval over seeds, :func:`seed_interval`)
    from two seeds on; ``n_seeds``."""
    out: dict[str, float] = {"n_seeds": len(per_seed)}
    for key in dict.fromkeys(k for figures in per_seed for k in figures):
        values = np.array([[f[key]] for f in per_seed if key in f and f[key] is not None], dtype=float)
        mean, low, high = seed_interval(values)
        out[f"{key}_seed_mean"] = float(mean[0])
        if len(values) > 1:
            out[f"{key}_seed_low"], out[f"{key}_seed_high"] = float(low[0]), float(high[0])
    return out
