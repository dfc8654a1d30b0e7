"""``results/report.md``, the page a person reads first, and ``results/metrics.json`` (scalars for DVC).

The report states the checks of docs/method.md §9 plainly, each PASS or FAIL with its numbers:

1. non-uniform, depth-dependent posterior: mean P(ST) over the last third of the fusion layers exceeds that of
   the first third and exceeds mean P(S) over the last third, both by more than ``DEPTH_MARGIN`` (so that the
   untrained posterior, where every gate still has its initial drop rate, does not pass);
2. S+ST is the most probable unit in the earliest layers (an observation of the paper; the report says plainly
   when it does not hold);
3. the best of the sampled strategies (selected on validation) scores at least as well as the uniform all-S,
   all-ST and all-S+ST strategies on validation; all-S is clearly below (by at least ``MOTION_GAP``) on the
   motion classes; on the appearance classes the uniform strategies and the best are within
   ``APPEARANCE_SPREAD``;
4. supernet scores predict stand-alone accuracy: Kendall tau > 0 (with BN recalibration; the plain-BN value is
   given beside it);
5. the marginals obey the product structure of §5 exactly (to ``PRODUCT_TOL``), and the log-probability of every
   listed strategy is the sum of its layers' log-marginals.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stfusion.analysis.compare import why_no_tau
from stfusion.analysis.derive import best_finetuned
from stfusion.analysis.space import preference_summary
from stfusion.analysis.supernet_side import UNIFORM
from stfusion.config.layout import RunLayout
from stfusion.core.costs import CONVENTION
from stfusion.data.transforms import views_text
from stfusion.io.tables import to_markdown
from stfusion.report.files import CONFUSION, CURVES, PARETO_DERIVED, PARETO_NETWORK

DEPTH_MARGIN = 0.02
MOTION_GAP = 0.15
APPEARANCE_SPREAD = 0.10
PRODUCT_TOL = 1e-9
HTML_COMMAND = "snakemake --report results/report.zip"
HTML_POINTER = (f"This page is the one to read first. The same tables as HTML with every figure: `{HTML_COMMAND}` "
                "(a Snakemake report; open report.html inside the zip) or `dvc plots show` (DVC's plots in "
                "dvc_plots/index.html). The HTML tables and figures alone are in `report/`.")
STAGE_ORDER = ["generate", "prepare", "train_supernet", "sample_strategies", "score_strategies", "analyze",
               "derive", "finetune", "validate_ranking", "report"]


def _read_csv(path: str | Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if Path(path).is_file() else None


def _read_json(path: str | Path) -> dict | None:
    return json.loads(Path(path).read_text()) if Path(path).is_file() else None


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{float(x):.{digits}f}"


def _md(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    if df is None or df.empty:
        return "_(not available)_"
    return to_markdown(df, floatfmt)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**PASS**" if ok else "**FAIL**")


# ------------------------------------------------------------------------------------------------ checks
def product_structure_error(pref: pd.DataFrame, ranked: pd.DataFrame | None) -> float:
    """Largest deviation of the preference table from ``P(S)=a(1-b)``, ``P(ST)=(1-a)b``, ``P(S+ST)=ab``,
    ``P(none)=(1-a)(1-b)`` (renormalised where ``none`` is not allowed), and of every strategy's log-probability
    from the sum of its layers' log-marginals."""
    from stfusion.analysis.derive import layer_probs
    from stfusion.core.strategies import STATE_BY_NAME

    a, b = pref["keep_S"].to_numpy(float), pref["keep_ST"].to_numpy(float)
    raw = np.stack([(1 - a) * (1 - b), a * (1 - b), (1 - a) * b, a * b], axis=1)
    allow_none = pref["P(none)"].to_numpy(float) > 0
    raw[~allow_none, 0] = 0.0
    expect = raw / raw.sum(axis=1, keepdims=True)
    probs = layer_probs(pref)
    err = float(np.abs(probs - expect).max())
    err = max(err, float(np.abs(probs.sum(axis=1) - 1).max()))
    if ranked is not None:
        logp = np.log(np.maximum(probs, 1e-300))
        for text, lp in zip(ranked["strategy"], ranked["log_prob"]):
            states = [STATE_BY_NAME[t] for t in str(text).split("|")]
            if np.isfinite(lp):
                err = max(err, abs(float(logp[np.arange(len(states)), states].sum()) - float(lp)))
    return err


def _row(df: pd.DataFrame | None, name: str) -> pd.Series | None:
    if df is None:
        return None
    hit = df[df["name"].astype(str) == name]
    return hit.iloc[0] if len(hit) else None


def _uniform_rows(df: pd.DataFrame | None) -> dict[str, pd.Series]:
    """The rows of the uniform strategies (all-S, all-ST, all-S+ST) that ``df`` has, by name."""
    rows = {n: _row(df, n) for n in UNIFORM}
    return {n: r for n, r in rows.items() if r is not None}


def _standalone_appearance(standalone: pd.DataFrame | None) -> str:
    """``"; trained stand-alone (test): all-S 0.81, ..."`` for the uniform strategies among the stand-alone runs."""
    col = "standalone_top1_test_appearance"
    found = _uniform_rows(standalone) if standalone is not None and col in standalone else {}
    if not found:
        return ""
    return "; trained stand-alone (test): " + ", ".join(f"{n} {_fmt(r[col])}" for n, r in found.items())


