"""Stage ``train_supernet``: the template network trained with Variational DropPath."""

from __future__ import annotations

import logging
from pathlib import Path

from stfusion.config.layout import CACHE, SUPERNET_DIR
from stfusion.stages.runtime import data_fingerprint
from stfusion.stages.common import class_groups, clip_dataset, require_cache, supernet_build

log = logging.getLogger(__name__)


def train_supernet(
    params: dict, *, cache_dir: str | Path = CACHE, out_dir: str | Path = SUPERNET_DIR, progress: bool = True,
) -> dict:
    """Stage ``train_supernet``: train the template network with Variational DropPath (gate-free warm-up,
    then gates and the KL term). Resumes from ``out_dir/last.pt`` when it was written with the same settings;
    a stale ``last.pt`` (other settings) is discarded with a message. Writes ``model.pt`` (with the build
    information later stages need, :func:`~stfusion.stages.common.supernet_build`), ``history.csv`` and
    ``drop_rates.csv``."""
    import torch

    from stfusion.data.transforms import inference_clip_shape
    from stfusion.models import build_model
    from stfusion.engine.evaluation import supernet_evaluator
    from stfusion.engine.train import fit, supernet_config

    require_cache(cache_dir)
    out_dir = Path(out_dir)
    train_set = clip_dataset(params, cache_dir, "train", train=True)
    classes, _ = class_groups(cache_dir)
    torch.manual_seed(params["seed"])  # the initial weights are part of the seeded run
    model = build_model(params, train_set.num_classes)
    cfg = supernet_config(params, len(train_set))
    cfg.extra = {**cfg.extra, "data": data_fingerprint(cache_dir)}
    evaluate = supernet_evaluator(clip_dataset(params, cache_dir, "val", train=False), cfg.batch_size,
                                  train_set.num_classes, every=params["supernet"].get("eval_every", 1),
                                  total_epochs=cfg.total_epochs)
    build = supernet_build(params, train_set.num_classes, classes, inference_clip_shape(params["data"]))
    history = fit(model, train_set, cfg, out_dir, progress=progress, evaluate=evaluate, record={"build": build},
                  on_stale="restart")
    p = model.drop_rates()
    last = history.iloc[-1].to_dict() if len(history) else {}
    return {"epochs": int(cfg.total_epochs), "n_train": len(train_set), "fusion_layers": model.n_fusion_layers,
            "final_train_top1": float(last.get("train_top1", float("nan"))),
            "mean_p_S": float(p[:, 0].mean()), "mean_p_ST": float(p[:, 1].mean())}
