"""The video ResNet-18 template (model.backbone r3d18): torchvision's r3d_18 / mc3_18 / r2plus1d_18 as strategies,
counted to the parameter and the MAC, loaded from torchvision-named state dicts and exported back to them."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from stfusion.core.costs import strategy_costs
from stfusion.core.strategies import Strategy, literature_families
from stfusion.errors import StfusionError
from stfusion.models.video_resnet import VideoResNetTemplate, midplanes
from stfusion.models.video_weights import load_video_weights, torchvision_key

from conftest import settings_with

WM = 1 / 16  # widths 4, 8, 16, 32; the (2+1)D stem's 45 -> 3
NUM_CLASSES = 5
# torchvision's networks: unit, temporal_stride, the conv of each stage (stem, layer1-4), the literature name
TORCHVISION = {
    "r3d_18": ("full", True, ("3d",) * 5, "R3D"),
    "mc3_18": ("full", False, ("3d", "3d", "2d", "2d", "2d"), "MC3"),
    "r2plus1d_18": ("factorised", True, ("2+1d",) * 5, "R(2+1)D"),
}


# ---------------------------------------------------------------- torchvision's layout and key names, written out
def _ref_conv(cin: int, cout: int, mid: int, s: int, kind: str) -> nn.Module:
    if kind == "3d":
        return nn.Conv3d(cin, cout, 3, stride=s, padding=1, bias=False)
    if kind == "2d":
        return nn.Conv3d(cin, cout, (1, 3, 3), stride=(1, s, s), padding=(0, 1, 1), bias=False)
    return nn.Sequential(nn.Conv3d(cin, mid, (1, 3, 3), stride=(1, s, s), padding=(0, 1, 1), bias=False),
                         nn.BatchNorm3d(mid), nn.ReLU(inplace=True),
                         nn.Conv3d(mid, cout, (3, 1, 1), stride=(s, 1, 1), padding=(1, 0, 0), bias=False))


class _RefBlock(nn.Module):
    def __init__(self, cin: int, planes: int, s: int, kind: str):
        super().__init__()
        mid = midplanes(cin, planes)
        self.conv1 = nn.Sequential(_ref_conv(cin, planes, mid, s, kind), nn.BatchNorm3d(planes), nn.ReLU())
        self.conv2 = nn.Sequential(_ref_conv(planes, planes, mid, 1, kind), nn.BatchNorm3d(planes))
        self.downsample = None
        if s != 1 or cin != planes:
            ds = (1, s, s) if kind == "2d" else (s, s, s)
            self.downsample = nn.Sequential(nn.Conv3d(cin, planes, 1, stride=ds, bias=False), nn.BatchNorm3d(planes))

    def forward(self, x):
        res = x if self.downsample is None else self.downsample(x)
        return torch.relu(self.conv2(self.conv1(x)) + res)


class _RefVideoResNet(nn.Module):
    def __init__(self, kinds, widths=(4, 8, 16, 32), stem_mid=3, num_classes=NUM_CLASSES):
        super().__init__()
        if kinds[0] == "3d":
            self.stem = nn.Sequential(nn.Conv3d(3, widths[0], (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False),
                                      nn.BatchNorm3d(widths[0]), nn.ReLU())
        else:
            self.stem = nn.Sequential(nn.Conv3d(3, stem_mid, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
                                      nn.BatchNorm3d(stem_mid), nn.ReLU(),
                                      nn.Conv3d(stem_mid, widths[0], (3, 1, 1), 1, (1, 0, 0), bias=False),
                                      nn.BatchNorm3d(widths[0]), nn.ReLU())
        c = widths[0]
        for i, (w, kind) in enumerate(zip(widths, kinds[1:])):
            s = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(_RefBlock(c, w, s, kind), _RefBlock(w, w, 1, kind)))
            c = w
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(self.avgpool(x).flatten(1))


def _reference(name: str, seed: int = 0) -> nn.Module:
    """A tiny torchvision-layout network with random weights and BN statistics, in eval mode."""
    torch.manual_seed(seed)
    ref = _RefVideoResNet(TORCHVISION[name][2])
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm3d):
            for t in (m.weight, m.bias, m.running_mean):
                nn.init.normal_(t.data, 0, 0.3)
            m.running_var.data.uniform_(0.5, 2.0)
    return ref.eval()


def _template(name: str, **kw) -> VideoResNetTemplate:
    unit, ts, _, _ = TORCHVISION[name]
    return VideoResNetTemplate(NUM_CLASSES, unit=unit, temporal_stride=ts, width_multiplier=WM, **kw)


# ---------------------------------------------------------------- counts at full size (on the meta device)
@pytest.mark.parametrize("name, macs, params", [
    ("r3d_18", 40_696_553_472, 33_371_472),
    ("mc3_18", 43_342_635_008, 11_695_440),
    ("r2plus1d_18", 40_519_080_960, 31_505_325),
])
def test_literature_strategy_costs_equal_torchvision(name, macs, params):
    """torchvision's published sizes: r3d_18 33.4M / 40.7 GMACs, mc3_18 11.7M / 43.3 G, r2plus1d_18 31.5M / 40.5 G
    at 16x112x112 with 400 classes."""
    unit, ts, _, family = TORCHVISION[name]
    with torch.device("meta"):
        net = VideoResNetTemplate(400, unit=unit, temporal_stride=ts)
    [cost] = strategy_costs(net, [net.families()[family]], (3, 16, 112, 112))
    assert cost == {"macs": macs, "params": params}


def test_literature_families_follow_tran_et_al():
    net = _template("r3d_18")
    fam = net.families()
    assert net.n_fusion_layers == 17 and net.stage_of_layer == [0] + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    assert fam["MC3"].id == "t" * 5 + "s" * 12 and fam["rMC3"].id == "s" * 5 + "t" * 12
    assert fam["MC2"].id == "t" + "s" * 16 and fam["rMC5"].id == "s" * 13 + "t" * 4
    assert fam["R2D"] == fam["all-S"] and fam["R3D"] == fam["all-ST"]
    assert set(literature_families(net.stage_of_layer, three_d=False)) == {"R2D", "R(2+1)D"}
    with pytest.raises(StfusionError, match="stages 0-4"):
        literature_families([0, 1, 2])


# ---------------------------------------------------------------- torchvision weights in, the same network out
@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_weights_load_into_the_loaded_strategy_exactly(name):
    ref = _reference(name)
    net = _template(name, pretrained_3d=ref.state_dict()).eval()
    assert net.loaded_strategy == net.families()[TORCHVISION[name][3]]
    net.set_strategy(net.loaded_strategy)
    x = torch.randn(2, 3, 8, 32, 32)
    seen = {}
    for tag, model in (("ref", ref), ("net", net)):
        hooks = [getattr(model, f"layer{i}").register_forward_hook(
            lambda m, a, out, k=(tag, i): seen.__setitem__(k, out)) for i in range(1, 5)]
        with torch.no_grad():
            seen[(tag, "logits")] = model(x)
        for h in hooks:
            h.remove()
    for key in (1, 2, 3, 4, "logits"):  # the same shapes and values layer by layer
        torch.testing.assert_close(seen[("net", key)], seen[("ref", key)], rtol=1e-5, atol=1e-5)


def test_export_loads_into_torchvision_with_the_documented_mapping():
    ref = _reference("mc3_18")
    net = _template("mc3_18", pretrained_3d=ref.state_dict())
    exported = net.export(net.loaded_strategy).state_dict()
    mapped = {torchvision_key(k): v for k, v in exported.items()}
    assert mapped.keys() == ref.state_dict().keys()
    fresh = _RefVideoResNet(TORCHVISION["mc3_18"][2])
    fresh.load_state_dict(mapped)  # strict: every key, every shape
    for k, v in ref.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_the_path_without_counterpart_computes_the_same_on_a_static_clip():
    """A loaded 3x3x3 kernel summed over time is the S kernel: on a clip of equal frames, away from the clip's
    ends, the stem's S and ST paths agree."""
    net = _template("r3d_18", pretrained_3d=_reference("r3d_18").state_dict()).eval()
    clip = torch.randn(1, 3, 1, 32, 32).expand(1, 3, 5, 32, 32)
    with torch.no_grad():
        s, st = net.stem.s(clip), net.stem.st(clip)
    torch.testing.assert_close(s[:, :, 1:-1], st[:, :, 1:-1], rtol=1e-5, atol=1e-5)