def extrapolations(rows: dict[str, pd.Series]) -> str:
    """``" — extrapolated scores (exposure below 0.05, ...): all-S 0.012, ..."`` for the rows (by the name the
    check quotes them under) whose supernet score is an extrapolation (:mod:`stfusion.analysis.exposure`); ``""``
    where none is, or where exposure was not recorded."""
    bad = {k: r for k, r in rows.items() if r is not None and bool(r.get("extrapolated", False))}
    if not bad:
        return ""
    first = next(iter(bad.values()))
    return (f" — extrapolated scores (exposure below {_fmt(first.get('min_exposure'), 2)}, so not evidence about "
            "these configurations): " + ", ".join(f"{k} {_fmt(r['exposure'])}" for k, r in bad.items()))


def _fidelity_exposure(fidelity: dict) -> str:
    """What check 4 owes to extrapolated scores: how many of its strategies have one, and tau without them."""
    e = fidelity.get("exposure")
    if not e or not e["n_extrapolated"]:
        return ""
    return (f" — {e['n_extrapolated']} of the {fidelity.get('n')} supernet scores are extrapolations (mean rank "
            f"error {_fmt(e['rank_error_extrapolated'], 1)} vs {_fmt(e['rank_error_exposed'], 1)} for the others; "
            f"tau without them {_fmt(e['kendall_tau_exposed'])})")


def best_sampled(ranked: pd.DataFrame | None) -> pd.Series | None:
    if ranked is None:
        return None
    sampled = ranked[ranked["source"].astype(str).str.contains("sample")]
    if sampled.empty:
        return None
    return sampled.sort_values(["top1", "log_prob"], ascending=[False, False], kind="stable").iloc[0]


def _entropy_ratio(summary: dict) -> float | None:
    """Posterior entropy after training / before training (``None`` where unknown)."""
    e, e0 = summary.get("entropy"), summary.get("entropy_initial")
    return float(e) / float(e0) if e is not None and e0 else None


def compute_checks(pref, ranked, fidelity, initial: dict | None = None,
                   standalone: pd.DataFrame | None = None) -> list[dict]:
    """The §9 checks (see the module docstring). ``initial``: the marginals before training, quoted beside
    check 2 (at the usual initial drop rate S+ST is already the most probable state). ``standalone``: the
    stand-alone runs (``validation/standalone.csv``); where they include uniform strategies, check 3c quotes
    their test accuracy on the appearance classes beside the supernet's (information, not part of the verdict)."""
    checks = _preference_checks(pref, initial)
    checks += _network_checks(ranked, standalone)
    checks.append(_fidelity_check(fidelity))
    if pref is not None:  # 5. product structure
        err = product_structure_error(pref, ranked)
        checks.append({"check": "5. marginals obey the product structure (§5)", "ok": err <= PRODUCT_TOL,
                       "numbers": f"largest deviation {err:.2e} (tolerance {PRODUCT_TOL:.0e})", "value": err})
    return checks


def _preference_checks(pref, initial: dict | None) -> list[dict]:
    """Checks 1 (depth-dependent preference for ST) and 2 (S+ST first) of the preference table ``pref``."""
    summ = preference_summary(pref) if pref is not None else None
    if not summ:
        return [{"check": "1-2. preference", "ok": None, "numbers": "preference table missing"}]
    ok = (summ["mean_P_ST_last_third"] > summ["mean_P_ST_first_third"] + DEPTH_MARGIN
          and summ["mean_P_ST_last_third"] > summ["mean_P_S_last_third"] + DEPTH_MARGIN)
    first = {"check": f"1. posterior depth-dependent, P(ST) rising with depth (Obs. II; margin "
                      f"{DEPTH_MARGIN:.2f})", "ok": ok, "numbers":
             f"mean P(ST): last third {_fmt(summ['mean_P_ST_last_third'])} vs first third "
             f"{_fmt(summ['mean_P_ST_first_third'])}; mean P(S) last third "
             f"{_fmt(summ['mean_P_S_last_third'])} (layers {summ['first_third']} / {summ['last_third']})"}
    pref_first = summ["preferred_first_third"]
    ok2 = all(p == "S+ST" for p in pref_first)
    second = {"check": "2. S+ST most probable in the earliest layers (Obs. I)", "ok": ok2, "numbers":
              f"most probable unit in layers {summ['first_third']}: {', '.join(pref_first)}; mean "
              f"P(S+ST) there {_fmt(summ['mean_P_SST_first_third'])}"
              + (f" (before training: {_fmt(initial.get('P(S+ST)'))})" if initial else "")
              + ("" if ok2 else " — Obs. I is NOT reproduced here")}
    return [first, second]


