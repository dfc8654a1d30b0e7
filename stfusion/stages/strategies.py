"""Stages ``sample_strategies``, ``score_strategies`` and ``analyze``: strategies listed from the posterior,
scored with the shared weights, and the network- and layer-level views of the space."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from stfusion.config.layout import LAYOUT, in_folder
from stfusion.config.settings import Settings
from stfusion.errors import StfusionError
from stfusion.stages.runtime import data_fingerprint
from stfusion.io.files import file_digest, read_table, write_json
from stfusion.io.tables import write_table
from stfusion.stages.common import (build_settings, class_groups, clip_dataset, load_supernet, num_classes,
                                    require_cache, strategy_of)

if TYPE_CHECKING:  # heavy imports stay inside the functions (the CLI's --help imports the stages)
    import pandas as pd

    from stfusion.core.strategies import Strategy

log = logging.getLogger(__name__)


def sample_strategies(params: dict, *, checkpoint: str | Path, out: str | Path) -> pd.DataFrame:
    """Stage ``sample_strategies``: the ``scoring.top_k`` most probable strategies, ``scoring.n_samples`` drawn
    from the posterior (seed ``seed``) and the named families, one row a distinct strategy:
    ``id, strategy, name, also, source, log_prob, prob, n_drawn, n_S, n_ST, n_S+ST, n_none``.

    ``source`` lists every way the strategy was listed (``family``, ``top_k``, ``sample``), ``;``-separated;
    ``name`` is the family name, ``top-<rank>`` or ``sample-<first draw>``; ``also`` the strategy's other family
    names (``;``-separated: all-ST is also R3D on the video ResNet-18)."""
    import numpy as np
    import pandas as pd
    from stfusion.io.files import write_csv

    model, _ = load_supernet(checkpoint)
    settings = Settings.for_stage(params)
    rule = settings.gate.keep_prob
    post = model.posterior(rule)
    s = settings.scoring
    entries: list[tuple[Strategy, str, str]] = []
    for name, strat in model.families().items():
        if all(a or st != 0 for a, st in zip(model.allow_none, strat.states)):
            entries.append((strat, "family", name))
    for rank, (strat, _) in enumerate(post.top_k(s.top_k), start=1):
        entries.append((strat, "top_k", f"top-{rank}"))
    for i, strat in enumerate(post.sample(s.n_samples, seed=settings.seed), start=1):
        entries.append((strat, "sample", f"sample-{i}"))
    rows: dict[str, dict] = {}
    for strat, source, name in entries:
        row = rows.get(strat.id)
        if row is None:
            row = rows[strat.id] = {
                "id": strat.id, "strategy": strat.text, "name": name, "source": [], "log_prob": post.log_prob(strat),
                "n_drawn": 0, "also": [], **{f"n_{k}": v for k, v in strat.counts().items()},
            }
        elif source == "family":  # a second family name of the same strategy (all-ST = R3D)
            row["also"].append(name)
        if source not in row["source"]:
            row["source"].append(source)
        if source == "sample":
            row["n_drawn"] += 1
    df = pd.DataFrame(list(rows.values()))
    df["source"] = df["source"].map(";".join)
    df["also"] = df["also"].map(";".join)
    df["prob"] = np.exp(df["log_prob"])
    df["keep_prob_rule"] = rule
    cols = ["id", "strategy", "name", "also", "source", "log_prob", "prob", "n_drawn", "n_S", "n_ST", "n_S+ST",
            "n_none", "keep_prob_rule"]
    df = df[cols]
    write_csv(df, out)
    by_source = df["source"].str.split(";").explode().value_counts().to_dict()
    log.info("%d distinct strategies listed (%s)", len(df), by_source)
    return df


def list_files(paths: Sequence[str | Path], seeds: Sequence[int]) -> list[Path]:
    """Strategy lists named one by one or by their folder (its ``seed<s>.csv`` of each of ``seeds``)."""
    out: list[Path] = []
    for p in map(Path, paths):
        out += [p / f"seed{s}.csv" for s in seeds] if p.is_dir() else [p]
    return out


def union_candidates(cand: pd.DataFrame, others: Sequence[pd.DataFrame], post, n_layers: int) -> pd.DataFrame:
    """``cand`` followed by the strategies of the ``others`` lists it lacks (the other seeds' candidates, in
    their order), as listed by another seed: ``source`` ``seed-union``, never drawn here, and the log-probability
    and probability under this supernet's posterior ``post``."""
    import numpy as np
    import pandas as pd

    seen, extra = set(cand["id"].astype(str)), []
    for other in others:
        for row in other.to_dict("records"):
            if str(row["id"]) in seen:
                continue
            seen.add(str(row["id"]))
            lp = post.log_prob(strategy_of(row["strategy"], n_layers))
            extra.append({**row, "source": "seed-union", "log_prob": lp, "prob": float(np.exp(lp)), "n_drawn": 0})
    return pd.concat([cand, pd.DataFrame(extra, columns=cand.columns)], ignore_index=True) if extra else cand


