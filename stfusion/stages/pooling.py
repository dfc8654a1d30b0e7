"""Stage ``pool_seeds``: the supernet replicates of ``seeds`` pooled (:mod:`stfusion.analysis.pooling`) into the
files a single run writes at the top of its layout (the ranking, the preference table and heatmap, the network
table, the posterior summary), which the later stages read, and ``stability.json|md``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from stfusion.config.layout import RunLayout
from stfusion.config.settings import Settings
from stfusion.errors import StfusionError
from stfusion.io.files import read_table, write_json, write_text
from stfusion.io.tables import to_markdown, write_table

log = logging.getLogger(__name__)

#: posterior figures of the seeds' summaries that the pooled summary averages
AVERAGED = ("entropy", "entropy_initial", "drop_rate_spread")


def pool_seeds(params: dict, *, results: str | Path) -> dict:
    """Stage ``pool_seeds``: read each seed's ranking and analysis (``RunLayout(results).of_seed(s)``), refuse
    replicates trained with different settings (one line naming the key), and write the pooled ranking,
    preference (CSV, Markdown, heatmap marking the uncertain cells), network table, summary and the stability
    figures with the per-seed records the report's "k of n seeds" need."""
    import numpy as np

    from stfusion.analysis import pooling, space
    from stfusion.analysis.derive import derive_strategies

    settings = Settings.for_stage(params)
    top = RunLayout(results=str(results))
    seeds = list(settings.seeds)
    runs = {s: top.of_seed(s) for s in seeds}
    summaries = {s: _summary(r.analysis_summary) for s, r in runs.items()}
    pooling.require_same_settings({s: m.get("training", {}) for s, m in summaries.items()})
    prefs = {s: read_table(r.preference, "preference table") for s, r in runs.items()}
    rankings = {s: read_table(r.ranking, "ranking") for s, r in runs.items()}
    first = summaries[seeds[0]]
    pref = pooling.pool_preference(list(prefs.values()), first.get("initial_marginals") or {})
    ranked = pooling.pool_ranking(rankings)
    write_table(pref, top.preference)
    write_table(ranked, top.ranking, markdown=False)
    write_table(space.network_table(ranked), top.network)
    space.plot_preference(pref, top.preference_plot)
    summary = {**{k: v for k, v in first.items() if k not in AVERAGED and k != "training"},
               **space.preference_summary(pref),
               **{k: float(np.mean([m[k] for m in summaries.values()])) for k in AVERAGED if k in first}}
    write_json(top.analysis_summary, summary)
    stab = pooling.stability(prefs, rankings)
    rules = dict(top_k=settings.derive.top_k, st_threshold=settings.derive.st_threshold)
    pooled_derived = derive_strategies(pref, ranked, **rules)
    alone = pooling.derived_alone(pooled_derived, {s: derive_strategies(prefs[s], rankings[s], **rules)
                                                   for s in seeds})
    stab["derived_alone"] = dict(zip(pooled_derived["strategy"], alone))
    stab["per_seed"] = {str(s): {k: summaries[s].get(k) for k in AVERAGED} for s in seeds}
    write_json(top.stability, stab)
    write_text(top.stability.replace(".json", ".md"), stability_markdown(stab))
    log.info("pooled %d seeds: %d of %d layers prefer the same unit in every seed; seed-to-seed tau %.2f",
             len(seeds), stab["same_preferred"], stab["n_layers"], stab["tau_mean"])
    return stab


def _summary(path: str) -> dict:
    if not Path(path).is_file():
        raise StfusionError(f"{path} not found: run 'stfusion analyze' for that seed first")
    return json.loads(Path(path).read_text())


def stability_markdown(stab: dict) -> str:
    """The stability figures in words, with the between-seed SD of each marginal as a table."""
    import pandas as pd

    sd = pd.DataFrame([{"layer": layer, **v} for layer, v in stab["marginal_sd"].items()])
    disagree = "; ".join(f"layer {layer}: " + ", ".join(f"seed {s} {u}" for s, u in units.items())
                         for layer, units in stab["layers_disagreeing"].items()) or "none"
    return "\n".join([
        f"Seeds {stab['seeds']} ({int(stab['level'] * 100)}% intervals: {stab['interval']} over seeds).", "",
        f"- layers whose preferred unit is the same in every seed: {stab['same_preferred']} of {stab['n_layers']} "
        f"(disagreeing: {disagree})",
        f"- mean pairwise Kendall tau of the seeds' supernet scores over {stab['n_common_strategies']} common "
        f"strategies: {stab['tau_mean']:.3f} (bootstrap over strategies: {stab['tau_low']:.3f} to "
        f"{stab['tau_high']:.3f})", "", "Between-seed SD of each marginal:", "", to_markdown(sd, ".3f"), ""])
