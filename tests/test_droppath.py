"""Variational DropPath: KL formula, gradients, mask statistics."""

import math

import pytest
import torch

from stfusion.core.droppath import VariationalDropPath
from stfusion.core.fusion import FusionPaths, conv_bn, conv_s, conv_st

from conftest import settings_with


def test_kl_matches_formula_linear_and_paper():
    gate = VariationalDropPath(init_p=0.3)
    w2 = torch.tensor(12.5)
    p, n, k = 0.3, 400, 50.0
    entropy = p * math.log(p) + (1 - p) * math.log(1 - p)
    expected_linear = k / n * (1 - p) * 12.5 + entropy / n
    expected_paper = k * k / (2 * n) * (1 - p) * 12.5 + entropy / n
    assert gate.kl(w2, n, k, "linear").item() == pytest.approx(expected_linear, rel=1e-6)
    assert gate.kl(w2, n, k, "paper").item() == pytest.approx(expected_paper, rel=1e-6)
    with pytest.raises(ValueError):
        gate.kl(w2, n, k, "quadratic")


def test_p_is_clamped_so_kl_stays_finite():
    gate = VariationalDropPath(init_p=0.5)
    with torch.no_grad():
        gate.p_logit.fill_(80.0)
    assert gate.p.item() == pytest.approx(1 - 1e-4)
    assert torch.isfinite(gate.kl(torch.tensor(3.0), 10, 1.0))
    with torch.no_grad():
        gate.p_logit.fill_(-80.0)
    assert gate.p.item() == pytest.approx(1e-4)
    assert torch.isfinite(gate.sample_mask(8, torch.device("cpu"), torch.float32)).all()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_low_temperature_keep_rate_matches_one_minus_p(p):
    torch.manual_seed(0)
    gate = VariationalDropPath(init_p=p, temperature=0.01)
    masks = gate.sample_mask(20000, torch.device("cpu"), torch.float32)
    assert masks.shape == (20000, 1, 1, 1, 1)
    # near-binary at t=0.01, and the keep rate is 1-p within 4 standard errors
    assert ((masks < 0.02) | (masks > 0.98)).float().mean() > 0.97
    se = math.sqrt(p * (1 - p) / 20000)
    assert abs((masks > 0.5).float().mean().item() - (1 - p)) < 4 * se


def test_masks_are_per_sample_and_rescale_option():
    torch.manual_seed(1)
    gate = VariationalDropPath(init_p=0.5, temperature=0.2)
    m = gate.sample_mask(64, torch.device("cpu"), torch.float32).flatten()
    assert m.std() > 0.2  # different samples get different masks
    torch.manual_seed(1)
    scaled = VariationalDropPath(init_p=0.5, temperature=0.2, rescale=True)
    m2 = scaled.sample_mask(64, torch.device("cpu"), torch.float32).flatten()
    assert torch.allclose(m2, m / 0.5)


def test_bad_gate_arguments():
    with pytest.raises(ValueError):
        VariationalDropPath(init_p=1.0)
    with pytest.raises(ValueError):
        VariationalDropPath(temperature=0.0)


def test_gradients_reach_every_logit_and_weight():
    torch.manual_seed(0)
    paths = FusionPaths(conv_bn(conv_s(3, 4, "full")), conv_bn(conv_st(3, 4, "full")))
    paths.train()
    x = torch.randn(6, 3, 4, 8, 8)
    loss = paths(x).pow(2).mean() + paths.kl(100, 10.0, "linear")
    loss.backward()
    for name, param in paths.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("backbone", ["plain", "densenet121", "resnet18"])
@pytest.mark.parametrize("form", ["linear", "paper"])
def test_network_kl_is_the_sum_of_every_gates_formula(backbone, form):
    """The vectorised network KL equals the per-gate formula summed, with ||W||^2 of each path's convs; its
    gradient reaches every gate logit and every gated conv weight."""
    from torch import nn

    from stfusion.models import build_model

    torch.manual_seed(0)
    unit = "full" if backbone == "plain" else "factorised"
    net = build_model(settings_with({"model": {"backbone": backbone, "unit": unit, "widths": [4, 8],
                                               "layers_per_stage": [1, 1], "stem_width": 4,
                                               "width_multiplier": 0.125}}), 3)
    for i, f in enumerate(net.fusion_layers):  # distinct drop rates per gate
        f.gate_s.p_logit.data.fill_(-2.0 - 0.01 * i)
        f.gate_st.p_logit.data.fill_(-1.0 - 0.01 * i)
    n, k = 500, 7.0
    expected = 0.0
    for f in net.fusion_layers:
        for gate, path in ((f.gate_s, f.s), (f.gate_st, f.st)):
            w2 = sum(float(m.weight.detach().double().pow(2).sum()) for m in path.modules() if isinstance(m, nn.Conv3d))
            p = float(gate.p.detach())
            coef = k / n if form == "linear" else k * k / (2 * n)
            expected += coef * (1 - p) * w2 + (p * math.log(p) + (1 - p) * math.log(1 - p)) / n
    got = net.kl(n, k, form)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    got.backward()
    for f in net.fusion_layers:
        for gate, path in ((f.gate_s, f.s), (f.gate_st, f.st)):
            assert gate.p_logit.grad is not None and gate.p_logit.grad.abs() > 0
            convs = [m for m in path.modules() if isinstance(m, nn.Conv3d)]
            assert convs and all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in convs)


def test_paths_weight_sq_adds_up_every_conv_of_a_path():
    from torch import nn

    from stfusion.core.fusion import paths_weight_sq

    torch.manual_seed(0)
    one = conv_s(3, 4, "full")
    two = nn.Sequential(conv_st(3, 4, "full"), nn.BatchNorm3d(4), conv_s(4, 4, "factorised"))
    expected = [one.weight.pow(2).sum(), sum(m.weight.pow(2).sum() for m in two if isinstance(m, nn.Conv3d))]
    torch.testing.assert_close(paths_weight_sq([one, two]), torch.stack(expected))
    torch.testing.assert_close(paths_weight_sq([one]), expected[0].reshape(1))
