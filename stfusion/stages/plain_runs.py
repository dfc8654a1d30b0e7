"""Training plain networks, one a strategy (finetuned derived networks, stand-alone strategies): one JSON
record a run, gathered into a table afterwards."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from stfusion.config.settings import Settings
from stfusion.errors import StfusionError
from stfusion.stages.runtime import data_fingerprint
from stfusion.io.files import read_json, write_json
from stfusion.stages.common import class_groups, clip_dataset, num_classes, require_cache

if TYPE_CHECKING:  # heavy imports stay inside the functions (the CLI's --help imports the stages)
    import pandas as pd


log = logging.getLogger(__name__)


def train_plain_runs(
    params: dict, budget: str, strategies: pd.DataFrame, ids: Sequence[str] | None, make_net, *, cache_dir,
    ckpt_dir, runs_dir, seed_offset: int, progress: bool, what: str, origin: dict | None = None,
) -> list[dict]:
    """Train one plain network per listed strategy (all, or the given ``ids``) with the ``budget`` settings
    (``finetune`` or ``standalone``); one JSON per run. ``origin``
    (e.g. the digest of the supernet a network is exported from) joins the training settings, so a run left by
    another supernet or other data is never resumed."""
    origin = origin or {}
    from stfusion.engine import distributed
    from stfusion.io.files import write_csv
    from stfusion.engine.evaluation import plain_evaluator, run_files, test_predictions
    from stfusion.engine.train import fit, plain_config, resolve_device

    require_cache(cache_dir)
    todo = _selected(strategies, ids, what)
    settings = Settings.for_stage(params)
    train_set = clip_dataset(settings, cache_dir, "train", train=True)
    val = clip_dataset(settings, cache_dir, "val", train=False)
    test = clip_dataset(settings, cache_dir, "test", train=False, views="test")
    _, groups = class_groups(cache_dir)
    bs = settings.scoring.batch_size
    device = resolve_device(settings.compute.device)
    data_fp = data_fingerprint(cache_dir)
    results = []
    for _, row in todo.iterrows():
        sid = str(row["id"])
        t0 = time.perf_counter()
        net = make_net(row)
        cfg = plain_config(settings, getattr(settings, budget), seed_offset)
        cfg.extra = {**cfg.extra, "data": data_fp, **origin}
        run_dir = Path(ckpt_dir) / sid
        log.info("%s: training %s (%s) for %d epochs", what, sid, row["strategy"], cfg.total_epochs)
        validation = plain_evaluator(val, bs, num_classes(net), every=settings.solver.eval_every,
                                     total_epochs=cfg.total_epochs)
        hist = fit(net, train_set, cfg, run_dir, progress=progress, evaluate=validation, on_stale="restart")
        res = {"id": sid, "strategy": row["strategy"], "name": row.get("name", sid),
               **_accuracies_and_costs(net, {"val": val, "test": test}, settings, cfg.loader_workers, groups,
                                       device)}
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


def _selected(strategies: pd.DataFrame, ids: Sequence[str] | None, what: str) -> pd.DataFrame:
    """The rows of ``strategies`` whose id is in ``ids`` (all rows without ``ids``); an id not listed stops with
    one line naming it."""
    known = list(strategies["id"].astype(str))
    unknown = [i for i in ids or () if i not in known]
    if unknown:
        raise StfusionError(f"strategy {unknown[0]!r} is not listed in the {what} table (listed: {', '.join(known)})")
    return strategies[strategies["id"].astype(str).isin(ids)] if ids else strategies


def _accuracies_and_costs(net, splits: dict, settings: Settings, workers: int, groups: dict, device) -> dict:
    """A trained network's ``top1_<split>``, ``top5_<split>`` and per-kind ``top1_<split>_<group>`` on each of
    ``splits`` (name: clip set), the views they were read with, its MACs and parameters."""
    from stfusion.core.costs import network_costs
    from stfusion.data.transforms import inference_clip_shape, reported_views
    from stfusion.engine.evaluation import eval_loader, evaluate
    from stfusion.scoring.naive import group_accuracy

    res = {}
    for split, ds in splits.items():
        r = evaluate(net, eval_loader(ds, settings.scoring.batch_size, workers), num_classes(net), device)
        res[f"top1_{split}"] = r["top1"]
        res[f"top5_{split}"] = r["top5"]
        for k, v in group_accuracy(r, groups).items():
            res[k.replace("top1", f"top1_{split}", 1)] = v
    return {**res, **reported_views(settings.data), **network_costs(net, inference_clip_shape(settings.data))}


def gather_runs(ids: Iterable[str], runs_dir: str | Path, command: str) -> pd.DataFrame:
    import pandas as pd

    ids = list(ids)
    missing = [i for i in ids if not (Path(runs_dir) / f"{i}.json").is_file()]
    if missing:
        raise StfusionError(
            f"{len(missing)} run(s) missing in {runs_dir} (e.g. {missing[0]}); run '{command} --strategy {missing[0]}'"
        )
    return pd.DataFrame([read_json(Path(runs_dir) / f"{i}.json") for i in ids])