def _network_checks(ranked, standalone: pd.DataFrame | None) -> list[dict]:
    """Checks 3a-3c: the best sampled strategy against the uniform ones in the ranking ``ranked``."""
    if ranked is None:
        return [{"check": "3. network-level comparison", "ok": None, "numbers": "ranking missing"}]
    best, uni = best_sampled(ranked), _uniform_rows(ranked)
    if best is None or not uni:
        return []
    quoted = {"best sampled": best, **uni}
    txt = ", ".join(f"{k} {_fmt(r['top1'])}" for k, r in uni.items())
    checks = [{"check": "3a. best sampled >= uniform strategies (validation)",
               "ok": all(best["top1"] >= r["top1"] for r in uni.values()),
               "numbers": f"best sampled {_fmt(best['top1'])} (test {_fmt(best.get('top1_test'))}); {txt}"
               + extrapolations(quoted)}]
    if "top1_motion" in ranked and "all-S" in uni:
        top_motion_row = ranked.loc[ranked["top1_motion"].idxmax()]
        top_motion = float(top_motion_row["top1_motion"])
        gap = top_motion - float(uni["all-S"]["top1_motion"])
        checks.append({"check": f"3b. all-S clearly below on motion classes (gap >= {MOTION_GAP:.2f})",
                       "ok": gap >= MOTION_GAP, "numbers":
                       f"all-S motion top-1 {_fmt(uni['all-S']['top1_motion'])} vs best "
                       f"{_fmt(top_motion)} (gap {_fmt(gap)}; best sampled "
                       f"{_fmt(best.get('top1_motion'))})"
                       + extrapolations({"all-S": uni["all-S"], "best on motion": top_motion_row})})
    if "top1_appearance" in ranked:
        vals = [float(r["top1_appearance"]) for r in uni.values()] + [float(best["top1_appearance"])]
        spread = max(vals) - min(vals)
        checks.append({"check": f"3c. appearance classes within {APPEARANCE_SPREAD:.2f}", "ok":
                       spread <= APPEARANCE_SPREAD, "numbers":
                       "appearance top-1: "
                       + ", ".join(f"{k} {_fmt(r['top1_appearance'])}" for k, r in uni.items())
                       + f", best sampled {_fmt(best['top1_appearance'])} (spread {_fmt(spread)})"
                       + extrapolations(quoted) + _standalone_appearance(standalone)})
    return checks


def _fidelity_check(fidelity: dict | None) -> dict:
    """Check 4: the supernet's scores against the stand-alone accuracies (``validation/fidelity.json``)."""
    if not fidelity:
        return {"check": "4. ranking fidelity", "ok": None, "numbers": "stand-alone runs missing"}
    tau = fidelity.get("kendall_tau")
    p_value = "" if tau is None else f" (p {_fmt(fidelity.get('kendall_p'))})"
    return {"check": "4. supernet scores predict stand-alone accuracy (Kendall tau > 0)",
            "ok": None if tau is None else tau > 0, "numbers":
            f"n = {fidelity.get('n')}: tau {_tau_text(tau, fidelity.get('n'))}{p_value}, rho "
            f"{_fmt(fidelity.get('spearman_rho'))}; with BN recalibration tau "
            f"{_fmt(fidelity.get('kendall_tau_recal'))}, plain BN tau "
            f"{_fmt(fidelity.get('kendall_tau_plain_bn'))}; log-probability tau "
            f"{_fmt(fidelity.get('kendall_tau_log_prob'))}" + _fidelity_exposure(fidelity)}


def _check_key(check: dict) -> str:
    """``"3a."`` of ``"3a. best sampled ..."``: the same check across seeds."""
    return check["check"].split(" ")[0]


def seed_fidelity(ranked: pd.DataFrame | None, standalone: pd.DataFrame | None) -> dict | None:
    """Kendall tau of one seed's supernet scores (``top1``) against the stand-alone accuracy (test) of the
    stand-alone runs: check 4 of that seed."""
    from scipy import stats

    if ranked is None or standalone is None or "standalone_top1_test" not in standalone:
        return None
    both = standalone.merge(ranked[["id", "top1"]].astype({"id": str}), left_on=standalone["id"].astype(str),
                            right_on="id", how="inner")
    if len(both) < 3:
        return None
    tau = stats.kendalltau(both["top1"], both["standalone_top1_test"])
    if math.isnan(tau.statistic):  # constant scores: no ranking to compare
        return None
    return {"n": len(both), "kendall_tau": float(tau.statistic), "kendall_p": float(tau.pvalue)}


def seed_checks(layout: RunLayout, seeds, standalone: pd.DataFrame | None) -> dict[int, list[dict]]:
    """The checks of each replicate alone, from its own ranking, preference and summary."""
    out = {}
    for s in seeds:
        run = layout.of_seed(s)
        ranked, summary = _read_csv(run.ranking), _read_json(run.analysis_summary) or {}
        out[int(s)] = compute_checks(_read_csv(run.preference), ranked, seed_fidelity(ranked, standalone),
                                     summary.get("initial_marginals"), standalone)
    return out


def pool_checks(pooled: list[dict], per_seed: dict[int, list[dict]]) -> list[dict]:
    """The pooled checks with ``holds``: "k of n seeds". Check 5 (the product structure) holds of each seed's
    own posterior, not of averaged marginals: its pooled verdict is that it holds in every seed."""
    out = []
    for c in pooled:
        key = _check_key(c)
        oks = [next((d["ok"] for d in checks if _check_key(d) == key), None) for checks in per_seed.values()]
        known = [ok for ok in oks if ok is not None]
        c = {**c, "holds": f"{sum(known)} of {len(known)}" if known else "n/a"}
        if key == "5." and known:
            errs = [next(d["value"] for d in checks if _check_key(d) == key) for checks in per_seed.values()]
            c.update(ok=all(known), value=max(errs), numbers="largest deviation per seed: "
                     + ", ".join(f"{e:.2e}" for e in errs) + f" (tolerance {PRODUCT_TOL:.0e})")
        out.append(c)
    return out