def test_a_file_that_does_not_fit_is_refused_in_one_line_and_nothing_is_loaded(tmp_path):
    sd = _reference("r3d_18").state_dict()
    net = _template("mc3_18")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    bad = dict(sd)
    bad["layer3.0.conv2.0.weight"] = torch.zeros(16, 16, 3, 3)
    with pytest.raises(StfusionError, match=r"'layer3\.0\.conv2\.0\.weight' has shape \(16, 16, 3, 3\) where the "
                                            r"template's 'layer3\.0\.conv2\.st\.0\.weight' has \(16, 16, 3, 3, 3\)"):
        load_video_weights(net, bad)
    with pytest.raises(StfusionError, match=r"'layer2\.0\.downsample\.0\.weight' has shape \(8, 4, 2, 1, 1\) "
                                            r"where the template's has \(8, 4, 1, 1, 1\)"):
        load_video_weights(_template("r3d_18"), {**sd, "layer2.0.downsample.0.weight": torch.zeros(8, 4, 2, 1, 1)})
    missing = {k: v for k, v in sd.items() if k != "layer4.1.conv1.1.running_var"}
    with pytest.raises(StfusionError, match=r"'layer4\.1\.conv1\.1\.running_var' has shape absent"):
        load_video_weights(net, missing)
    with pytest.raises(StfusionError, match=r"'layer5\.0\.conv1\.0\.weight' of shape \(1,\) has no place"):
        load_video_weights(net, {**sd, "layer5.0.conv1.0.weight": torch.zeros(1)})
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} was written by a refused load"
    torch.save(sd, tmp_path / "r3d.pt")  # a file is read like the dict
    assert _template("r3d_18", pretrained_3d=str(tmp_path / "r3d.pt")).loaded_strategy == Strategy.parse("t" * 17)
    with pytest.raises(StfusionError, match="model.pretrained_3d: no such file"):
        _template("r3d_18", pretrained_3d=str(tmp_path / "absent.pt"))