def score_strategies(
    params: dict, *, checkpoint: str | Path, cache_dir: str | Path, candidates: str | Path, out: str | Path,
    union: Sequence[str | Path] = (), progress: bool = True,
) -> pd.DataFrame:
    """Stage ``score_strategies``: score every listed strategy with the supernet's shared weights.

    Columns added to the candidates: ``top1`` (validation split, the configured BN mode: recalibrated unless
    ``scoring.recalibrate_bn`` is false), ``top5``, ``top1_motion``, ``top1_appearance`` (validation, per class
    kind), ``top1_test`` (+ per kind: the test split, same mode, for reporting only), ``top1_recal`` and
    ``top1_plain_bn`` (validation with and without BN recalibration, both always measured), the exposure of each
    strategy's configuration in the supernet's training (:func:`add_exposure`), ``rank`` (1 = best ``top1``; ties
    broken by log-probability). With ``scoring.racing`` (:mod:`stfusion.scoring.racing`) also
    ``race_status``, ``race_clips``, ``top1_partial``, ``top1_low``, ``top1_high``; the dropped strategies' score
    columns are empty (NaN) and they rank last. ``union``: the other seeds' candidate lists (files, or their
    folder, :func:`list_files`: the lists of ``seeds``), whose strategies are scored too (:func:`union_candidates`), so that every seed's
    supernet scores the same strategies."""
    from stfusion.io.files import write_csv
    from stfusion.core.costs import add_costs
    from stfusion.scoring.prefix import score_strategies_prefix
    from stfusion.data.transforms import inference_clip_shape, reported_views
    from stfusion.scoring.naive import score_resumable
    from stfusion.engine.evaluation import eval_loader
    from stfusion.engine.train import resolve_device

    require_cache(cache_dir)
    cand = read_table(candidates, "strategy list")
    model, ckpt = load_supernet(checkpoint)
    settings = Settings.for_stage(params)
    if union:
        cand = union_candidates(cand, [read_table(p, "strategy list") for p in list_files(union, settings.seeds)],
                                model.posterior(settings.gate.keep_prob), model.n_fusion_layers)
    s = settings.scoring
    device = resolve_device(settings.compute.device)
    recal, bs, workers = s.recalibrate_bn, s.batch_size, settings.compute.loader_workers
    val, test, calib, groups = _scoring_data(settings, cache_dir)
    strategies = [strategy_of(t, model.n_fusion_layers) for t in cand["strategy"]]
    kw = dict(model=model, num_classes=num_classes(model), calib_batches=calib, groups=groups, device=device,
              progress=progress)
    partial = _partial_dir(params, checkpoint, cache_dir, out)

    def run(dataset, recalibrate, split):
        log.info("scoring %d strategies on %d %s clips (%s BN)", len(strategies), len(dataset), split,
                 "recalibrated" if recalibrate else "plain")
        df = score_resumable(score_strategies_prefix, strategies, partial / f"{split}-{int(recalibrate)}",
                             val_loader=eval_loader(dataset, bs, workers), recalibrate=recalibrate, **kw)
        return _indexed(df)

    if s.racing:
        from stfusion.scoring.racing import race_stage

        main_val = race_stage(settings, strategies, val, cand, **kw)
        strategies = [st for st, full in zip(strategies, main_val["race_status"] == "full") if full]
    else:
        main_val = run(val, recal, "val")
    out_df = _score_columns(cand, main_val, run(val, not recal, "val"), run(test, recal, "test"), recal)
    for col, value in reported_views(settings.data).items():
        out_df[col] = value
    out_df = add_exposure(out_df.reset_index(), model, ckpt, checkpoint, s.min_exposure)
    out_df = add_costs(add_rank(out_df), model, inference_clip_shape(settings.data))
    write_csv(out_df, out)
    shutil.rmtree(partial, ignore_errors=True)
    if partial.parent.is_dir() and not any(partial.parent.iterdir()):
        partial.parent.rmdir()
    best = out_df.iloc[0]
    log.info("best on validation: %s (top1 %.3f, test %.3f)", best["strategy"], best["top1"], best["top1_test"])
    return out_df