# ------------------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class ReportInputs:
    """What the report reads, each ``None`` (``{}`` for ``summary``) where its stage has not run: the tables of
    :class:`~stfusion.config.layout.RunLayout` (``ranked``: one row a scored strategy; ``pref``: one row a fusion
    layer; ``derived``, ``finetuned``, ``standalone``: one row a network), the rank correlations (``fidelity``),
    the posterior summary, the supernet's history, the cache's manifest and classes, the seconds per stage and
    the ranking-fidelity study's result."""

    ranked: pd.DataFrame | None
    pref: pd.DataFrame | None
    derived: pd.DataFrame | None
    finetuned: pd.DataFrame | None
    standalone: pd.DataFrame | None
    fidelity: dict | None
    summary: dict
    history: pd.DataFrame | None
    manifest: pd.DataFrame | None
    classes: pd.DataFrame | None
    timing: pd.DataFrame
    study: dict | None

    @property
    def n_classes(self) -> int | None:
        return len(self.classes) if self.classes is not None else None

    @property
    def split_sizes(self) -> dict[str, int]:
        """Usable clips per split, most first (``{}`` without a manifest)."""
        m = self.manifest
        if m is not None and "status" in m:
            m = m[m["status"] == "ok"]
        return m["split"].value_counts().to_dict() if m is not None and "split" in m else {}

    @property
    def skipped(self) -> str:
        """The videos ``prepare`` skipped, counted by status (``""`` when none or without a manifest)."""
        m = self.manifest
        if m is None or "status" not in m:
            return ""
        bad = m.loc[m["status"] != "ok", "status"].value_counts()
        return ", ".join(f"{v} {k}" for k, v in sorted(bad.items()))

    @property
    def class_kinds(self) -> dict[str, int]:
        c = self.classes
        return c["kind"].value_counts().to_dict() if c is not None and "kind" in c else {}

    @property
    def total_seconds(self) -> float:
        """Seconds of work over every stage (NaN without timing records)."""
        return float(self.timing["seconds"].sum()) if len(self.timing) else float("nan")


def load_inputs(layout: RunLayout, supernet: RunLayout | None = None) -> ReportInputs:
    """Every input of the report, from the files ``layout`` names (the supernet's history: ``supernet``'s, the
    replicate the later stages start from)."""
    return ReportInputs(
        ranked=_read_csv(layout.ranking), pref=_read_csv(layout.preference), derived=_read_csv(layout.derived),
        finetuned=_read_csv(layout.finetune_table), standalone=_read_csv(layout.standalone_table),
        fidelity=_read_json(layout.fidelity), summary=_read_json(layout.analysis_summary) or {},
        history=_read_csv((supernet or layout).history), manifest=_read_csv(layout.manifest), classes=_read_csv(layout.classes),
        timing=timing_table(Path(layout.timing_dir)), study=_read_json(layout.fidelity_study))


# ------------------------------------------------------------------------------------------------ timing
def timing_table(timing_dir: Path) -> pd.DataFrame:
    """One row a stage (``stage, seconds, jobs``; jobs of a stage summed) in pipeline order."""
    rows = []
    for path in sorted(timing_dir.glob("*.json")) if timing_dir.is_dir() else []:
        info = json.loads(path.read_text())
        rows.append({"stage": info.get("stage", path.stem), "seconds": float(info.get("seconds", float("nan"))),
                     "jobs": int(info.get("jobs", 1))})
    if not rows:
        return pd.DataFrame(columns=["stage", "seconds", "jobs"])
    df = pd.DataFrame(rows).groupby("stage", as_index=False).agg({"seconds": "sum", "jobs": "sum"})
    order = {s: i for i, s in enumerate(STAGE_ORDER)}
    df["_o"] = df["stage"].map(lambda s: order.get(s, 99))
    return df.sort_values("_o").drop(columns="_o").reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ metrics
POSTERIOR_METRICS = ("entropy", "entropy_initial", "drop_rate_spread", "mean_P_ST_first_third",
                     "mean_P_ST_last_third", "mean_P_S_last_third", "mean_P_ST_kept_first_third",
                     "mean_P_ST_kept_last_third")
FIDELITY_METRICS = ("kendall_tau", "spearman_rho", "kendall_tau_plain_bn", "kendall_tau_log_prob",
                    "spearman_rho_plain_bn", "spearman_rho_log_prob")
UNIFORM_KEYS = {"all-S": "all_S", "all-ST": "all_ST", "all-S+ST": "all_SST"}


def compute_metrics(inp: ReportInputs, checks: list[dict], seed: int) -> dict[str, int | float]:
    """The scalars of ``metrics.json``: numbers only (a missing or NaN value leaves its key out), in a fixed
    order (data, posterior, supernet scores, rank correlations, test views, finetuning, checks, time)."""
    m: dict = {"seed": seed, "n_classes": inp.n_classes}
    m.update({f"n_{k}": int(v) for k, v in inp.split_sizes.items()})
    m.update(_posterior_metrics(inp.summary))
    m.update(_ranking_metrics(inp.ranked))
    if inp.fidelity:
        m.update({k: inp.fidelity.get(k) for k in FIDELITY_METRICS}, n_standalone=inp.fidelity.get("n"))
    if inp.ranked is not None and len(inp.ranked):  # the test views every top1_test* is averaged over
        m.update(test_clips=int(inp.ranked["test_clips"].iloc[0]), test_crops=int(inp.ranked["test_crops"].iloc[0]))
    if inp.finetuned is not None and "top1_test" in inp.finetuned and len(inp.finetuned):
        m["best_finetuned_top1_test"] = float(inp.finetuned["top1_test"].max())
    m["checks_passed"] = int(sum(1 for c in checks if c["ok"]))
    m["checks_total"] = int(len(checks))
    total = inp.total_seconds
    m["time_total_s"] = None if math.isnan(total) else round(total, 1)
    for r in inp.timing.itertuples():
        m[f"time_{r.stage}_s"] = round(float(r.seconds), 1)
    return {k: v for k, v in m.items() if isinstance(v, (int, float)) and not math.isnan(v)}


