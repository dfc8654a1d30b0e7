"""The plain template: hard gates, exported networks, time-reversal invariance of all-S."""

import pytest
import torch

from stfusion.config.loading import load_params
from stfusion.errors import StfusionError
from stfusion.config.settings import Settings
from stfusion.models import build_model
from stfusion.core.strategies import BOTH, NONE, S, ST, Strategy, families

from conftest import REPO


@pytest.fixture(params=["full", "factorised"])
def model(request, tiny_params):
    torch.manual_seed(0)
    tiny_params["model"]["unit"] = request.param
    return build_model(Settings.for_stage(tiny_params), 5)


def test_default_params_build(tiny_params):
    params = load_params(REPO / "params.yaml")
    net = build_model(Settings.for_stage(params), 14)
    assert net.n_fusion_layers == sum(params["model"]["layers_per_stage"])
    assert net.stage_of_layer == [0, 0, 1, 1, 2, 2]
    out = net(torch.randn(2, 3, params["data"]["frames"], params["data"]["size"], params["data"]["size"]))
    assert out.shape == (2, 14)


def test_unit_kernel_shapes(tiny_params):
    for unit, ks, kst in [("full", (1, 3, 3), (3, 3, 3)), ("factorised", (1, 1, 1), (3, 1, 1))]:
        tiny_params["model"]["unit"] = unit
        f = build_model(Settings.for_stage(tiny_params), 2).fusion_layers[0]
        assert f.s[0].kernel_size == ks and f.st[0].kernel_size == kst
        assert f.s[0].stride == (1, 1, 1) and f.st[0].stride == (1, 1, 1)


@pytest.mark.parametrize("states", [(S, ST, BOTH), (ST, ST, ST), (S, S, S), (BOTH, S, ST)])
def test_hard_gates_equal_gated_forward_with_fixed_gates(model, states):
    """Hard mode equals the template forward with masks fixed to 0/1."""
    model.eval()
    x = torch.randn(2, 3, 4, 16, 16)
    strategy = Strategy(states)
    model.set_strategy(strategy)
    hard = model(x)
    model.set_strategy(None)
    originals = {}
    for f, s in zip(model.fusion_layers, states):
        originals[f] = (f.s.forward, f.st.forward)
        if not s & S:
            f.s.forward = (lambda fwd: lambda inp: fwd(inp) * 0.0)(f.s.forward)
        if not s & ST:
            f.st.forward = (lambda fwd: lambda inp: fwd(inp) * 0.0)(f.st.forward)
    masked = model(x)
    for f, (fs, fst) in originals.items():
        f.s.forward, f.st.forward = fs, fst
    torch.testing.assert_close(hard, masked, rtol=1e-5, atol=1e-6)


def test_dropped_path_conv_is_never_called(model):
    calls = {"s": 0, "st": 0}
    model.set_strategy(Strategy((ST, S, ST)))
    layers = model.fusion_layers
    layers[0].s[0].register_forward_hook(lambda *a: calls.__setitem__("s", calls["s"] + 1))
    layers[1].st[0].register_forward_hook(lambda *a: calls.__setitem__("st", calls["st"] + 1))
    model.train()
    model(torch.randn(2, 3, 4, 16, 16))
    model.eval()
    model(torch.randn(2, 3, 4, 16, 16))
    assert calls == {"s": 0, "st": 0}


def test_none_is_refused_without_bypass(model):
    with pytest.raises(StfusionError, match="none"):
        model.set_strategy(Strategy((NONE, S, S)))
    with pytest.raises(StfusionError, match="2 layers"):
        model.set_strategy(Strategy((S, S)))


def test_export_keeps_weights_and_drops_gates(model):
    model.eval()
    strategy = Strategy((S, BOTH, ST))
    x = torch.randn(3, 3, 4, 16, 16)
    model.set_strategy(strategy)
    expected = model(x)
    plain = model.export(strategy).eval()
    assert not [n for n, _ in plain.named_parameters() if "p_logit" in n]
    assert plain.fusion_layers[0].st is None and plain.fusion_layers[2].s is None
    torch.testing.assert_close(plain(x), expected)
    n_template = sum(p.numel() for p in model.parameters())
    n_plain = sum(p.numel() for p in plain.parameters())
    assert n_plain < n_template
    with pytest.raises(ValueError):
        plain.fusion_layers[0].set_state(ST)


def test_all_s_network_is_invariant_to_time_reversal(model):
    """With a spatial-only stem, S units never mix frames: a clip and its reversal give the same output."""
    model.eval()
    model.set_strategy(families(model.n_fusion_layers)["all-S"])
    x = torch.randn(2, 3, 6, 16, 16)
    torch.testing.assert_close(model(x), model(torch.flip(x, dims=[2])), rtol=1e-5, atol=1e-6)
    model.set_strategy(families(model.n_fusion_layers)["all-ST"])
    assert not torch.allclose(model(x), model(torch.flip(x, dims=[2])), atol=1e-4)


def test_template_eval_without_strategy_is_deterministic(model):
    model.eval()
    x = torch.randn(2, 3, 4, 16, 16)
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x))  # stochastic masks in training
