"""Per-path statistics of a gated network, one row a gated path: what the gates and the KL term see.

For every fusion layer and path (S, ST): the drop rate ``p``, ``||W||^2`` of the path's convs (what the paper's
KL term prices), ``||gamma||^2`` of the path's BatchNorm scales and the price the configured KL form charges.
Logged once per epoch during the supernet's training (``gate_stats.csv`` beside ``drop_rates.csv``), they show
what governs the gates: with the paper's price, ``||W||^2`` falls while ``p`` stays put (the price is paid by
shrinking weights behind BatchNorm, not by dropping paths).
"""

from __future__ import annotations

import torch

from stfusion.core.fusion import paths_gamma_sq, paths_price, paths_weight_sq

COLUMNS = ("epoch", "layer", "stage", "path", "p", "weight_sq", "gamma_sq", "price")


@torch.no_grad()
def gate_rows(model, epoch: int, price: str = "weight") -> list[dict]:
    """Rows ``epoch, layer, stage, path (S|ST), p, weight_sq, gamma_sq, price`` for every gated path of
    ``model`` (a :class:`~stfusion.models.base.FusionNetwork`), in layer order, S before ST."""
    layers = model.fusion_layers
    paths = [p for f in layers for p in (f.s, f.st)]
    weight = paths_weight_sq(paths).double().cpu().tolist()
    gamma = paths_gamma_sq(paths).double().cpu().tolist()
    priced = paths_price(paths, price).double().cpu().tolist()
    rows = []
    for li, (f, stage) in enumerate(zip(layers, model.stage_of_layer)):
        for j, (name, gate) in enumerate((("S", f.gate_s), ("ST", f.gate_st))):
            g = 2 * li + j
            rows.append({"epoch": epoch, "layer": li, "stage": stage, "path": name, "p": float(gate.p),
                         "weight_sq": weight[g], "gamma_sq": gamma[g], "price": priced[g]})
    return rows