def seed_metrics(layout: RunLayout, seeds) -> dict:
    """Each seed's headline figures pooled (:func:`stfusion.analysis.pooling.pool_figures`: ``<key>_seed_mean``,
    ``_seed_low``, ``_seed_high``), as ``stfusion compare`` reads them."""
    from stfusion.analysis.pooling import pool_figures, run_figures

    runs = [layout.of_seed(s) for s in seeds]
    return pool_figures([run_figures(_read_json(r.analysis_summary) or {}, _read_csv(r.ranking)) for r in runs])


def stability_metrics(stability: dict | None) -> dict:
    """The stability figures of the seeds as scalars (nothing without them; NaN left out)."""
    if not stability:
        return {}
    m = {"same_preferred_layers": stability["same_preferred"],
         "same_preferred_share": stability["same_preferred_share"], "seed_tau": stability["tau_mean"],
         "seed_tau_low": stability["tau_low"], "seed_tau_high": stability["tau_high"]}
    return {k: v for k, v in m.items() if v is not None and not math.isnan(v)}


def _posterior_metrics(summary: dict) -> dict:
    if not summary:
        return {}
    m = {k: summary[k] for k in POSTERIOR_METRICS if k in summary}
    m["entropy_ratio"] = _entropy_ratio(summary)
    m["n_layers_ST_or_SST_above_S"] = len(summary.get("layers_ST_or_SST_above_S", []))
    m["n_layers_ST_kept_above_S_kept"] = len(summary.get("layers_ST_kept_above_S_kept", []))
    return m


def _ranking_metrics(ranked: pd.DataFrame | None) -> dict:
    """The supernet scores of the uniform strategies and of the best sampled one, and the all-S motion gap."""
    if ranked is None:
        return {}
    m: dict = {"n_strategies_scored": int(len(ranked))}
    for name, r in _uniform_rows(ranked).items():
        m.update({f"{UNIFORM_KEYS[name]}_{c}": float(r[c]) for c in ("top1", "top1_motion", "top1_appearance",
                                                                      "top1_test") if c in r})
    best = best_sampled(ranked)
    if best is not None:
        m.update({f"best_sampled_{c}": float(best[c]) for c in ("top1", "top1_motion", "top1_appearance",
                                                                 "top1_test", "top1_test_motion") if c in best})
    if "top1_motion" in ranked:
        m["best_top1_motion"] = float(ranked["top1_motion"].max())
        if "all_S_top1_motion" in m:
            m["all_S_motion_gap"] = m["best_top1_motion"] - m["all_S_top1_motion"]
    return m


# ------------------------------------------------------------------------------------------------ sections
Link = Callable[[str], str]


def _intro(inp: ReportInputs, seed: int, seeds) -> list[str]:
    kinds = ", ".join(f"{v} {k}" for k, v in inp.class_kinds.items()) or "kinds unknown"
    clips = ", ".join(f"{k} {v}" for k, v in sorted(inp.split_sizes.items()))
    return ["# stfusion report", "", HTML_POINTER, "",
            "Spatiotemporal fusion strategies of a 3D CNN as a probability space (Zhou et al., CVPR 2020): a "
            "template network trained with Variational DropPath, strategies scored with its shared weights, "
            "layer-level preferences, derived networks, and a check of the ranking against networks trained on "
            "their own.", "",
            f"**Data**: {inp.n_classes} classes ({kinds}); clips: {clips}"
            f"{f'; skipped by prepare (not used): {inp.skipped} (reasons in manifest.csv)' if inp.skipped else ''}. "
            f"**Seed**: {seed}; supernet seeds {', '.join(map(str, seeds))} (pooled). "
            f"**Keep-probability rule**: {inp.summary.get('keep_prob_rule', 'n/a')} "
            "(`paper`: keep = 1 - sqrt(p), Eq. 7; `plain`: keep = 1 - p). Scores are top-1 on the **validation** "
            "split (selection) unless marked *test* (reporting only).", ""]


def _checks_section(checks: list[dict], per_seed: dict[int, list[dict]]) -> list[str]:
    """The checks on the pooled figures, how many seeds each holds in, and each seed's verdicts and numbers."""
    n = len(per_seed)
    L = ["## Checks (docs/method.md §9)", "", f"Verdicts on the figures pooled over {n} seed(s) (mean over seeds; "
         "check 4: the pooled scores); *holds in* counts the seeds where the check passes on that seed's own "
         "supernet.", "", "| check | result | holds in (seeds) | numbers |", "|---|---|---|---|"]
    L += [f"| {c['check']} | {_verdict(c['ok'])} | {c.get('holds', 'n/a')} | {c['numbers']} |" for c in checks]
    L += ["", "Per seed:", "", "| check | " + " | ".join(f"seed {s}" for s in per_seed) + " |",
          "|---|" + "---|" * n]
    for c in checks:
        key = _check_key(c)
        cells = [next((f"{_verdict(d['ok'])}: {d['numbers']}" for d in per_seed[s] if _check_key(d) == key), "n/a")
                 for s in per_seed]
        L.append(f"| {key} | " + " | ".join(cells) + " |")
    return L + [""]


def _seeds_section(stability: dict | None, ranked: pd.DataFrame | None, derived: pd.DataFrame | None) -> list[str]:
    """The stability figures of the replicates, the pooled ranking with its intervals, and how many seeds would
    have derived each derived strategy alone."""
    from stfusion.analysis.pooling import stability_markdown

    if not stability:
        return []
    L = ["## Seeds: how far the findings replicate", "", stability_markdown(stability)]
    if ranked is not None and "top1 low" in ranked:
        cols = [c for c in ["rank", "name", "strategy", "top1", "top1 low", "top1 high", "top1 sd",
                            "best_in_seeds"] if c in ranked]
        L += [f"Best ten strategies by mean validation top-1 over the seeds (every strategy listed by any seed is "
              f"scored in every seed's supernet; `best_in_seeds`: in how many of {stability['n_seeds']} seeds it "
              "was the best):", "", _md(ranked[cols].head(10), ".3f"), ""]
    alone = stability.get("derived_alone") or {}
    if derived is not None and alone:
        tab = derived[["name", "strategy"]].assign(seeds_alone=derived["strategy"].map(alone))
        L += [f"Derived strategies (from the pooled preference) and how many of the {stability['n_seeds']} seeds "
              "would have derived each alone:", "", _md(tab), ""]
    return L