def test_settings_of_other_backbones_are_refused():
    from stfusion.models import build_model

    for model, key in (({"pretrained_3d": "k400.pt"}, "pretrained_3d"), ({"temporal_stride": True}, "temporal_stride"),
                       ({"backbone": "r3d18", "variant": "reference"}, "variant")):
        with pytest.raises(StfusionError, match=f"invalid parameter model.{key}: .* is for another model.backbone"):
            settings_with({"model": model})
    net = build_model(settings_with({"model": {"backbone": "r3d18", "width_multiplier": WM}}), NUM_CLASSES)
    assert net.arch["temporal_stride"] is False and net.n_fusion_layers == 17


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed")
@pytest.mark.parametrize("name", list(TORCHVISION))
def test_exports_match_torchvision_module_by_module(name):
    """Where torchvision is installed: the exported strategy's tensors, mapped, are torchvision's names and shapes."""
    from torchvision.models import video

    unit, ts, _, family = TORCHVISION[name]
    with torch.device("meta"):
        tv = getattr(video, name)(num_classes=400)
        net = VideoResNetTemplate(400, unit=unit, temporal_stride=ts)
    exported = net.export(net.families()[family]).state_dict()
    mapped = {torchvision_key(k): tuple(v.shape) for k, v in exported.items()}
    assert mapped == {k: tuple(v.shape) for k, v in tv.state_dict().items()}


def test_sequence_composes_to_the_forward_for_prefix_scoring():
    net = _template("r2plus1d_18").eval()
    net.set_strategy(net.families()["R2D"])
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        y = x
        for module in net.sequence():
            y = module(y)
        torch.testing.assert_close(y, net(x))
    chain = [m for part in net.sequence() for m in part.modules()]
    assert all(any(f is m for m in chain) for f in net.fusion_layers)


def test_strategy_list_carries_the_literature_families(tmp_path):
    """sample_strategies lists R2D ... rMC5 as families; a strategy with two family names keeps both (also)."""
    import pandas as pd

    from stfusion.config.loading import resolve_params
    from stfusion.stages.strategies import sample_strategies

    params = resolve_params({"model": {"backbone": "r3d18", "width_multiplier": WM},
                             "scoring": {"top_k": 2, "n_samples": 2}})
    build = {"model": params["model"], "gate": params["gate"], "num_classes": NUM_CLASSES, "classes": [],
             "clip_shape": [3, 4, 32, 32]}
    net = VideoResNetTemplate(NUM_CLASSES, width_multiplier=WM, temporal_stride=False)
    torch.save({"build": build, "arch": net.arch, "model": net.state_dict()}, tmp_path / "model.pt")
    sample_strategies(params, checkpoint=tmp_path / "model.pt", out=tmp_path / "candidates.csv")
    df = pd.read_csv(tmp_path / "candidates.csv", keep_default_na=False).set_index("name")
    assert {"MC2", "MC3", "MC4", "MC5", "rMC2", "rMC3", "rMC4", "rMC5"} <= set(df.index)
    assert df.loc["all-ST", "also"] == "R3D" and df.loc["all-S", "also"] == "R2D"
    assert df.loc["MC3", "id"] == "t" * 5 + "s" * 12
