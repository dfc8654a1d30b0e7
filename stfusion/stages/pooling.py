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
from stfusion.io.tables import write_table

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
    space.plot_scatter(ranked, top.scatter_plot)
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
    write_text(top.stability.replace(".json", ".md"), pooling.stability_markdown(stab))
    log.info("pooled %d seeds: %d of %d layers prefer the same unit in every seed; seed-to-seed tau %.2f",
             len(seeds), stab["same_preferred"], stab["n_layers"], stab["tau_mean"])
    return stab


def _summary(path: str) -> dict:
    if not Path(path).is_file():
        raise StfusionError(f"{path} not found: run 'stfusion analyze' for that seed first")
    return json.loads(Path(path).read_text())