def _motion_section(ranked: pd.DataFrame | None) -> list[str]:
    """Validation and test accuracy on the motion and appearance classes: the families, the best sampled
    strategy and the most probable one."""
    L = ["## Motion vs appearance", ""]
    if ranked is None:
        return L
    rows = [("family " + name, r) for name, r in _uniform_rows(ranked).items()]
    for r in ranked[ranked["source"].str.contains("family")].itertuples():
        if r.name not in UNIFORM:
            rows.append(("family " + r.name, ranked.loc[r.Index]))
    best = best_sampled(ranked)
    if best is not None:
        rows.append(("best sampled (on validation)", best))
    mp = _row(ranked, "top-1")
    if mp is not None:
        rows.append(("most probable", mp))
    cols = ["top1", "top1_motion", "top1_appearance", "top1_test", "top1_test_motion", "top1_test_appearance",
            *(c for c in ("exposure", "extrapolated") if c in ranked)]
    tab = pd.DataFrame([{"strategy": label, "units": r["strategy"], **{c: r.get(c, np.nan) for c in cols}}
                        for label, r in rows])
    L += [_md(tab), ""]
    if len(ranked):
        views = views_text(int(ranked.iloc[0]["test_clips"]), int(ranked.iloc[0]["test_crops"]))
        L += [f"Test accuracies (`top1_test*`): {views} per video, softmax averaged.", ""]
    return L + ["All-S treats every frame on its own (a spatial stem and 1x3x3 convs, averaged over time), so it "
                "cannot tell a motion class from its time reversal: its motion accuracy is bounded by telling the "
                "pairs apart.", ""]


def _finetune_section(finetuned: pd.DataFrame | None, link: Link, layout: RunLayout) -> list[str]:
    if finetuned is None:
        return []
    cols = [c for c in ["id", "name", "rule", "strategy", "top1_val", "top1_val_motion", "top1_val_appearance",
                        "top1_test", "top1_test_motion", "top1_test_appearance", "macs", "params"] if c in finetuned]
    figure = f"{layout.report_dir}/{{}}"
    best = best_finetuned(finetuned) if "top1_val" in finetuned and finetuned["top1_val"].notna().any() else None
    export = ([f"The best on validation is `{best['id']}` ({best['strategy']}, top-1 {_fmt(best['top1_val'])}): "
               f"`stfusion export --strategy best` writes it as a deployable file (`--strategy ID` another row).",
               ""] if best is not None else [])
    return ["Derived networks after finetuning (plain networks holding only their kept convs):", "",
            _md(finetuned[cols]), "", *export, f"Costs: {CONVENTION}. Test accuracy against MACs:", "",
            f"![derived networks: accuracy vs MACs]({link(figure.format(PARETO_DERIVED))})", "",
            f"![confusion matrix of the best derived network]({link(figure.format(CONFUSION))})", ""]


def _network_section(ranked: pd.DataFrame | None, link: Link, layout: RunLayout) -> list[str]:
    """The families and the best ten other strategies with their supernet scores, and the racing summary."""
    from stfusion.analysis.space import network_table

    L = ["## Network level: families and sampled strategies", ""]
    if ranked is None:
        return L
    net = network_table(ranked)
    fam = net[net["source"].str.contains("family")]
    top = net[~net["source"].str.contains("family")].head(10)
    cols = [c for c in ["rank", "name", "source", "strategy", "log_prob", "prob", "top1", "top1_motion",
                        "top1_appearance", "top1_plain_bn", "top1_test", "exposure", "extrapolated", "macs",
                        "params", "race_status", "race_clips"] if c in net]
    if "race_status" in ranked:
        full = int((ranked["race_status"] == "full").sum())
        L += [f"Racing: {full} of {len(ranked)} strategies were scored on the whole validation split; the "
              "others were dropped after `race_clips` clips (partial top-1 and interval in `top1_partial`, "
              "`top1_low`, `top1_high`; no full-split score).", ""]
    return L + [f"{len(ranked)} strategies scored (rank 1 = best validation top-1 of all). "
                + _exposure_text(ranked) + "Families:", "",
                _md(fam[cols], ".4g"), "", "Best ten of the others (most probable and sampled):", "",
                _md(top[cols], ".4g"), "", f"Full table: `{link(layout.network)}`. Scatter of log-probability "
                "vs score:", "", f"![log-probability vs score]({link(layout.scatter_plot)})", "",
                f"Supernet score against MACs per clip ({CONVENTION}):", "",
                f"![network level: accuracy vs MACs]({link(f'{layout.report_dir}/{PARETO_NETWORK}')})", ""]


def _exposure_text(ranked: pd.DataFrame) -> str:
    """What the ``exposure`` column means and how many scores are extrapolations ("" where it was not recorded)."""
    if "exposure" not in ranked:
        return ""
    n = int(ranked["extrapolated"].astype(bool).sum())
    return (f"`exposure`: the share of the supernet's gated training clips that ran the strategy's least-trained "
            f"layer in the state it uses (docs/method.md §5); {n} of {len(ranked)} scores are extrapolations "
            f"(exposure below `scoring.min_exposure` = {_fmt(ranked['min_exposure'].iloc[0], 2)}): the shared "
            "weights were barely trained in those configurations, so their scores are not evidence about them. ")


