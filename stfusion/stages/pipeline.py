"""The pipeline's stages: one function a stage, each called by one ``stfusion`` subcommand (``stfusion.cli``),
which Snakemake rules (``workflow/rules/*.smk``) and DVC stages (``dvc.yaml``) call in turn. Where their files
live and which parameters each reads: :mod:`stfusion.config.layout`; the file helpers they share: :mod:`stfusion.stages.runtime`.

The supernet checkpoint carries everything needed to rebuild the network (the ``model`` and ``gate`` sections it
was trained with, the class list), so stages after training read no model parameters.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from stfusion.errors import StfusionError
from stfusion.config.layout import ANALYSIS, CACHE, CANDIDATES, DATA_ROOT, DERIVED, FINETUNE_CKPT, FINETUNE_RUNS, FINETUNE_TABLE, METRICS, PREFERENCE, RANKING, REPORT, REPORT_DIR, RESULTS, SELECTION, STANDALONE_CKPT, STANDALONE_RUNS, SUPERNET, SUPERNET_DIR, VALIDATION, VERSIONS
from stfusion.stages.runtime import data_fingerprint, library_versions
from stfusion.io.files import file_digest, read_json, read_table, write_json
from stfusion.io.tables import write_table

if TYPE_CHECKING:  # heavy imports stay inside the functions (the CLI's --help imports this module)
    import pandas as pd
    import torch

    from stfusion.models.base import FusionNetwork
    from stfusion.core.strategies import Strategy

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- data
def _data():
    """The data layer (imported lazily so the CLI's ``--help`` stays fast)."""
    from stfusion import data

    return data


def class_groups(cache_dir: str | Path) -> tuple[list[dict], dict[str, list[int]]]:
    """The class list of a cache (``index, name, kind``) and the class indices of each kind
    (``motion``, ``appearance``; classes of other or unknown kind are left out of the groups)."""
    import pandas as pd
    from stfusion.data.dataset import load_classes

    classes = load_classes(cache_dir)
    if isinstance(classes, pd.DataFrame):
        rows = classes.to_dict("records")
    else:
        rows = [dict(r) if isinstance(r, dict) else {"name": str(r)} for r in classes]
    for i, row in enumerate(rows):
        row.setdefault("index", i)
        row.setdefault("kind", "")
    groups: dict[str, list[int]] = {}
    for row in rows:
        kind = str(row.get("kind") or "")
        if kind in ("motion", "appearance"):
            groups.setdefault(kind, []).append(int(row["index"]))
    return rows, groups


def clip_dataset(params: dict, cache_dir: str | Path, split: str, *, train: bool, views: str | None = None,
                 calib_only: bool = False):
    from stfusion.data.video_dataset import open_clips

    return open_clips(params["data"], cache_dir, split, train=train, views=views, calib_only=calib_only)


def _require_cache(cache_dir: str | Path) -> None:
    cache_dir = Path(cache_dir)
    if not (cache_dir / "manifest.csv").is_file():
        raise StfusionError(f"no clip cache in {cache_dir} (run 'stfusion prepare' first)")


# -------------------------------------------------------------------------------------------- supernet io
def save_supernet_build(path: str | Path, params: dict, num_classes: int, classes: list[dict],
                        clip_shape: Sequence[int]) -> None:
    """Add what is needed to rebuild the network (model and gate sections, classes) and the shape of its input
    clips ``(3, T, H, W)`` (the input size the costs of its strategies are counted for) to a checkpoint."""
    from stfusion.engine.checkpoint import load_checkpoint, save_torch

    ckpt = load_checkpoint(path)
    ckpt["build"] = {
        "model": copy.deepcopy(params["model"]),
        "gate": copy.deepcopy(params.get("gate", {})),
        "num_classes": int(num_classes),
        "classes": classes,
        "clip_shape": [int(n) for n in clip_shape],
    }
    save_torch(ckpt, path)


def build_from_checkpoint(ckpt: dict, path: str | Path = "checkpoint") -> FusionNetwork:
    """A template network with the architecture recorded in ``ckpt['build']`` (random weights)."""
    from stfusion.models import build_model

    build = ckpt.get("build")
    if not build:
        raise StfusionError(
            f"{path} holds no build information; it was not written by 'stfusion train-supernet' (rerun it)"
        )
    model_params = {**build["model"], "pretrained_2d": None}  # the weights come from the checkpoint
    return build_model({"model": model_params, "gate": build["gate"]}, build["num_classes"])


def clip_shape(ckpt: dict, path: str | Path = "checkpoint") -> list[int]:
    """The ``(3, T, H, W)`` input clips a supernet checkpoint was trained on."""
    shape = ckpt.get("build", {}).get("clip_shape")
    if not shape:
        raise StfusionError(f"{path} does not record its input size; it was written by an older "
                            "'stfusion train-supernet' (rerun it)")
    return list(shape)


def load_supernet(path: str | Path) -> tuple[FusionNetwork, dict]:
    """The trained template network of a ``train-supernet`` checkpoint, and the checkpoint."""
    from stfusion.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    model = build_from_checkpoint(ckpt, path)
    if ckpt.get("arch") != model.arch:
        raise StfusionError(f"{path}: the recorded architecture does not match the rebuilt network")
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, ckpt


def strategy_of(text: str, n_layers: int) -> Strategy:
    from stfusion.core.strategies import Strategy

    return Strategy.parse(str(text), n_layers)


# ================================================================================================ stages
def generate(params: dict, *, root: str | Path = DATA_ROOT, progress: bool = True) -> dict:
    """Stage ``generate``: write the built-in benchmark (videos, ``annotations.csv``, ``classes.csv``) to ``root``."""
    from stfusion.data.builtin import generate as generate_builtin

    b = params["data"].get("builtin", {})
    ann = generate_builtin(
        root, clips_per_class=b.get("clips_per_class", 36), frames=b.get("frames", 12), size=b.get("size", 64),
        texture=b.get("texture", "synthetic"), seed=params["seed"], classes=b.get("classes"), progress=progress,
    )
    summary = {"root": str(root), "videos": int(len(ann)), "classes": int(ann["label"].nunique()),
               "train": int((ann["split"] == "train").sum()), "test": int((ann["split"] == "test").sum())}
    log.info("built-in benchmark: %d videos of %d classes in %s", summary["videos"], summary["classes"], root)
    return summary


def prepare(
    params: dict, *, root: str | Path | None = None, cache_dir: str | Path = CACHE, workers: int | None = None,
    progress: bool = True, shard: tuple[int, int] | None = None, merge: int | None = None,
) -> dict:
    """Stage ``prepare``: read the dataset's annotations and prepare it in ``data.storage`` (the clip cache or
    one file per video, :mod:`stfusion.data.storage`) with train / val / test splits and the calibration subset
    (``data/cache``); ``shard=(I, N)`` prepares one shard of videos storage, ``merge=N`` merges N shards."""
    from stfusion.data.prepare import prepare_dataset

    return prepare_dataset(params, root=root, cache_dir=cache_dir, workers=workers, progress=progress, shard=shard,
                           merge=merge)


def train_supernet(
    params: dict, *, cache_dir: str | Path = CACHE, out_dir: str | Path = SUPERNET_DIR, progress: bool = True,
) -> dict:
    """Stage ``train_supernet``: train the template network with Variational DropPath (gate-free warm-up,
    then gates and the KL term). Resumes from ``out_dir/last.pt`` when it was written with the same settings;
    a stale ``last.pt`` (other settings) is discarded with a message. Writes ``model.pt`` (with the build
    information later stages need), ``history.csv`` and ``drop_rates.csv``."""
    import torch

    from stfusion.models import build_model
    from stfusion.engine import distributed
    from stfusion.engine.evaluation import supernet_evaluator
    from stfusion.engine.train import fit, supernet_config

    _require_cache(cache_dir)
    out_dir = Path(out_dir)
    train_set = clip_dataset(params, cache_dir, "train", train=True)
    classes, _ = class_groups(cache_dir)
    torch.manual_seed(params["seed"])  # the initial weights are part of the seeded run
    model = build_model(params, train_set.num_classes)
    cfg = supernet_config(params, len(train_set))
    cfg.extra = {**cfg.extra, "data": data_fingerprint(cache_dir)}
    _discard_stale(out_dir / "last.pt", model.arch, cfg.settings())
    evaluate = supernet_evaluator(clip_dataset(params, cache_dir, "val", train=False), cfg.batch_size,
                                  train_set.num_classes, every=params["supernet"].get("eval_every", 1),
                                  total_epochs=cfg.total_epochs)
    history = fit(model, train_set, cfg, out_dir, progress=progress, evaluate=evaluate)
    if distributed.is_main():
        save_supernet_build(out_dir / "model.pt", params, train_set.num_classes, classes, train_set[0][0].shape)
    p = model.drop_rates()
    last = history.iloc[-1].to_dict() if len(history) else {}
    return {"epochs": int(cfg.total_epochs), "n_train": len(train_set), "fusion_layers": model.n_fusion_layers,
            "final_train_top1": float(last.get("train_top1", float("nan"))),
            "mean_p_S": float(p[:, 0].mean()), "mean_p_ST": float(p[:, 1].mean())}


def _discard_stale(last: Path, arch: dict, settings: dict) -> None:
    import torch

    from stfusion.engine.train import RUN_ONLY_FIELDS

    if not last.exists():
        return
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        written = {k: v for k, v in (ckpt.get("config") or {}).items() if k not in RUN_ONLY_FIELDS}
        same = ckpt.get("arch") == arch and written == settings
    except Exception:  # noqa: BLE001 - a damaged file is stale too
        same = False
    if not same:
        log.warning("%s was written with other settings; starting the training over", last)
        last.unlink()


# ---------------------------------------------------------------------------------------- strategies
def sample_strategies(params: dict, *, checkpoint: str | Path = SUPERNET, out: str | Path = CANDIDATES) -> pd.DataFrame:
    """Stage ``sample_strategies``: the ``scoring.top_k`` most probable strategies, ``scoring.n_samples`` drawn
    from the posterior (seed ``seed``) and the named families, one row a distinct strategy:
    ``id, strategy, name, source, log_prob, prob, n_drawn, n_S, n_ST, n_S+ST, n_none``.

    ``source`` lists every way the strategy was listed (``family``, ``top_k``, ``sample``), ``;``-separated;
    ``name`` is the family name, ``top-<rank>`` or ``sample-<first draw>``."""
    import numpy as np
    import pandas as pd
    from stfusion.io.files import write_csv
    from stfusion.core.strategies import families

    model, _ = load_supernet(checkpoint)
    rule = params["gate"].get("keep_prob", "paper")
    post = model.posterior(rule)
    s = params["scoring"]
    entries: list[tuple[Strategy, str, str]] = []
    for name, strat in families(model.n_fusion_layers, model.stage_of_layer).items():
        if all(a or st != 0 for a, st in zip(model.allow_none, strat.states)):
            entries.append((strat, "family", name))
    for rank, (strat, _) in enumerate(post.top_k(s.get("top_k", 8)), start=1):
        entries.append((strat, "top_k", f"top-{rank}"))
    for i, strat in enumerate(post.sample(s.get("n_samples", 24), seed=params["seed"]), start=1):
        entries.append((strat, "sample", f"sample-{i}"))
    rows: dict[str, dict] = {}
    for strat, source, name in entries:
        row = rows.get(strat.id)
        if row is None:
            row = rows[strat.id] = {
                "id": strat.id, "strategy": strat.text, "name": name, "source": [], "log_prob": post.log_prob(strat),
                "n_drawn": 0, **{f"n_{k}": v for k, v in strat.counts().items()},
            }
        if source not in row["source"]:
            row["source"].append(source)
        if source == "sample":
            row["n_drawn"] += 1
    df = pd.DataFrame(list(rows.values()))
    df["source"] = df["source"].map(";".join)
    df["prob"] = np.exp(df["log_prob"])
    df["keep_prob_rule"] = rule
    cols = ["id", "strategy", "name", "source", "log_prob", "prob", "n_drawn", "n_S", "n_ST", "n_S+ST", "n_none",
            "keep_prob_rule"]
    df = df[cols]
    write_csv(df, out)
    by_source = df["source"].str.split(";").explode().value_counts().to_dict()
    log.info("%d distinct strategies listed (%s)", len(df), by_source)
    return df


def score_strategies(
    params: dict, *, checkpoint: str | Path = SUPERNET, cache_dir: str | Path = CACHE,
    candidates: str | Path = CANDIDATES, out: str | Path = RANKING, progress: bool = True,
) -> pd.DataFrame:
    """Stage ``score_strategies``: score every listed strategy with the supernet's shared weights.

    Columns added to the candidates: ``top1`` (validation split, the configured BN mode: recalibrated unless
    ``scoring.recalibrate_bn`` is false), ``top5``, ``top1_motion``, ``top1_appearance`` (validation, per class
    kind), ``top1_test`` (+ per kind: the test split, same mode, for reporting only), ``top1_recal`` and
    ``top1_plain_bn`` (validation with and without BN recalibration, both always measured), ``rank`` (1 = best
    ``top1``; ties broken by log-probability). With ``scoring.racing`` (:mod:`stfusion.scoring.racing`) also
    ``race_status``, ``race_clips``, ``top1_partial``, ``top1_low``, ``top1_high``; the dropped strategies' score
    columns are empty (NaN) and they rank last."""
    import hashlib

    from stfusion.io.files import write_csv
    from stfusion.core.costs import add_costs
    from stfusion.scoring.prefix import score_strategies_prefix
    from stfusion.data.transforms import views_text
    from stfusion.scoring.naive import calibration_batches, score_resumable
    from stfusion.engine.evaluation import eval_loader
    from stfusion.engine.train import resolve_device

    _require_cache(cache_dir)
    cand = read_table(candidates, "strategy list")
    model, _ = load_supernet(checkpoint)
    s = params["scoring"]
    device = resolve_device(params["supernet"].get("device", "auto"))
    recal = bool(s.get("recalibrate_bn", True))
    bs = int(s.get("batch_size", 32))
    _, groups = class_groups(cache_dir)
    val = clip_dataset(params, cache_dir, "val", train=False)
    test = clip_dataset(params, cache_dir, "test", train=False, views="test")
    calib_set = clip_dataset(params, cache_dir, "train", train=True, views="eval", calib_only=True)
    workers = int(params["supernet"].get("loader_workers", 0))
    calib = calibration_batches(calib_set, bs, int(s.get("calib_batches", 4)), seed=params["seed"])
    strategies = [strategy_of(t, model.n_fusion_layers) for t in cand["strategy"]]
    kw = dict(model=model, num_classes=_num_classes(model), calib_batches=calib, groups=groups, device=device,
              progress=progress)
    # finished chunks survive a kill; their folder is named by everything the scores depend on
    key = hashlib.sha1(json.dumps([params, file_digest(checkpoint), data_fingerprint(cache_dir)], sort_keys=True,
                                  default=str).encode()).hexdigest()[:16]
    partial = Path(out).parent / ".partial" / key

    def run(dataset, recalibrate, split):
        log.info("scoring %d strategies on %d %s clips (%s BN)", len(strategies), len(dataset), split,
                 "recalibrated" if recalibrate else "plain")
        df = score_resumable(score_strategies_prefix, strategies, partial / f"{split}-{int(recalibrate)}",
                             val_loader=eval_loader(dataset, bs, workers), recalibrate=recalibrate, **kw)
        return _indexed(df)

    if s.get("racing", False):
        from stfusion.scoring.racing import race_stage

        main_val = race_stage(params, strategies, val, cand, **kw)
        strategies = [st for st, full in zip(strategies, main_val["race_status"] == "full") if full]
    else:
        main_val = run(val, recal, "val")
    other_val = run(val, not recal, "val")
    test_df = run(test, recal, "test")
    out_df = cand.set_index("id")
    for col in main_val.columns:
        out_df[col] = main_val[col]
    out_df["top1_recal"] = (main_val if recal else other_val)["top1"]
    out_df["top1_plain_bn"] = (other_val if recal else main_val)["top1"]
    for col in test_df.columns:
        if col.startswith("top1"):
            out_df[col.replace("top1", "top1_test", 1)] = test_df[col]
    out_df["bn_mode"] = "recalibrated" if recal else "plain"
    out_df["test_views"] = views_text(params["data"])
    out_df = add_costs(add_rank(out_df.reset_index()), model, val[0][0].shape)
    write_csv(out_df, out)
    shutil.rmtree(partial, ignore_errors=True)
    if partial.parent.is_dir() and not any(partial.parent.iterdir()):
        partial.parent.rmdir()
    best = out_df.iloc[0]
    log.info("best on validation: %s (top1 %.3f, test %.3f)", best["strategy"], best["top1"], best["top1_test"])
    return out_df


def _indexed(scores: pd.DataFrame) -> pd.DataFrame:
    return scores.drop(columns=["strategy", "n"]).assign(id=lambda d: d["id"].astype(str)).set_index("id")


def _num_classes(model: torch.nn.Module) -> int:
    import torch

    n = getattr(model, "arch", {}).get("num_classes")
    if n is None:
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        n = linears[-1].out_features
    return int(n)


def add_rank(df: pd.DataFrame, score: str = "top1") -> pd.DataFrame:
    """Sort by ``score`` (best first; ties by log-probability) and number the rows ``rank`` 1..n."""
    import numpy as np

    df = df.sort_values([score, "log_prob"], ascending=[False, False], kind="stable").reset_index(drop=True)
    df["rank"] = np.arange(1, len(df) + 1)
    return df


# -------------------------------------------------------------------------------------------- analysis
def analyze(
    params: dict, *, checkpoint: str | Path = SUPERNET, ranking: str | Path = RANKING,
    drop_rates: str | Path | None = f"{SUPERNET_DIR}/drop_rates.csv", out_dir: str | Path = ANALYSIS,
) -> dict:
    """Stage ``analyze``: the network-level table, the layer-level preference (CSV + Markdown), the preference
    heatmap, the log-probability vs score scatter plot and the drop-rate trajectories."""
    import pandas as pd
    from stfusion.analysis import space as analysis

    model, ckpt = load_supernet(checkpoint)
    rule = params["gate"].get("keep_prob", "paper")
    post = model.posterior(rule)
    ranked = read_table(ranking, "ranking")
    init_p = float(ckpt["build"]["gate"].get("init_p", 0.1))
    out_dir = Path(out_dir)
    pref = analysis.preference_table(post, model.drop_rates(), model.stage_of_layer)
    write_table(pref, out_dir / "preference.csv")
    net = analysis.network_table(ranked)
    write_table(net, out_dir / "network.csv")
    analysis.plot_preference(pref, out_dir / "preference.png")
    analysis.plot_scatter(ranked, out_dir / "scatter.png")
    if drop_rates is not None and Path(drop_rates).is_file():
        stats = Path(drop_rates).with_name("gate_stats.csv")
        analysis.plot_drop_rates(pd.read_csv(drop_rates), out_dir / "drop_rates.png",
                                 pd.read_csv(stats) if stats.is_file() else None)
    summary = analysis.preference_summary(pref)
    p = model.drop_rates()
    summary.update(entropy=post.entropy(), entropy_initial=analysis.initial_entropy(init_p, model.allow_none, rule),
                   drop_rate_spread=float(p.max() - p.min()), keep_prob_rule=rule, init_p=init_p,
                   initial_marginals=analysis.initial_marginals(init_p, rule))
    write_json(out_dir / "summary.json", summary)
    return summary


# --------------------------------------------------------------------------------------------- derived
def derive(
    params: dict, *, preference: str | Path = PREFERENCE, ranking: str | Path = RANKING, out: str | Path = DERIVED,
    checkpoint: str | Path = SUPERNET,
) -> pd.DataFrame:
    """Stage ``derive``: new strategies from the preferences (see :mod:`stfusion.analysis.derive`), with the MACs and
    parameters of each derived network (:mod:`stfusion.core.costs`) for the supernet's input clips."""
    from stfusion.core.costs import add_costs
    from stfusion.analysis.derive import derive_strategies

    pref = read_table(preference, "preference table")
    ranked = read_table(ranking, "ranking")
    model, ckpt = load_supernet(checkpoint)
    d = params["derive"]
    df = derive_strategies(pref, ranked, top_k=d.get("top_k", 3), st_threshold=d.get("st_threshold", 0.5))
    df = add_costs(df, model, clip_shape(ckpt, checkpoint))
    write_table(df, out)
    return df


def _train_plain_runs(
    params: dict, section: str, strategies: pd.DataFrame, ids: Sequence[str] | None, make_net, *, cache_dir,
    ckpt_dir, runs_dir, seed_offset: int, progress: bool, what: str, origin: dict | None = None,
) -> list[dict]:
    """Train one plain network per listed strategy (all, or the given ``ids``); one JSON per run. ``origin``
    (e.g. the digest of the supernet a network is exported from) joins the training settings, so a run left by
    another supernet or other data is never resumed."""
    origin = origin or {}
    from stfusion.engine import distributed
    from stfusion.data.transforms import views_text
    from stfusion.io.files import write_csv
    from stfusion.core.costs import network_costs
    from stfusion.engine.evaluation import plain_evaluator, run_files, test_predictions
    from stfusion.engine.evaluation import eval_loader, evaluate
    from stfusion.scoring.naive import group_accuracy
    from stfusion.engine.train import fit, plain_config, resolve_device

    _require_cache(cache_dir)
    known = list(strategies["id"].astype(str))
    if ids:
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise StfusionError(
                f"strategy {unknown[0]!r} is not listed in the {what} table (listed: {', '.join(known)})"
            )
    todo = strategies[strategies["id"].astype(str).isin(ids)] if ids else strategies
    train_set = clip_dataset(params, cache_dir, "train", train=True)
    val = clip_dataset(params, cache_dir, "val", train=False)
    test = clip_dataset(params, cache_dir, "test", train=False, views="test")
    _, groups = class_groups(cache_dir)
    bs = int(params["scoring"].get("batch_size", 32))
    device = resolve_device(params["supernet"].get("device", "auto"))
    data_fp = data_fingerprint(cache_dir)
    results = []
    for _, row in todo.iterrows():
        sid = str(row["id"])
        t0 = time.perf_counter()
        net = make_net(row)
        cfg = plain_config(params, section, seed_offset)
        cfg.extra = {**cfg.extra, "data": data_fp, **origin}
        run_dir = Path(ckpt_dir) / sid
        _discard_stale(run_dir / "last.pt", net.arch, cfg.settings())
        log.info("%s: training %s (%s) for %d epochs", what, sid, row["strategy"], cfg.total_epochs)
        validation = plain_evaluator(val, bs, _num_classes(net), every=params["supernet"].get("eval_every", 1),
                                     total_epochs=cfg.total_epochs)
        hist = fit(net, train_set, cfg, run_dir, progress=progress, evaluate=validation)
        res = {"id": sid, "strategy": row["strategy"], "name": row.get("name", sid)}
        for split, ds in (("val", val), ("test", test)):
            r = evaluate(net, eval_loader(ds, bs, cfg.loader_workers), _num_classes(net), device)
            res[f"top1_{split}"] = r["top1"]
            res[f"top5_{split}"] = r["top5"]
            for k, v in group_accuracy(r, groups).items():
                res[k.replace("top1", f"top1_{split}", 1)] = v
        res["test_views"] = views_text(params["data"])
        res.update(network_costs(net, val[0][0].shape))
        files = run_files(runs_dir, sid)
        write_csv(hist.drop(columns=["seconds"], errors="ignore"), files["history"])
        write_csv(test_predictions(net, test, bs), files["predictions"])
        res["epochs"] = int(cfg.total_epochs)
        res["final_train_top1"] = float(hist.iloc[-1]["train_top1"]) if len(hist) else float("nan")
        res["seconds"] = round(time.perf_counter() - t0, 3)
        if distributed.is_main():
            write_json(Path(runs_dir) / f"{sid}.json", res)
        log.info("%s %s: val %.3f test %.3f (%.0f s)", what, sid, res["top1_val"], res["top1_test"], res["seconds"])
        results.append(res)
    return results


def finetune(
    params: dict, *, checkpoint: str | Path = SUPERNET, cache_dir: str | Path = CACHE, derived: str | Path = DERIVED,
    strategies: Sequence[str] | None = None, ckpt_dir: str | Path = FINETUNE_CKPT,
    runs_dir: str | Path = FINETUNE_RUNS, progress: bool = True,
) -> list[dict]:
    """Stage ``finetune`` (one job): export each derived strategy (all, or the given ids) from the supernet as a
    plain network holding only its kept convs (``model.export``), finetune it with cross-entropy (no gates, no
    logits) and evaluate it on the validation and test splits. Writes ``runs_dir/<id>.json``."""
    supernet, _ = load_supernet(checkpoint)
    table = read_table(derived, "derived strategy table")

    def make(row):
        return supernet.export(strategy_of(row["strategy"], supernet.n_fusion_layers))

    return _train_plain_runs(params, "finetune", table, strategies, make, cache_dir=cache_dir, ckpt_dir=ckpt_dir,
                             runs_dir=runs_dir, seed_offset=0, progress=progress, what="finetune",
                             origin={"supernet": file_digest(checkpoint)})


def finetune_table(*, derived: str | Path = DERIVED, runs_dir: str | Path = FINETUNE_RUNS,
                   ranking: str | Path = RANKING, out: str | Path = FINETUNE_TABLE) -> pd.DataFrame:
    """Gather the finetuning runs of every derived strategy into one accuracy table (CSV + Markdown), with each
    strategy's supernet score before finetuning where it was scored."""
    from stfusion.engine.evaluation import copy_best_run
    from stfusion.analysis.validation import supernet_scores

    table = read_table(derived, "derived strategy table")
    runs = _gather_runs(table["id"].astype(str), runs_dir, "stfusion finetune")
    keep = ["id", "name", "rule", "strategy", "log_prob"]
    table = supernet_scores(table[keep], read_table(ranking, "ranking"))
    table = table.drop(columns=["supernet_top1_recal", "supernet_top1_plain_bn", "supernet_rank"], errors="ignore")
    df = table.merge(runs.drop(columns=["strategy", "name"], errors="ignore"), on="id", how="left")
    df = df.sort_values("top1_val", ascending=False, kind="stable").reset_index(drop=True)
    write_table(df, out)
    copy_best_run(df, "top1_val", runs_dir, Path(out).parent)
    return df


def _gather_runs(ids: Iterable[str], runs_dir: str | Path, command: str) -> pd.DataFrame:
    import pandas as pd

    ids = list(ids)
    missing = [i for i in ids if not (Path(runs_dir) / f"{i}.json").is_file()]
    if missing:
        raise StfusionError(
            f"{len(missing)} run(s) missing in {runs_dir} (e.g. {missing[0]}); run '{command} --strategy {missing[0]}'"
        )
    return pd.DataFrame([read_json(Path(runs_dir) / f"{i}.json") for i in ids])


# ------------------------------------------------------------------------------------------ validation
def select_standalone(params: dict, *, ranking: str | Path = RANKING, out: str | Path = SELECTION) -> pd.DataFrame:
    """Choose the strategies to train from scratch (see :func:`stfusion.analysis.validation.select_strategies`)."""
    from stfusion.analysis.validation import select_strategies

    ranked = read_table(ranking, "ranking")
    df = select_strategies(ranked, int(params["validate"].get("n_strategies", 6)))
    write_table(df, out)
    return df


def train_standalone(
    params: dict, *, checkpoint: str | Path = SUPERNET, cache_dir: str | Path = CACHE,
    selection: str | Path = SELECTION, strategies: Sequence[str] | None = None,
    ckpt_dir: str | Path = STANDALONE_CKPT, runs_dir: str | Path = STANDALONE_RUNS, progress: bool = True,
) -> list[dict]:
    """Train each selected strategy (all, or the given ids) from scratch: a freshly initialised network of the
    supernet's architecture holding only the strategy's convs, the ``validate`` budget, the same seed for every
    strategy. Writes ``runs_dir/<id>.json``."""
    import torch
    from stfusion.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    table = read_table(selection, "stand-alone selection")
    seed = int(params["seed"])

    def make(row):
        torch.manual_seed(seed)
        fresh = build_from_checkpoint(ckpt, checkpoint)
        return fresh.export(strategy_of(row["strategy"], fresh.n_fusion_layers))

    return _train_plain_runs(params, "validate", table, strategies, make, cache_dir=cache_dir, ckpt_dir=ckpt_dir,
                             runs_dir=runs_dir, seed_offset=0, progress=progress, what="stand-alone")


def validate_ranking(
    *, selection: str | Path = SELECTION, runs_dir: str | Path = STANDALONE_RUNS, ranking: str | Path = RANKING,
    out_dir: str | Path = VALIDATION,
) -> dict:
    """Gather the stand-alone runs; Kendall tau and Spearman rho between stand-alone accuracy and the supernet
    score (with and without BN recalibration) and the log-probability (``ranking_fidelity.json``)."""
    from stfusion.engine.evaluation import copy_best_run
    from stfusion.analysis.validation import fidelity, plot_fidelity, supernet_scores

    sel = supernet_scores(read_table(selection, "stand-alone selection"), read_table(ranking, "ranking"))
    runs = _gather_runs(sel["id"].astype(str), runs_dir, "stfusion train-standalone")
    runs = runs.drop(columns=["strategy", "name"], errors="ignore")
    runs = runs.rename(columns={c: f"standalone_{c}" for c in runs.columns if c not in ("id", "macs", "params")})
    df = sel.merge(runs, on="id", how="left")
    out_dir = Path(out_dir)
    write_table(df, out_dir / "standalone.csv")
    copy_best_run(df, "standalone_top1_val", runs_dir, out_dir)
    result = fidelity(df)
    write_json(out_dir / "ranking_fidelity.json", result)
    plot_fidelity(df, out_dir / "ranking_fidelity.png")
    return result


# ---------------------------------------------------------------------------------------------- report
def report(params: dict, *, results: str | Path = RESULTS, checkpoint_dir: str | Path = SUPERNET_DIR,
           cache_dir: str | Path = CACHE, out: str | Path = REPORT, metrics: str | Path = METRICS) -> dict:
    """Stage ``report``: ``report.md``, ``metrics.json`` (numbers only) and ``versions.json`` in ``results``,
    and the report folder ``results/report/`` (:mod:`stfusion.report.files`), from every table above."""
    from stfusion.io.files import write_text
    from stfusion.report.document import build_report
    from stfusion.report.files import write_report_files

    results, versions = Path(results), library_versions()
    classes = [str(row["name"]) for row in class_groups(cache_dir)[0]]
    write_report_files(results, Path(checkpoint_dir), results / Path(REPORT_DIR).name, classes)
    text, scalars = build_report(results, Path(checkpoint_dir), Path(cache_dir), seed=int(params["seed"]),
                                 versions=versions)
    write_text(out, text)
    write_json(metrics, scalars)
    write_json(results / Path(VERSIONS).name, versions)
    return scalars


def clean_dir(path: str | Path) -> None:
    """Remove a folder of per-run outputs (used before an all-strategies run)."""
    if Path(path).exists():
        shutil.rmtree(path)
