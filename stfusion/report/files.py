"""The report folder (``results/report/``): what the Snakemake report shows beside ``report.md``.

* HTML tables (pandas ``to_html``) of the ranking, the network level, the preference, the derived strategies,
  their finetuned accuracy and the stand-alone runs;
* accuracy against MACs (``pareto_network.png``: supernet scores of the scored strategies;
  ``pareto_derived.png``: test accuracy of the finetuned derived networks), the Pareto front marked;
* the confusion matrix of the best derived network (best finetuned validation top-1) on the test split;
* the training and validation curves of the supernet, the best finetuned and the best stand-alone network;
* ``drop_rates.csv``: the drop rates per epoch as fixed columns (mean over the layers, first and last layer),
  the table DVC plots as the drop-rate trajectories.

Costs follow :data:`stfusion.core.costs.CONVENTION`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stfusion.analysis.plots import finish, pyplot, save_figure
from stfusion.analysis.space import network_table
from stfusion.config.layout import RunLayout
from stfusion.core.costs import CONVENTION
from stfusion.io.tables import write_html

#: (file stem, the layout's name of the table, title)
TABLES = (
    ("ranking", "ranking", "Scored strategies (supernet, shared weights), best validation top-1 first"),
    ("preference", "preference", "Layer-level preference: marginal probability of each unit"),
    ("derived", "derived", "Derived strategies"),
    ("finetune", "finetune_table", "Derived networks after finetuning"),
    ("standalone", "standalone_table", "Strategies trained stand-alone from scratch"),
)
#: the figures of the report folder (``report.md`` links them)
PARETO_NETWORK, PARETO_DERIVED, CONFUSION, CURVES = ("pareto_network.png", "pareto_derived.png", "confusion.png",
                                                     "curves.png")
COST_NOTE = f"macs: per clip of the run's input size ({CONVENTION}); params: parameters of the plain network."


def pareto_front(macs: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Boolean mask of the points no other point beats: none has fewer-or-equal MACs and higher-or-equal
    accuracy with one of the two strictly better."""
    macs, acc = np.asarray(macs, float), np.asarray(acc, float)
    better = ((macs[None, :] <= macs[:, None]) & (acc[None, :] >= acc[:, None])
              & ((macs[None, :] < macs[:, None]) | (acc[None, :] > acc[:, None])))
    return ~better.any(axis=1)


def plot_pareto(df: pd.DataFrame, acc: str, path: str | Path, title: str, ylabel: str) -> Path:
    """Accuracy ``df[acc]`` against ``df["macs"]``, the Pareto front joined and its points named."""
    plt = pyplot()
    df = df.dropna(subset=["macs", acc])
    front = df[pareto_front(df["macs"].to_numpy(), df[acc].to_numpy())].sort_values("macs")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(df["macs"] / 1e6, df[acc], alpha=0.6, label="strategies")
    ax.step(front["macs"] / 1e6, front[acc], where="post", color="C3", label="Pareto front")
    for r in front.itertuples():
        ax.annotate(str(r.name), (r.macs / 1e6, getattr(r, acc)), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    return finish(fig, ax, path, xlabel="MMACs per clip (1 MAC = multiply-accumulate)", ylabel=ylabel, title=title)


def confusion_matrix(pred: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Counts, rows = actual class, columns = predicted class, both in ``classes`` order."""
    return pd.crosstab(pd.Categorical(pred["actual"], classes), pd.Categorical(pred["predicted"], classes),
                       dropna=False).rename_axis(index="actual", columns="predicted")


def plot_confusion(pred: pd.DataFrame, classes: list[str], path: str | Path, title: str) -> Path:
    plt = pyplot()
    cm = confusion_matrix(pred, classes).to_numpy()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(2 + 0.45 * n, 1.5 + 0.45 * n))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_curves(histories: dict[str, pd.DataFrame], path: str | Path) -> Path:
    """One panel a run: train and validation top-1 per epoch (and the supernet's most probable strategy)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(histories), figsize=(4.2 * len(histories), 3.4), squeeze=False)
    for ax, (label, hist) in zip(axes[0], histories.items()):
        for col in ("train_top1", "val_top1", "val_top1_most_probable_paper"):
            if col in hist:
                ax.plot(hist["epoch"], hist[col], marker=".", label=col)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("top-1")
    fig.tight_layout()
    return save_figure(fig, path)


def drop_rate_summary(rates: pd.DataFrame) -> pd.DataFrame:
    """Per epoch: mean drop rates over the layers and those of the first and the last fusion layer."""
    first, last = rates["layer"].min(), rates["layer"].max()
    out = rates.groupby("epoch")[["p_S", "p_ST"]].mean().add_prefix("mean_")
    for name, layer in (("first", first), ("last", last)):
        one = rates[rates["layer"] == layer].set_index("epoch")[["p_S", "p_ST"]]
        out = out.join(one.add_prefix(f"{name}_layer_"))
    return out.reset_index()


def write_report_files(layout: RunLayout, classes: list[str], supernet: RunLayout | None = None) -> list[Path]:
    """Every file of the report folder ``layout.report_dir`` (see the module docstring) from the tables of the
    run ``layout`` names."""
    from stfusion.io.files import write_csv

    out_dir = Path(layout.report_dir)
    written = []
    for stem, name, title in TABLES:
        df = pd.read_csv(getattr(layout, name))
        note = COST_NOTE if "macs" in df else ""
        written.append(write_html(df, out_dir / f"{stem}.html", title, note))
    ranked = pd.read_csv(layout.ranking)
    written.append(write_html(network_table(ranked), out_dir / "network.html",
                              "Network level: families, then the other strategies by rank", COST_NOTE))
    written.append(plot_pareto(ranked, "top1", out_dir / PARETO_NETWORK, "scored strategies",
                               "supernet top-1 (validation)"))
    finetuned = pd.read_csv(layout.finetune_table)
    written.append(plot_pareto(finetuned, "top1_test", out_dir / PARETO_DERIVED,
                               "derived networks, finetuned", "top-1 (test)"))
    best = finetuned.sort_values("top1_val", ascending=False, kind="stable").iloc[0]
    written.append(plot_confusion(pd.read_csv(layout.finetune_best_predictions), classes, out_dir / CONFUSION,
                                  f"best derived network {best['name']} ({best['id']}) on the test split"))
    supernet = supernet or layout  # the replicate whose training curves and drop rates are shown
    histories = {"supernet": pd.read_csv(supernet.history),
                 "best finetuned": pd.read_csv(layout.finetune_best_history),
                 "best stand-alone": pd.read_csv(layout.standalone_best_history)}
    written.append(plot_curves(histories, out_dir / CURVES))
    written.append(write_csv(drop_rate_summary(pd.read_csv(supernet.drop_rates)), out_dir / "drop_rates.csv"))
    return written