def _scoring_data(settings: Settings, cache_dir) -> tuple:
    """``(val, test, calib, groups)``: the validation and test clip sets (the test views), the calibration batches
    (from the training split's calibration subset) and the class groups of per-kind scores."""
    from stfusion.scoring.naive import calibration_batches

    s = settings.scoring
    _, groups = class_groups(cache_dir)
    val = clip_dataset(settings, cache_dir, "val", train=False)
    test = clip_dataset(settings, cache_dir, "test", train=False, views="test")
    calib_set = clip_dataset(settings, cache_dir, "train", train=True, views="eval", calib_only=True)
    return val, test, calibration_batches(calib_set, s.batch_size, s.calib_batches, seed=settings.seed), groups


def _partial_dir(params: dict, checkpoint, cache_dir, out) -> Path:
    """The folder of the finished scoring chunks, which survive a kill: named by everything the scores depend on
    (the parameters, the checkpoint's and the data's digests)."""
    import hashlib

    key = hashlib.sha1(json.dumps([params, file_digest(checkpoint), data_fingerprint(cache_dir)], sort_keys=True,
                                  default=str).encode()).hexdigest()[:16]
    return Path(out).parent / ".partial" / key


def _score_columns(cand: pd.DataFrame, main_val: pd.DataFrame, other_val: pd.DataFrame, test_df: pd.DataFrame,
                   recal: bool) -> pd.DataFrame:
    """The candidates (indexed by ``id``) with the scores of the three passes: ``main_val`` (validation, the
    configured BN mode) as they are, ``top1_recal`` / ``top1_plain_bn`` from it and ``other_val`` (the other BN
    mode), the ``top1*`` of ``test_df`` as ``top1_test*``, and ``bn_mode``."""
    out_df = cand.set_index("id")
    for col in main_val.columns:
        out_df[col] = main_val[col]
    out_df["top1_recal"] = (main_val if recal else other_val)["top1"]
    out_df["top1_plain_bn"] = (other_val if recal else main_val)["top1"]
    for col in test_df.columns:
        if col.startswith("top1"):
            out_df[col.replace("top1", "top1_test", 1)] = test_df[col]
    out_df["bn_mode"] = "recalibrated" if recal else "plain"
    return out_df


def add_exposure(df: pd.DataFrame, model, ckpt: dict, checkpoint: str | Path, min_exposure: float) -> pd.DataFrame:
    """``df`` (a ``strategy`` column) with ``exposure``, ``exposure_layer``, ``exposure_joint``
    (:mod:`stfusion.analysis.exposure`, from the drop-rate history ``ckpt`` carries), ``extrapolated``
    (``exposure`` below ``min_exposure``: the score is an extrapolation) and ``min_exposure`` itself."""
    import numpy as np
    import pandas as pd
    from stfusion.analysis.exposure import COLUMNS, exposure_table, rate_history

    if not ckpt.get("drop_rates"):
        raise StfusionError(f"{checkpoint} holds no drop-rate history (it predates exposure): rerun "
                            "'stfusion train-supernet'")
    cfg = ckpt["config"]
    rates = rate_history(pd.DataFrame(ckpt["drop_rates"]), cfg["warmup_epochs"], model.n_fusion_layers)
    states = np.array([strategy_of(t, model.n_fusion_layers).states for t in df["strategy"]], int)
    exposure = exposure_table(rates, states, model.allow_none, cfg["uniform_share"])
    df = df.assign(**{c: exposure[c].to_numpy() for c in COLUMNS})
    return df.assign(extrapolated=df["exposure"] < min_exposure, min_exposure=min_exposure)


