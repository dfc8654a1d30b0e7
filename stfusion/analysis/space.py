"""Network-level and layer-level views of the learned probability space (docs/method.md §5), as tables and figures.

* :func:`network_table`: every scored strategy (families, most probable, samples) with its probability, its
  accuracy (overall and per class kind) and its rank.
* :func:`preference_table`: layers x {S, ST, S+ST, none} marginals, the raw drop rate p of each gate and the
  keep-probability rule that turned p into keep probabilities (``paper``: ``1 - sqrt(p)``, ``plain``: ``1 - p``).
* Figures (matplotlib, Agg backend, no display needed): the preference heatmap, log-probability vs score, the
  drop rates over the gated epochs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from stfusion.analysis.plots import finish, pyplot, save_figure
from stfusion.core.strategies import STATE_NAMES, STATE_ORDER, Posterior

STATE_COLUMNS = [f"P({STATE_NAMES[s]})" for s in STATE_ORDER]  # P(S), P(ST), P(S+ST), P(none)


# ------------------------------------------------------------------------------------------------ tables
def preference_table(post: Posterior, raw_p: np.ndarray, stage_of_layer: Sequence[int] | None = None) -> pd.DataFrame:
    """One row a fusion layer: ``layer, stage, P(S), P(ST), P(S+ST), P(none), P(ST kept), P(S kept),
    preferred, p_S, p_ST, keep_S, keep_ST, keep_prob_rule``.

    ``P(ST kept) = P(ST) + P(S+ST)`` is the probability that the layer computes the spatiotemporal path at all;
    ``P(S kept)`` likewise for the spatial path. ``preferred`` is the most probable state. ``stage`` counts from 1.
    """
    df = post.marginals(raw_p)
    stages = list(stage_of_layer) if stage_of_layer is not None else [0] * post.n_layers
    df.insert(1, "stage", [int(s) + 1 for s in stages])
    df["P(ST kept)"] = df["P(ST)"] + df["P(S+ST)"]
    df["P(S kept)"] = df["P(S)"] + df["P(S+ST)"]
    df["preferred"] = [STATE_NAMES[STATE_ORDER[i]] for i in df[STATE_COLUMNS].to_numpy().argmax(axis=1)]
    cols = ["layer", "stage", *STATE_COLUMNS, "P(ST kept)", "P(S kept)", "preferred", "p_S", "p_ST", "keep_S",
            "keep_ST", "keep_prob_rule"]
    return df[cols]


def thirds(n_layers: int) -> tuple[list[int], list[int]]:
    """The first and the last third of ``n_layers`` fusion layers (at least one layer each)."""
    k = max(1, int(round(n_layers / 3)))
    return list(range(k)), list(range(n_layers - k, n_layers))


def initial_marginals(init_p: float, rule: str) -> dict[str, float]:
    """The layer marginals before training, when every gate has drop rate ``init_p`` (a layer without ``none``
    renormalises over the other three states): the baseline a learned preference should be read against."""
    post = Posterior.from_drop_rates(np.full((1, 2), float(init_p)), [False], rule)
    probs = post.layer_probs()[0]
    return {f"P({STATE_NAMES[s]})": float(probs[s]) for s in STATE_ORDER}


def preference_summary(pref: pd.DataFrame) -> dict:
    """Numbers the report states about the preference table (docs/method.md §9.1, §9.2 and the issue's checks)."""
    first, last = thirds(len(pref))
    p = pref.set_index("layer")
    st_beats_s = [int(i) for i in p.index if max(p.loc[i, "P(ST)"], p.loc[i, "P(S+ST)"]) > p.loc[i, "P(S)"]]
    return {
        "n_layers": int(len(pref)),
        "first_third": first,
        "last_third": last,
        "mean_P_ST_first_third": float(p.loc[first, "P(ST)"].mean()),
        "mean_P_ST_last_third": float(p.loc[last, "P(ST)"].mean()),
        "mean_P_S_last_third": float(p.loc[last, "P(S)"].mean()),
        "mean_P_ST_kept_first_third": float(p.loc[first, "P(ST kept)"].mean()),
        "mean_P_ST_kept_last_third": float(p.loc[last, "P(ST kept)"].mean()),
        "mean_P_SST_first_third": float(p.loc[first, "P(S+ST)"].mean()),
        "preferred_first_third": [str(p.loc[i, "preferred"]) for i in first],
        "layers_ST_or_SST_above_S": st_beats_s,
        "layers_ST_kept_above_S_kept": [int(i) for i in p.index if p.loc[i, "P(ST kept)"] > p.loc[i, "P(S kept)"]],
        "mean_marginals": {c: float(p[c].mean()) for c in STATE_COLUMNS},
    }


NETWORK_COLUMNS = [
    "rank", "name", "also", "source", "strategy", "log_prob", "prob", "top1", "top1_motion", "top1_appearance",
    "top1_plain_bn", "top1_test", "top1_test_motion", "top1_test_appearance", "macs", "params",
    "race_status", "race_clips", "top1_partial", "top1_low", "top1_high",  # with scoring.racing only
]


def network_table(ranked: pd.DataFrame) -> pd.DataFrame:
    """The network-level table: the families first (in their fixed order), then every other scored strategy
    by rank. ``top1*`` are on the validation split unless named ``_test``."""
    df = ranked.copy()
    is_family = df["source"].str.contains("family")
    fam = df[is_family]
    rest = df[~is_family].sort_values("rank", kind="stable")
    out = pd.concat([fam, rest], ignore_index=True)
    return out[[c for c in NETWORK_COLUMNS if c in out.columns]]


# ----------------------------------------------------------------------------------------------- figures
def plot_preference(pref: pd.DataFrame, path: str | Path) -> Path:
    """Heatmap of the layers x units marginals, with the raw drop rates p_S and p_ST beside it. A pooled table
    (:func:`stfusion.analysis.pooling.pool_preference`) has its uncertain cells hatched and marked ``?``."""
    plt = pyplot()
    probs = pref[STATE_COLUMNS].to_numpy()
    n = len(pref)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 1.2 + 0.45 * n), gridspec_kw={"width_ratios": [4, 2]},
                                  sharey=True)
    im = ax.imshow(probs, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(STATE_COLUMNS)), [c[2:-1] for c in STATE_COLUMNS])
    labels = [f"{int(r.layer)} (stage {int(r.stage)})" for r in pref.itertuples()]
    ax.set_yticks(range(n), labels)
    ax.set_ylabel("fusion layer (input side at the top)")
    marked = [f"{c} uncertain" in pref for c in STATE_COLUMNS]
    for i in range(n):
        for j, col in enumerate(STATE_COLUMNS):
            mark = marked[j] and bool(pref[f"{col} uncertain"].iloc[i])
            ax.text(j, i, f"{probs[i, j]:.2f}" + ("?" if mark else ""), ha="center", va="center",
                    color="white" if probs[i, j] < 0.6 else "black", fontsize=8)
            if mark:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", edgecolor="red", lw=0))
    rule = str(pref["keep_prob_rule"].iloc[0]) if "keep_prob_rule" in pref else "?"
    pooled = " mean over seeds; ? = interval includes the prior or the next unit" if any(marked) else ""
    ax.set_title(f"P(unit) per layer (keep-prob rule: {rule}){pooled}", fontsize=9 if pooled else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    y = np.arange(n)
    ax2.barh(y - 0.2, pref["p_S"], height=0.4, label="p_S (drop S)")
    ax2.barh(y + 0.2, pref["p_ST"], height=0.4, label="p_ST (drop ST)")
    ax2.set_xlim(0, 1)
    ax2.set_title("raw drop rates p")
    ax2.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_scatter(ranked: pd.DataFrame, path: str | Path, score: str = "top1") -> Path:
    """Strategy log-probability vs its supernet score (validation top-1), one colour a source; families named."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    primary = ranked["source"].str.split(";").str[0]
    for src, marker in (("sample", "o"), ("top_k", "^"), ("family", "s")):
        sel = ranked[primary == src]
        if len(sel):
            ax.scatter(sel["log_prob"], sel[score], marker=marker, label=src, alpha=0.75)
    for r in ranked[primary == "family"].itertuples():
        ax.annotate(r.name, (r.log_prob, getattr(r, score)), fontsize=7, xytext=(3, 3), textcoords="offset points")
    finite = ranked["log_prob"][np.isfinite(ranked["log_prob"])]
    if len(finite):
        ax.set_xlim(left=max(finite.min() - 1, finite.max() - 60))
    return finish(fig, ax, path, xlabel="log-probability under the learned posterior",
                  ylabel=f"supernet {score} (validation)", title="strategy probability vs score with shared weights")


def plot_drop_rates(rates: pd.DataFrame, path: str | Path, stats: pd.DataFrame | None = None) -> Path:
    """Drop rate of every gate over the gated epochs (solid: S, dashed: ST; one colour a layer). With the
    per-path ``stats`` (:mod:`stfusion.core.gate_stats`), two panels beside it: ``||W||^2`` and ``||gamma||^2`` of
    every path over the same epochs (log scale), i.e. what the KL term prices next to what it moves."""
    plt = pyplot()
    panels = [("p", "drop rate p")] + ([("weight_sq", "||W||^2"), ("gamma_sq", "BN ||gamma||^2")]
                                       if stats is not None and len(stats) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(7 + 4.5 * (len(panels) - 1), 4), squeeze=False)
    cmap = plt.get_cmap("viridis")
    layers = sorted(rates["layer"].unique())
    for ax, (col, label) in zip(axes[0], panels):
        for i, layer in enumerate(layers):
            c = cmap(i / max(len(layers) - 1, 1))
            if col == "p":
                r = rates[rates["layer"] == layer]
                ax.plot(r["epoch"], r["p_S"], color=c, ls="-", label=f"layer {layer} S")
                ax.plot(r["epoch"], r["p_ST"], color=c, ls="--", label=f"layer {layer} ST")
                continue
            for path_name, ls in (("S", "-"), ("ST", "--")):
                r = stats[(stats["layer"] == layer) & (stats["path"] == path_name)]
                ax.plot(r["epoch"], r[col], color=c, ls=ls)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if col == "p":
            ax.set_ylim(0, 1)
            ax.set_title("learned drop rates (solid: S, dashed: ST)")
            if len(layers) <= 12:
                ax.legend(fontsize=6, ncol=2)
        else:
            ax.set_yscale("log")
            ax.set_title(f"{label} of every path")
    fig.tight_layout()
    return save_figure(fig, path)


def initial_entropy(init_p: float, allow_none, rule: str) -> float:
    """Entropy (nats) of the posterior before training, every gate at drop rate ``init_p``."""
    p = np.full((len(allow_none), 2), float(init_p))
    return Posterior.from_drop_rates(p, list(allow_none), rule).entropy()


