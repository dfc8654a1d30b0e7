"""Validation during training: the per-epoch columns the training loops add to ``history.csv``.

Each function here builds an ``evaluate(model, epoch) -> dict`` callable for :func:`stfusion.engine.train.fit`; the dict
is merged into that epoch's history row. Evaluation runs every ``every`` epochs and after the last one (other
epochs get no validation columns), in eval mode on the validation split, with the random number generators
saved and restored around it, so validating never changes the training itself.

* Supernet (:func:`supernet_evaluator`): ``val_top1`` / ``val_loss`` of the template in evaluation mode,
  gate-free (both paths of every layer, no masks); for each keep-probability rule ``R`` (``paper``, ``plain``:
  training does not depend on ``gate.keep_prob``, so the history holds both), ``val_top1_most_probable_R`` /
  ``val_loss_most_probable_R`` of the most probable strategy of the current posterior with its hard gates (the
  template's BatchNorm statistics, no recalibration; a strategy both rules agree on is evaluated once),
  ``most_probable_R`` (its text form) and, every epoch, ``entropy_R``: the posterior entropy in nats.
* Plain networks, finetuned or stand-alone (:func:`plain_evaluator`): ``val_top1`` and ``val_loss``.

After training, every plain run also leaves its history and its per-video test predictions beside its record
(:func:`run_files`); the gather stages copy those of the run best on validation (:func:`copy_best_run`), for
the DVC plots (curves, confusion matrix) and the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from stfusion.config.layout import best_run_file, run_file
from stfusion.data.loader import clip_loader
from stfusion.data.transforms import average_views, normalize
from stfusion.core.strategies import KEEP_PROB_RULES

Evaluator = Callable[[torch.nn.Module, int], dict]


def is_due(epoch: int, every: int, total_epochs: int) -> bool:
    """Validate after 1-based ``epoch``: every ``every`` epochs and after the last."""
    return epoch % max(int(every), 1) == 0 or epoch == total_epochs


@contextmanager
def _untouched_rng(device: torch.device):
    """Run the enclosed code without moving the CPU (and the CUDA device's) random number generators."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def _val(model, loader, num_classes: int, device: torch.device) -> dict:
    r = evaluate(model, loader, num_classes, device)
    return {"val_top1": r["top1"], "val_loss": r["loss"]}


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def plain_evaluator(val_set: Dataset, batch_size: int, num_classes: int, *, every: int,
                    total_epochs: int) -> Evaluator:
    """``val_top1`` and ``val_loss`` of a plain network (items of ``val_set``: ``((3, T, H, W), label)``)."""
    loader = eval_loader(val_set, batch_size)

    def run(model: torch.nn.Module, epoch: int) -> dict:
        if not is_due(epoch, every, total_epochs):
            return {}
        device = _device(model)
        with _untouched_rng(device):
            return _val(model, loader, num_classes, device)

    return run


def supernet_evaluator(val_set: Dataset, batch_size: int, num_classes: int, *, every: int,
                       total_epochs: int) -> Evaluator:
    """The supernet's columns (see the module docstring)."""
    loader = eval_loader(val_set, batch_size)

    def run(model, epoch: int) -> dict:
        posteriors = {rule: model.posterior(rule) for rule in KEEP_PROB_RULES}
        row: dict = {f"entropy_{rule}": post.entropy() for rule, post in posteriors.items()}
        if not is_due(epoch, every, total_epochs):
            return row
        device = _device(model)
        done: dict = {}
        with _untouched_rng(device):
            model.set_strategy(None)
            row.update(_val(model, loader, num_classes, device))
            try:
                for rule, post in posteriors.items():
                    best = post.most_probable()
                    if best not in done:
                        model.set_strategy(best)
                        done[best] = _val(model, loader, num_classes, device)
                    row.update({f"{k}_most_probable_{rule}": v for k, v in done[best].items()})
                    row[f"most_probable_{rule}"] = best.text
            finally:
                model.set_strategy(None)
        return row

    return run


@torch.no_grad()
def test_predictions(net: torch.nn.Module, dataset, batch_size: int) -> pd.DataFrame:
    """One row a video of ``dataset`` (a split of either storage, items ``(3, T, H, W)`` or test views
    ``(V, 3, T, H, W)``): ``video_id``,
    ``actual`` and ``predicted`` class names (the confusion matrix's input)."""
    net.eval()
    device = _device(net)
    predicted = torch.cat([view_logits(net, normalize(x, device)).argmax(1).cpu()
                           for x, _ in eval_loader(dataset, batch_size)])
    names = dataset.classes["name"].astype(str).tolist()
    ids = dataset.manifest["video_id" if "video_id" in dataset.manifest else "id"]
    return pd.DataFrame({"video_id": ids.astype(str),
                         "actual": [names[i] for i in dataset.labels.tolist()],
                         "predicted": [names[i] for i in predicted.tolist()]})


def run_files(runs_dir: str | Path, sid: str) -> dict[str, Path]:
    """The files one training run leaves beside its record ``<id>.json``: its history and test predictions."""
    return {kind: Path(run_file(runs_dir, sid, kind)) for kind in ("history", "predictions")}


def copy_best_run(table: pd.DataFrame, score: str, runs_dir: str | Path, out_dir: str | Path) -> str:
    """Copy the history and test predictions of the run best on ``score`` (a validation column of ``table``) to
    ``out_dir`` (:func:`stfusion.config.layout.best_run_file`); returns its id."""
    from stfusion.io.files import write_csv

    best = str(table.sort_values(score, ascending=False, kind="stable").iloc[0]["id"])
    for kind, path in run_files(runs_dir, best).items():
        write_csv(pd.read_csv(path).assign(id=best), best_run_file(out_dir, kind))
    return best


def eval_loader(dataset: Dataset, batch_size: int, workers: int = 0) -> DataLoader:
    """Deterministic, unshuffled batches, loaded by ``workers`` processes."""
    return clip_loader(dataset, batch_size, workers=workers)


class Metrics:
    """Top-1, top-5, summed loss and per-class correct / total counts, fed logits batch by batch."""

    def __init__(self, num_classes: int):
        self.correct1 = self.correct5 = 0
        self.loss_sum, self.n = 0.0, 0
        self.per_correct = np.zeros(num_classes, np.int64)
        self.per_total = np.zeros(num_classes, np.int64)

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit1 = (top[:, 0] == y).cpu().numpy()
        self.correct1 += int(hit1.sum())
        self.correct5 += int((top == y[:, None]).any(1).sum())
        yc = y.cpu().numpy()
        np.add.at(self.per_correct, yc, hit1.astype(np.int64))
        np.add.at(self.per_total, yc, 1)
        self.n += len(yc)

    def result(self) -> dict:
        n = max(self.n, 1)
        return {"top1": self.correct1 / n, "top5": self.correct5 / n, "loss": self.loss_sum / n, "n": n,
                "per_class_correct": self.per_correct, "per_class_total": self.per_total}


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Iterable, num_classes: int, device: torch.device) -> dict:
    """Top-1, top-5, mean loss and per-class correct / total counts over ``loader`` in eval mode."""
    model.eval()
    metrics = Metrics(num_classes)
    for x, y in loader:
        metrics.update(view_logits(model, normalize(x, device)), y.to(device))
    return metrics.result()


def view_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model``'s logits ``(N, C)`` for clips ``(N, 3, T, H, W)``, or for test views ``(N, V, 3, T, H, W)``
    the log of the softmax averaged over the ``V`` views (:func:`~stfusion.data.transforms.average_views`)."""
    if x.ndim == 5:
        return model(x)
    return average_views(model(x.flatten(0, 1)), x.shape[1])
