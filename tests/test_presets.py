"""Every real-dataset preset loads, validates, builds its model and trains one step (reduced width, CPU)."""

import pytest
import torch
import torch.nn.functional as F

from stfusion.config import PRESET_DIR, load_params
from stfusion.errors import StfusionError
from stfusion.models import build_model
from stfusion.train import make_optimizer, supernet_config

from conftest import REPO

PRESETS = ["ssv1", "ssv2", "kinetics400", "ucf101", "hmdb51"]
NUM_CLASSES = {"ssv1": 174, "ssv2": 174, "kinetics400": 400, "ucf101": 101, "hmdb51": 51}


def test_every_preset_has_a_file():
    assert sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) == sorted(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_builds_and_trains_one_step(name):
    params = load_params(REPO / "params.yaml", {"preset": name})
    assert params["data"]["dataset"] == name
    assert params["model"]["backbone"] == "resnet50"
    if name.startswith("ss"):
        assert params["data"]["flip"] is False and params["data"]["sampling"] == "segment"
    params["model"]["width_multiplier"] = 0.0625
    params["supernet"]["device"] = "cpu"
    torch.manual_seed(0)
    model = build_model(params, NUM_CLASSES[name])
    d = params["data"]
    x = torch.randn(2, 3, d["frames"], d["size"] // 2, d["size"] // 2)  # half the side keeps the step cheap
    y = torch.randint(0, NUM_CLASSES[name], (2,))
    cfg = supernet_config(params, n_train=1000)
    opt = make_optimizer(model, cfg)
    model.train()
    before = [p.detach().clone() for p in model.gate_parameters()]
    loss = F.cross_entropy(model(x), y) + model.kl(1000, cfg.kl_k, cfg.kl_form)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.gate_parameters()))


def test_unknown_preset_is_refused():
    with pytest.raises(StfusionError, match="preset"):
        load_params(REPO / "params.yaml", {"preset": "ssv3"})