def _layer_section(pref: pd.DataFrame | None, summary: dict, link: Link, layout: RunLayout,
                   supernet: RunLayout) -> list[str]:
    """The marginal probability of each unit per layer, read against its value before training."""
    L = ["## Layer level: preference", ""]
    if pref is None:
        return L
    cols = [c for c in ["layer", "stage", "P(S)", "P(S) low", "P(S) high", "P(ST)", "P(ST) low", "P(ST) high",
                        "P(S+ST)", "P(S+ST) low", "P(S+ST) high", "P(none)", "P(ST kept)", "preferred", "p_S",
                        "p_ST"] if c in pref]
    init = summary.get("initial_marginals") or {}
    init_txt = ", ".join(f"{k} {_fmt(v)}" for k, v in init.items() if k != "P(none)")
    return L + [
        f"Marginal probability of each unit per layer (keep-probability rule: "
        f"`{pref['keep_prob_rule'].iloc[0]}`), with the raw drop rate p of each gate. Before training "
        f"(every p = {_fmt(summary.get('init_p'), 2)}) every layer has {init_txt or 'n/a'}: read the table "
        f"against that. Layers where ST or S+ST is more probable than S: "
        f"{summary.get('layers_ST_or_SST_above_S', 'n/a')}; layers whose ST path is kept more often than "
        f"their S path (p_ST < p_S): {summary.get('layers_ST_kept_above_S_kept', 'n/a')}. Posterior "
        f"entropy: {_fmt(summary.get('entropy'))} nats, {_fmt(_entropy_ratio(summary))} x its value "
        f"before training ({_fmt(summary.get('entropy_initial'))} nats); the drop rates of the gates spread "
        f"over {_fmt(summary.get('drop_rate_spread'))} (max p - min p). The KL term prices "
        f"`gate.kl_price` per kept path; `{link(supernet.gate_stats)}` has p, ||W||^2 and "
        f"||gamma||^2 of every path per epoch (right panels of the drop-rate figure).", "",
        _md(pref[cols]), "",
        f"![preference heatmap]({link(layout.preference_plot)})", "",
        f"![drop rates of seed {supernet.replicate}]({link(supernet.drop_rates_plot)})", ""]


def _derived_section(derived: pd.DataFrame | None) -> list[str]:
    L = ["## Derived strategies", ""]
    if derived is None:
        return L
    cols = [c for c in ["name", "rule", "strategy", "log_prob", "n_S", "n_ST", "n_S+ST", "macs", "params"]
            if c in derived]
    return L + ["Rules: most probable state per layer; top-k most probable; threshold on P(ST kept) and P(S kept); "
                "one state per stage; best sampled on validation (see `stfusion.analysis.derive`).", "",
                _md(derived[cols], ".4g"), ""]


def _fidelity_section(fidelity: dict | None, standalone: pd.DataFrame | None, link: Link,
                      layout: RunLayout) -> list[str]:
    """The default run's check of the ranking: rank correlations of three predictors, and the stand-alone runs."""
    L = ["## Ranking fidelity (docs/method.md §7)", ""]
    if fidelity:
        L += [f"{fidelity.get('n')} strategies trained stand-alone from scratch with the same budget. Stand-alone "
              "accuracy (test split) against the supernet score (validation split):", ""]
        ft = pd.DataFrame([{"predictor": label, "kendall_tau": fidelity.get(f"kendall_tau_{key}"),
                            "kendall_p": fidelity.get(f"kendall_p_{key}"),
                            "spearman_rho": fidelity.get(f"spearman_rho_{key}")}
                           for label, key in (("supernet score, BN recalibrated", "recal"),
                                              ("supernet score, plain BN (paper)", "plain_bn"),
                                              ("log-probability", "log_prob"))])
        L += [_md(ft), ""]
    if standalone is not None:
        cols = [c for c in ["name", "strategy", "log_prob", "supernet_top1_recal", "supernet_top1_plain_bn",
                            "standalone_top1_val", "standalone_top1_test", "standalone_top1_test_motion",
                            "standalone_top1_test_appearance", "macs", "params"] if c in standalone]
        L += [_md(standalone[cols], ".4g"), "", f"![ranking fidelity]({link(layout.fidelity_plot)})", ""]
    return L


def fidelity_study_lines(study: dict | None, link: Link, layout: RunLayout) -> list[str]:
    """The ranking-fidelity study's section: its figures when the study has run, and how to run it."""
    from stfusion.analysis.fidelity import summary_lines

    L = ["## Ranking-fidelity study", ""]
    if study:
        L += summary_lines(study) + ["", f"Training time: {study.get('train_seconds', float('nan')) / 60:.1f} min "
                                         f"of runs one after another, {study.get('wall_seconds', float('nan')) / 60:.1f}"
                                         f" min wall clock. Details: `{link(layout.fidelity_summary)}`.", "",
                                     f"![fidelity study]({link(layout.fidelity_study_plot)})", ""]
    return L + ["The check above uses only a few strategies and one seed: a smoke test of the machinery. The study "
                "(`fidelity.n_strategies` strategies stratified over the score range, `fidelity.seeds` seeds each, "
                "the `validate` budget; Kendall tau-b and Spearman rho with 95% bootstrap intervals, the seed-to-seed "
                "ceiling, top-k overlap, regret) runs with `snakemake --cores all fidelity` or "
                f"`dvc repro studies/fidelity/dvc.yaml` and writes `{layout.fidelity_dir}/`.", ""]


