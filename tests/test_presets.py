"""Every real-dataset preset loads, validates, builds its model and trains one step (reduced width, CPU)."""

import pytest
import torch
import torch.nn.functional as F

from stfusion.config.loading import PRESET_DIR, load_params
from stfusion.data.transforms import view_from_params
from stfusion.errors import StfusionError
from stfusion.config.settings import Settings
from stfusion.models import build_model
from stfusion.engine.train import make_optimizer, supernet_config

from conftest import REPO

PRESETS = ["ssv1", "ssv2", "kinetics400", "ucf101", "hmdb51", "ssv1_densenet121", "kinetics400_densenet121",
           "ucf101_r3d18", "hmdb51_r3d18"]
NUM_CLASSES = {"ssv1": 174, "ssv2": 174, "kinetics400": 400, "ucf101": 101, "hmdb51": 51}


def test_every_preset_has_a_file():
    assert sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) == sorted(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_builds_and_trains_one_step(name):
    params = load_params(REPO / "params.yaml", {"preset": name})
    dataset, _, template = name.partition("_")
    assert params["data"]["dataset"] == dataset
    assert params["model"]["backbone"] == (template or "resnet50")
    if name.startswith("ss"):
        assert params["data"]["flip"] is False and params["data"]["sampling"] == "segment"
    params["model"]["width_multiplier"] = 0.0625
    params["compute"]["device"] = "cpu"
    settings = Settings.from_params(params)
    torch.manual_seed(0)
    model = build_model(settings, NUM_CLASSES[dataset])
    d = params["data"]
    x = torch.randn(2, 3, d["frames"], d["size"] // 2, d["size"] // 2)  # half the side keeps the step cheap
    y = torch.randint(0, NUM_CLASSES[dataset], (2,))
    cfg = supernet_config(settings, n_train=1000)
    opt = make_optimizer(model, cfg)
    model.train()
    before = [p.detach().clone() for p in model.gate_parameters()]
    loss = F.cross_entropy(model(x), y) + model.kl(1000, cfg.kl_k, cfg.kl_form)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.gate_parameters()))


@pytest.mark.parametrize("name", PRESETS)
def test_preset_carries_the_fields_protocol(name):
    """docs/method.md §8: random crop of a jittered short side (fixed 256 on Something-Something, no flip there),
    evaluation on the centre of the evaluation short side, Kinetics tested with 2 clips."""
    d = load_params(REPO / "params.yaml", {"preset": name})["data"]
    lo, hi = d["train_short_side"]
    assert d["crop"] == d["size"] and d["crop"] < lo <= hi and d["eval_crop"] <= d["eval_short_side"]
    if name.startswith("ss"):
        assert (lo, hi, d["crop"], d["eval_short_side"], d["eval_crop"]) == (256, 256, 224, 256, 256)
    elif name.startswith("kinetics"):
        assert (lo, hi, d["crop"], d["eval_crop"], d["flip"]) == (256, 320, 224, 256, True)
    else:
        assert d["flip"] is True and d["crop"] == 112 and d["eval_short_side"] == 128
    assert d["test_clips"] == (2 if name.startswith("kinetics") else 1) and d["test_crops"] == 1
    # prepared once at the smallest training short side; the big sets never go through the decoded cache
    assert d["short_side"] == lo and d["storage"] == ("auto" if d["crop"] == 112 else "videos")
    data = Settings.for_stage({"data": d}).data
    views = [view_from_params(data, mode) for mode in ("train", "eval", "test")]
    assert [v.n_views for v in views] == [1, 1, d["test_clips"]]


@pytest.mark.parametrize("name, k, frames, lr, epochs", [("ssv1_densenet121", 250.0, 16, 0.005, (50, 90, [40, 60, 80])),
                                                          ("kinetics400_densenet121", 10.0, 16, 0.01, (0, 110, [40, 80]))])
def test_densenet_presets_follow_the_paper(name, k, frames, lr, epochs):
    """The paper's own template and settings (docs/method.md §3, §4): DenseNet-121, factorised units, k, 16 frames,
    warm-up, gated epochs and the epochs of the x0.1 steps."""
    p = load_params(REPO / "params.yaml", {"preset": name})
    s = p["supernet"]
    assert p["model"]["backbone"] == "densenet121" and p["model"]["unit"] == "factorised"
    assert p["gate"]["kl_k"] == k and p["data"]["frames"] == frames and s["lr"] == lr
    assert p["solver"]["schedule"] == "step"
    warmup, gated, steps = epochs
    assert (s["warmup_epochs"], s["epochs"]) == (warmup, gated)
    assert [round(m * gated) for m in p["solver"]["milestones"]] == steps
    assert s["batch_size"] == (64 if name.startswith("kinetics") else 32)


def test_unknown_preset_is_refused():
    with pytest.raises(StfusionError, match="preset"):
        load_params(REPO / "params.yaml", {"preset": "ssv3"})
