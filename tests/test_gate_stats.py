"""What the KL term prices (gate.kl_price), the per-path statistics logged while training, the KL warm-in
and the gate learning rate."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

from stfusion.core.fusion import paths_gamma_sq, paths_price, paths_reference_sq, paths_weight_sq
from stfusion.core.gate_stats import COLUMNS, gate_rows
from stfusion.config.settings import Settings
from stfusion.models import build_model
from stfusion.engine.train import TrainConfig, fit, kl_factor, make_optimizer

from conftest import motion_clips


def _net(tiny_params):
    torch.manual_seed(0)
    return build_model(Settings.for_stage(tiny_params), 2)


def test_prices_of_a_path(tiny_params):
    net = _net(tiny_params)
    f = net.fusion_layers[0]
    paths = [f.s, f.st]
    conv_s = next(m for m in f.s.modules() if isinstance(m, nn.Conv3d))
    bn_s = next(m for m in f.s.modules() if isinstance(m, nn.BatchNorm3d))
    with torch.no_grad():
        bn_s.weight.mul_(0.5)
    assert paths_weight_sq(paths)[0].item() == pytest.approx(conv_s.weight.pow(2).sum().item(), rel=1e-6)
    assert paths_gamma_sq(paths)[0].item() == pytest.approx(0.25 * conv_s.out_channels, rel=1e-6)
    assert paths_reference_sq(paths).tolist() == pytest.approx([conv_s.out_channels / 3.0] * 2)
    with pytest.raises(ValueError, match="kl price"):
        paths_price(paths, "flops")


def test_weight_price_can_be_dodged_by_scaling_and_the_normalized_one_cannot(tiny_params):
    """Scaling a gated conv's weights leaves the output unchanged (BN follows) but lowers the paper's price;
    the normalized price does not move, and its only gradient goes to the gate logits."""
    net = _net(tiny_params).train()
    net.set_gates_active(False)  # both paths on, no masks: BatchNorm normalises with the batch statistics
    x = torch.randn(4, 3, 4, 16, 16)
    before = net(x)
    kl_weight = net.kl(100, 5.0, "linear", "weight").item()
    kl_norm = net.kl(100, 5.0, "linear", "normalized").item()
    with torch.no_grad():
        for f in net.fusion_layers:
            for path in (f.s, f.st):
                for m in path.modules():
                    if isinstance(m, nn.Conv3d):
                        m.weight.mul_(0.3)
    torch.testing.assert_close(net(x), before, rtol=1e-2, atol=5e-3)  # up to BatchNorm's eps
    assert net.kl(100, 5.0, "linear", "weight").item() < 0.1 * kl_weight
    assert net.kl(100, 5.0, "linear", "normalized").item() == pytest.approx(kl_norm, rel=1e-6)
    net.zero_grad()
    net.kl(100, 5.0, "linear", "normalized").backward()
    assert all(g.grad is not None and g.grad.abs() > 0 for g in net.gate_parameters())
    assert all(p.grad is None for p in net.weight_parameters())


def test_network_kl_with_each_price_is_the_per_gate_formula(tiny_params):
    net = _net(tiny_params)
    n, k = 200, 3.0
    for price in ("weight", "gamma", "normalized"):
        expected = 0.0
        for f in net.fusion_layers:
            priced = paths_price([f.s, f.st], price)
            for gate, w in zip((f.gate_s, f.gate_st), priced):
                p = float(gate.p)
                expected += k / n * (1 - p) * float(w) + (p * math.log(p) + (1 - p) * math.log(1 - p)) / n
        assert net.kl(n, k, "linear", price).item() == pytest.approx(expected, rel=1e-5), price
        assert sum(f.kl(n, k, "linear", price) for f in net.fusion_layers).item() == pytest.approx(expected, rel=1e-5)


def test_gate_rows_hold_every_path(tiny_params):
    net = _net(tiny_params)
    rows = gate_rows(net, 3, "normalized")
    assert len(rows) == 2 * net.n_fusion_layers and set(rows[0]) == set(COLUMNS)
    assert [r["path"] for r in rows[:2]] == ["S", "ST"]
    f = net.fusion_layers[1]
    assert rows[3]["p"] == pytest.approx(float(f.gate_st.p))
    assert rows[3]["weight_sq"] == pytest.approx(float(paths_weight_sq([f.st])[0]), rel=1e-6)
    assert rows[3]["price"] == pytest.approx(float(paths_reference_sq([f.st])[0]))


def test_kl_warmin_factor():
    cfg = TrainConfig(epochs=6, warmup_epochs=2, batch_size=4, lr=0.1, kl_k=1.0, kl_warmin_epochs=2)
    assert [kl_factor(cfg, e) for e in range(2, 8)] == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1])
    assert kl_factor(TrainConfig(epochs=2, batch_size=4, lr=0.1, kl_k=1.0), 0) == 1.0


def test_gate_logits_get_their_own_learning_rate(tiny_params):
    net = _net(tiny_params)
    cfg = TrainConfig(epochs=1, batch_size=4, lr=0.02, kl_k=1.0, gate_lr_scale=10.0, weight_decay=1e-4)
    opt = make_optimizer(net, cfg)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.02, 0.2])
    assert opt.param_groups[1]["weight_decay"] == 0.0
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in net.gate_parameters()}


def test_training_logs_gate_stats_and_the_warmin_lowers_the_first_kl(tmp_path, tiny_params):
    data = motion_clips(32, seed=1)

    def run(out, warmin):
        torch.manual_seed(0)
        model = build_model(Settings.for_stage(tiny_params), 2)
        cfg = TrainConfig(epochs=2, warmup_epochs=1, batch_size=16, lr=0.05, kl_k=5.0, kl_price="normalized",
                          kl_warmin_epochs=warmin)
        return fit(model, data, cfg, out, progress=False), model

    hist, model = run(tmp_path / "a", 1)
    hist0, _ = run(tmp_path / "b", 0)
    stats = pd.read_csv(tmp_path / "a" / "gate_stats.csv")
    assert list(stats.columns) == list(COLUMNS)
    assert sorted(stats["epoch"].unique()) == [1, 2, 3] and len(stats) == 3 * 2 * model.n_fusion_layers
    last = stats[stats["epoch"] == 3]
    assert last["p"].to_numpy() == pytest.approx(model.drop_rates().reshape(-1), rel=1e-6)
    gated = hist[hist["phase"] == "gated"]["kl"].to_numpy()
    gated0 = hist0[hist0["phase"] == "gated"]["kl"].to_numpy()
    assert gated[0] == pytest.approx(gated0[0] / 2, rel=0.05)  # first gated epoch: factor 1/2