def _indexed(scores: pd.DataFrame) -> pd.DataFrame:
    return scores.drop(columns=["strategy", "n"]).assign(id=lambda d: d["id"].astype(str)).set_index("id")


def add_rank(df: pd.DataFrame, score: str = "top1") -> pd.DataFrame:
    """Sort by ``score`` (best first; ties by log-probability) and number the rows ``rank`` 1..n."""
    import numpy as np

    df = df.sort_values([score, "log_prob"], ascending=[False, False], kind="stable").reset_index(drop=True)
    df["rank"] = np.arange(1, len(df) + 1)
    return df


def analyze(
    params: dict, *, checkpoint: str | Path, ranking: str | Path, drop_rates: str | Path | None = None,
    gate_stats: str | Path | None = None, out_dir: str | Path,
) -> dict:
    """Stage ``analyze``: the network-level table, the layer-level preference (CSV + Markdown), the preference
    heatmap, the log-probability vs score scatter plot and the drop-rate trajectories (with the gate statistics,
    when the supernet's training wrote them), in ``out_dir`` under the names of the standard layout."""
    from stfusion.analysis import space as analysis

    model, ckpt = load_supernet(checkpoint)
    rule = Settings.for_stage(params).gate.keep_prob
    post = model.posterior(rule)
    ranked = read_table(ranking, "ranking")
    init_p = build_settings(ckpt, checkpoint).gate.init_p
    out_dir = Path(out_dir)
    pref = analysis.preference_table(post, model.drop_rates(), model.stage_of_layer)
    write_table(pref, in_folder(LAYOUT.preference, out_dir))
    net = analysis.network_table(ranked)
    write_table(net, in_folder(LAYOUT.network, out_dir))
    analysis.plot_preference(pref, in_folder(LAYOUT.preference_plot, out_dir))
    analysis.plot_scatter(ranked, in_folder(LAYOUT.scatter_plot, out_dir))
    rates = _optional_table(drop_rates, "no drop-rate figure")
    if rates is not None:
        stats = _optional_table(gate_stats, "the drop-rate figure leaves out the gate statistics")
        analysis.plot_drop_rates(rates, in_folder(LAYOUT.drop_rates_plot, out_dir), stats)
    summary = analysis.preference_summary(pref)
    p = model.drop_rates()
    summary.update(entropy=post.entropy(), entropy_initial=analysis.initial_entropy(init_p, model.allow_none, rule),
                   drop_rate_spread=float(p.max() - p.min()), keep_prob_rule=rule, init_p=init_p,
                   initial_marginals=analysis.initial_marginals(init_p, rule),
                   training=training_record(ckpt))
    write_json(in_folder(LAYOUT.analysis_summary, out_dir), summary)
    return summary


def training_record(ckpt: dict) -> dict:
    """What a supernet checkpoint was trained with (its training configuration but the fields that only say how
    often it was saved, and its ``model`` / ``gate`` build): replicates to pool must agree on all but the seed."""
    from stfusion.engine.train import RUN_ONLY_FIELDS

    config = {k: v for k, v in (ckpt.get("config") or {}).items() if k not in RUN_ONLY_FIELDS}
    build = ckpt.get("build") or {}
    return {"config": config, "model": build.get("model"), "gate": build.get("gate")}


def _optional_table(path: str | Path | None, without: str) -> pd.DataFrame | None:
    """The CSV table at ``path``, or None (with a warning saying what is left out when ``path`` is missing)."""
    import pandas as pd

    if path is not None and Path(path).is_file():
        return pd.read_csv(path)
    if path is not None:
        log.warning("%s not found: %s", path, without)
    return None
