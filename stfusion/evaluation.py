"""Validation during training: the per-epoch columns the training loops add to ``history.csv``.

Each function here builds an ``evaluate(model, epoch) -> dict`` callable for :func:`stfusion.train.fit`; the dict
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
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch.utils.data import Dataset

from .scoring import eval_loader, evaluate
from .strategies import KEEP_PROB_RULES

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