def _supernet_section(history: pd.DataFrame | None, link: Link, layout: RunLayout) -> list[str]:
    if history is None or not len(history):
        return []
    last = history.iloc[-1]
    return ["## Supernet training", "",
            f"{len(history)} epochs ({int((history['phase'] == 'warmup').sum())} gate-free warm-up); final train "
            f"top-1 {_fmt(last.get('train_top1'))}, cross-entropy {_fmt(last.get('ce'))}, "
            f"KL {_fmt(last.get('kl'), 4)}; validation top-1 of the gate-free template "
            f"{_fmt(last.get('val_top1'))}, of the most probable strategy "
            f"{_fmt(last.get('val_top1_most_probable_paper'))} (paper keep rule); posterior entropy "
            f"{_fmt(last.get('entropy_paper'))} nats. History: `{link(layout.history)}`.", "",
            f"![training and validation curves]({link(f'{layout.report_dir}/{CURVES}')})", ""]


def _timing_section(inp: ReportInputs) -> list[str]:
    L = ["## Time per stage", "", "Seconds of work per stage (per-strategy jobs summed; with parallel jobs the "
         "wall-clock time is shorter).", ""]
    if not len(inp.timing):
        return L + ["_(no timing records)_", ""]
    total = pd.DataFrame([{"stage": "total", "seconds": inp.total_seconds, "jobs": int(inp.timing["jobs"].sum())}])
    return L + [_md(pd.concat([inp.timing, total], ignore_index=True), ".1f"), ""]


def _files_section(versions: dict, link: Link, layout: RunLayout) -> list[str]:
    return ["## Files", "",
            f"- `{link(layout.candidates)}`, `{link(layout.ranking)}`: listed and scored strategies",
            f"- `{link(layout.network)}|md`, `{link(layout.preference)}|md`, `{link(layout.analysis)}/*.png`: "
            "network- and layer-level views",
            f"- `{link(layout.derived)}|md`, `{link(layout.finetune_table)}|md`: derived strategies and their "
            "finetuned accuracy",
            f"- `{link(layout.standalone_table)}|md`, `{link(layout.fidelity)}`: stand-alone runs, rank "
            "correlations",
            f"- `{link(layout.metrics)}`: the scalars of this report (numbers only); `{link(layout.versions)}`: the "
            "library versions",
            f"- `{link(layout.report_dir)}/`: the tables as HTML, accuracy against MACs, the confusion matrix, the "
            "curves", "",
            "Library versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]


# ------------------------------------------------------------------------------------------------ report
def build_report(layout: RunLayout, *, seed: int, seeds, versions: dict,
                 page: str | Path | None = None) -> tuple[str, dict]:
    """Markdown text of the report and the metrics dictionary (:func:`compute_metrics`) of the run ``layout``
    names, its supernet replicates ``seeds`` pooled at the top of the layout (the first seed's supernet is the
    one whose training is shown). ``page``: where the text is written (default ``layout.report``); its links are
    relative to it."""
    primary = layout.of_seed(seeds[0])
    inp = load_inputs(layout, primary)
    per_seed = seed_checks(layout, seeds, inp.standalone)
    checks = pool_checks(compute_checks(inp.pref, inp.ranked, inp.fidelity, inp.summary.get("initial_marginals"),
                                        inp.standalone), per_seed)
    stability = _read_json(layout.stability)
    here = Path(page or layout.report).parent

    def link(path: str) -> str:
        return Path(os.path.relpath(path, here)).as_posix()

    lines = [*_intro(inp, seed, seeds), *_checks_section(checks, per_seed), *_seeds_section(stability, inp.ranked,
                                                                                     inp.derived),
             *_motion_section(inp.ranked),
             *_finetune_section(inp.finetuned, link, layout), *_network_section(inp.ranked, link, layout),
             *_layer_section(inp.pref, inp.summary, link, layout, primary), *_derived_section(inp.derived),
             *_fidelity_section(inp.fidelity, inp.standalone, link, layout),
             *fidelity_study_lines(inp.study, link, layout), *_supernet_section(inp.history, link, primary),
             *_timing_section(inp), *_files_section(versions, link, layout)]
    return "\n".join(lines), {**compute_metrics(inp, checks, seed), **seed_metrics(layout, seeds),
                               **stability_metrics(stability)}


# ------------------------------------------------------------------------------------------------ summary
def _tau_text(tau, n_standalone) -> str:
    """Kendall tau as the report writes it; an empty one with its reason."""
    return _fmt(tau) if tau is not None else f"n/a ({why_no_tau(n_standalone)})"


def summary_lines(results: Path, report: Path) -> list[str]:
    """The last lines of a run: where the report is, the HTML report command and the three numbers that matter
    (the best sampled strategy, the all-S gap on the motion classes, Kendall tau)."""
    layout = RunLayout(results=str(results))
    m = _read_json(layout.metrics) or {}
    best = best_sampled(_read_csv(layout.ranking))
    where = f"{best['strategy']} (validation top-1 {_fmt(best['top1'])})" if best is not None else "n/a"
    return [f"stfusion: read {report} first (checks, tables, figures)",
            f"stfusion: HTML report: {HTML_COMMAND}",
            f"stfusion: best strategy {where}; all-S gap on motion {_fmt(m.get('all_S_motion_gap'))}; "
            f"Kendall tau {_tau_text(m.get('kendall_tau'), m.get('n_standalone'))}"]
