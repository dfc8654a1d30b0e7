"""The DenseNet-121 and ResNet templates: structure, hard / gated modes, export, time reversal, 2D inflation.

Everything but the two full-size structure checks runs on reduced widths and tiny clips.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from conftest import settings_with
from stfusion.errors import StfusionError
from stfusion.models import build_model
from stfusion.models.densenet import DenseLayer3d, DenseNet121Template
from stfusion.models.resnet import BasicBlock3d, Bottleneck3d, ResNetTemplate
from stfusion.core.strategies import BOTH, NONE, ST, S, Strategy

NUM_CLASSES = 5
CLIP = (2, 3, 4, 32, 32)
UNITS = ("factorised", "full")


def tiny(backbone: str, unit: str = "factorised", **kw) -> nn.Module:
    if backbone == "densenet":
        kw.setdefault("block_config", (2, 2, 2, 2))
        return DenseNet121Template(NUM_CLASSES, unit=unit, width_multiplier=0.25, **kw)
    depth = int(backbone[6:])
    return ResNetTemplate(NUM_CLASSES, depth=depth, unit=unit, width_multiplier=0.25, layers=(1, 1, 1, 1), **kw)


def randomise_bn(net: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters, so that eval-mode checks mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                c = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convs: one intra-op thread is as fast and does not fight other processes for the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def uniform(net, state: int) -> Strategy:
    """``state`` at every layer; at layers without ``none`` a ``none`` request becomes S."""
    return Strategy(tuple(state if (state != NONE or a) else S for a in net.allow_none))


def clip(seed: int = 0, shape=CLIP) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------
# Full-size structure
# ---------------------------------------------------------------------------------------------------------------


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_densenet121_full_size_structure():
    torch.manual_seed(0)
    net = DenseNet121Template(174)
    assert net.n_fusion_layers == 61  # 6 + 12 + 24 + 16 dense layers + 3 transitions
    assert len(net.gate_parameters()) == 122
    assert net.allow_none == [True] * 6 + [False] + [True] * 12 + [False] + [True] * 24 + [False] + [True] * 16
    assert net.stage_of_layer == [0] * 7 + [1] * 13 + [2] * 25 + [3] * 16
    assert net.num_features == 1024
    # the paper reports 21.4M for its 3D DenseNet-121 template with 174 classes; ours: 21,404,648 (122 gate logits
    # included; without them 21,404,526).
    assert n_params(net) == pytest.approx(21_404_648, abs=20_000)
    assert all(bool((m.weight == 1).all()) for m in net.modules() if isinstance(m, nn.BatchNorm3d))


def test_resnet50_full_size_parameter_count():
    torch.manual_seed(0)
    net = ResNetTemplate(400, depth=50)
    assert net.n_fusion_layers == 16 and len(net.gate_parameters()) == 32
    assert net.stage_of_layer == [0] * 3 + [1] * 4 + [2] * 6 + [3] * 3
    assert net.allow_none == [True] * 16
    # 2D ResNet-50 (400 classes) has 24.4M parameters; the ST path (3x1x1) of every block's first 1x1 conv adds
    # three times those convs' 4.3M weights: 37,323,632 in all.
    assert n_params(net) == pytest.approx(37_323_632, abs=20_000)


def test_build_model_dispatch():
    resnet = {"backbone": "resnet18", "unit": "factorised", "width_multiplier": 0.25}
    net = build_model(settings_with({"model": resnet}), NUM_CLASSES)
    assert isinstance(net, ResNetTemplate) and net.arch["backbone"] == "resnet18" and net.n_fusion_layers == 8
    net = build_model(settings_with({"model": {"backbone": "densenet121", "unit": "factorised",
                                               "width_multiplier": 0.125}}), NUM_CLASSES)
    assert isinstance(net, DenseNet121Template) and net.n_fusion_layers == 61


# ---------------------------------------------------------------------------------------------------------------
# Modes on reduced networks
# ---------------------------------------------------------------------------------------------------------------

BACKBONES = ("densenet", "resnet18", "resnet50")


@pytest.fixture(params=[(b, u) for b in BACKBONES for u in UNITS], ids=lambda p: f"{p[0]}-{p[1]}")
def small_net(request):
    torch.manual_seed(0)
    net = tiny(*request.param)
    randomise_bn(net)
    return net


def count_path_calls(net) -> tuple[list[int], list[int]]:
    calls_s = [0] * net.n_fusion_layers
    calls_st = [0] * net.n_fusion_layers
    for i, f in enumerate(net.fusion_layers):
        conv_s = [m for m in f.s.modules() if isinstance(m, nn.Conv3d)][0]
        conv_st = [m for m in f.st.modules() if isinstance(m, nn.Conv3d)][0]
        conv_s.register_forward_hook(lambda *_, i=i: calls_s.__setitem__(i, calls_s[i] + 1))
        conv_st.register_forward_hook(lambda *_, i=i: calls_st.__setitem__(i, calls_st[i] + 1))
    return calls_s, calls_st


def test_template_and_hard_modes(small_net):
    net, x = small_net, clip()
    calls_s, calls_st = count_path_calls(net)
    L = net.n_fusion_layers

    # template, gated training mode: masks sampled, gradients reach the logits
    net.train()
    net.set_gates_active(True)
    y = net(x)
    assert y.shape == (2, NUM_CLASSES) and torch.isfinite(y).all()
    y.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad) for p in net.gate_parameters())
    assert calls_s == [1] * L and calls_st == [1] * L

    # template, evaluation without a strategy: deterministic
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))

    for state in (S, ST, BOTH, NONE):
        strategy = uniform(net, state)
        net.set_strategy(strategy)
        calls_s[:], calls_st[:] = [0] * L, [0] * L
        with torch.no_grad():
            y = net(x)
        assert y.shape == (2, NUM_CLASSES) and torch.isfinite(y).all()
        for i, s in enumerate(strategy.states):
            assert calls_s[i] == int(bool(s & S)), (state, i)
            assert calls_st[i] == int(bool(s & ST)), (state, i)
    net.set_strategy(None)
    assert net.strategy is None


def test_allow_none_per_backbone():
    dn = tiny("densenet")
    assert dn.allow_none == ([True] * 2 + [False]) * 3 + [True] * 2
    with pytest.raises(StfusionError):
        dn.set_strategy(Strategy.uniform(NONE, dn.n_fusion_layers))
    assert tiny("resnet50").allow_none == [True] * 4


def test_none_semantics():
    torch.manual_seed(0)
    layer = DenseLayer3d(6, 4, 16, "factorised", {})
    layer.paths.set_state(NONE)
    x = torch.randn(2, 6, 3, 5, 5)
    assert torch.equal(layer([x]), torch.zeros(2, 4, 3, 5, 5))

    for block in (BasicBlock3d(8, 8, 1, "factorised", {}), Bottleneck3d(8, 2, 1, "full", {})):
        block.eval()
        block.paths.set_state(NONE)
        x = torch.relu(torch.randn(2, 8, 3, 6, 6))
        assert torch.equal(block(x), x)  # identity shortcut, x >= 0
    block = Bottleneck3d(8, 4, 2, "factorised", {}).eval()
    block.paths.set_state(NONE)
    with torch.no_grad():
        assert torch.equal(block(x), torch.relu(block.downsample(x)))


def test_export_matches_hard_template(small_net):
    net, x = small_net, clip(1)
    net.eval()
    g = torch.Generator().manual_seed(3)
    states = tuple(
        int(torch.randint(0 if a else 1, 4, (1,), generator=g)) for a in net.allow_none
    )
    strategy = Strategy(states)
    net.set_strategy(strategy)
    with torch.no_grad():
        ref = net(x)
    derived = net.export(strategy)
    assert not [n for n, _ in derived.named_parameters() if "p_logit" in n]
    assert derived.arch["strategy"] == strategy.id
    n_kept = sum(bin(s).count("1") for s in states)
    n_convs = sum(1 for f in derived.fusion_layers for p in (f.s, f.st) if p is not None)
    assert n_convs == n_kept
    with torch.no_grad():
        torch.testing.assert_close(derived(x), ref, rtol=1e-5, atol=1e-6)
    assert len(net.gate_parameters()) == 2 * net.n_fusion_layers  # the template is untouched


@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("backbone", ["densenet", "densenet-symmetric-stem", "resnet18", "resnet50"])
def test_all_s_is_time_reversal_invariant(backbone, unit):
    torch.manual_seed(0)
    if backbone == "densenet":
        net = tiny("densenet", unit, stem_temporal_kernel=1)
    elif backbone == "densenet-symmetric-stem":  # the paper's 5x7x7 stem with a time-symmetric kernel
        net = tiny("densenet", unit)
        with torch.no_grad():
            w = net.features.conv0.weight
            w.copy_((w + w.flip(2)) / 2)
    else:
        net = tiny(backbone, unit)
    randomise_bn(net)
    net.eval()
    x = clip(2, (2, 3, 5, 32, 32))
    net.set_strategy(uniform(net, S))
    with torch.no_grad():
        torch.testing.assert_close(net(x.flip(2)), net(x), rtol=1e-4, atol=1e-5)
        net.set_strategy(uniform(net, ST))  # sanity: temporal convs do see the order of frames
        assert not torch.allclose(net(x.flip(2)), net(x), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Inflation from 2D weights: small 2D references written with torchvision's state-dict key names
# ---------------------------------------------------------------------------------------------------------------


class DenseLayer2d(nn.Module):
    def __init__(self, cin, growth, bn_size):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        h = self.conv1(torch.relu(self.norm1(x)))
        return torch.cat([x, self.conv2(torch.relu(self.norm2(h)))], 1)


class Transition2d(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(
            OrderedDict(norm=nn.BatchNorm2d(cin), relu=nn.ReLU(), conv=nn.Conv2d(cin, cout, 1, bias=False),
                        pool=nn.AvgPool2d(2, 2))
        )


class DenseNet2d(nn.Module):
    def __init__(self, block_config, growth, bn_size, stem, num_classes):
        super().__init__()
        f = OrderedDict(conv0=nn.Conv2d(3, stem, 7, 2, 3, bias=False), norm0=nn.BatchNorm2d(stem), relu0=nn.ReLU(),
                        pool0=nn.MaxPool2d(3, 2, 1))
        c = stem
        for bi, n in enumerate(block_config):
            f[f"denseblock{bi + 1}"] = nn.Sequential(
                OrderedDict((f"denselayer{i + 1}", DenseLayer2d(c + i * growth, growth, bn_size)) for i in range(n))
            )
            c += n * growth
            if bi != len(block_config) - 1:
                f[f"transition{bi + 1}"] = Transition2d(c, c // 2)
                c //= 2
        f["norm5"] = nn.BatchNorm2d(c)
        self.features = nn.Sequential(f)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.classifier(torch.relu(self.features(x)).mean((2, 3)))


class Basic2d(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + idt)


class Bottleneck2d(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.downsample = None
        if stride != 1 or cin != 4 * planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, 4 * planes, 1, stride, bias=False), nn.BatchNorm2d(4 * planes))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        return torch.relu(self.bn3(self.conv3(h)) + idt)


class ResNet2d(nn.Module):
    def __init__(self, block, layers, widths, stem, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c = stem
        for si, (w, n) in enumerate(zip(widths, layers)):
            blocks = []
            for bi in range(n):
                blocks.append(block(c, w, 2 if si > 0 and bi == 0 else 1))
                c = w * block.expansion
            setattr(self, f"layer{si + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


def reference_2d(backbone: str) -> nn.Module:
    torch.manual_seed(1)
    if backbone == "densenet":
        net = DenseNet2d((2, 2, 2, 2), growth=8, bn_size=4, stem=16, num_classes=NUM_CLASSES)
    else:
        block = Basic2d if backbone == "resnet18" else Bottleneck2d
        net = ResNet2d(block, (1, 1, 1, 1), (16, 32, 64, 128), stem=16, num_classes=NUM_CLASSES)
    randomise_bn(net, seed=5)
    return net.eval()


def per_frame_2d(net2d: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean over frames of the 2D logits (linear head after global pooling: equals pooling over frames too)."""
    n, c, t, h, w = x.shape
    return net2d(x.transpose(1, 2).reshape(n * t, c, h, w)).view(n, t, -1).mean(1)


@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_inflated_all_s_network_equals_2d_net_per_frame(backbone, unit, tmp_path):
    net2d = reference_2d(backbone)
    path = tmp_path / "w2d.pt"
    torch.save(net2d.state_dict(), path)
    extra = {"stem_temporal_kernel": 1} if backbone == "densenet" else {}
    net = tiny(backbone, unit, **extra).eval()
    net.inflate_from_2d(str(path), uniform(net, S))
    net.set_strategy(uniform(net, S))
    x = clip(4, (2, 3, 3, 32, 32))
    with torch.no_grad():
        ref = per_frame_2d(net2d, x)
        torch.testing.assert_close(net(x), ref, rtol=1e-4, atol=1e-4)
        # one image repeated over time: the 2D logits of that image
        still = x[:, :, :1].expand(-1, -1, 3, -1, -1).contiguous()
        torch.testing.assert_close(net(still), net2d(x[:, :, 0]), rtol=1e-4, atol=1e-4)
    assert torch.equal(net.state_dict()[next(k for k in net.state_dict() if k.endswith("weight") and
                                               ("classifier" in k or "fc" in k))],
                       net2d.state_dict()["classifier.weight" if backbone == "densenet" else "fc.weight"])


def replicate_time_padding(net: nn.Module) -> nn.Module:
    """A copy of ``net`` whose convs pad time by repeating the clip's end frames instead of zeros (space is still
    zero-padded, as in 2D): on a static clip every frame then sees the same frames, the clip's ends included."""
    import copy

    import torch.nn.functional as F

    class Padded(nn.Module):
        def __init__(self, conv: nn.Conv3d):
            super().__init__()
            self.pt, self.conv = conv.padding[0], conv
            conv.padding = (0, *conv.padding[1:])

        def forward(self, x):
            return self.conv(F.pad(x, (0, 0, 0, 0, self.pt, self.pt), mode="replicate"))

    net = copy.deepcopy(net)
    for name, m in list(net.named_modules()):
        if isinstance(m, nn.Conv3d) and m.padding[0] > 0:
            parent, _, leaf = name.rpartition(".")
            setattr(net.get_submodule(parent), leaf, Padded(m))
    return net


@pytest.mark.parametrize("state", [S, ST, BOTH])
@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_inflation_is_exact_for_every_uniform_strategy(backbone, unit, state):
    """The I3D check: inflated for a uniform strategy, on a static clip (temporal padding replicating the ends),
    the 3D network's logits are the 2D network's on that image; S + ST included (each path carries half)."""
    net2d = reference_2d(backbone)
    net = tiny(backbone, unit).eval()
    strategy = uniform(net, state)
    net.inflate_from_2d(net2d.state_dict(), strategy)
    net.set_strategy(strategy)
    img = clip(6, (1, 3, 1, 32, 32))
    with torch.no_grad():
        out = replicate_time_padding(net)(img.expand(-1, -1, 3, -1, -1))
        torch.testing.assert_close(out, net2d(img[:, :, 0]), rtol=1e-4, atol=1e-5)


def test_densenet_inflation_rules():
    net2d = reference_2d("densenet")
    sd = net2d.state_dict()
    net = tiny("densenet", pretrained_2d=sd)  # a dict is accepted directly
    own = net.state_dict()
    # stem: repeated 5x over time and divided by 5
    w = own["features.conv0.weight"]
    assert w.shape[2] == 5
    torch.testing.assert_close(w, sd["features.conv0.weight"].unsqueeze(2).expand_as(w) / 5)
    # dense layer: S = the 1x1 kernel, ST = repeated 3x / 3 (sums to it), both halved in the template (S + ST
    # computes the 2D layer), both BNs copy norm1
    p, q = "features.denseblock2.denselayer2", "features.denseblock2.denselayer2"
    assert torch.equal(own[f"{p}.paths.s.2.weight"][:, :, 0], sd[f"{q}.conv1.weight"] / 2)
    st = own[f"{p}.paths.st.2.weight"]
    assert st.shape[2:] == (3, 1, 1)
    torch.testing.assert_close(st.sum(2), sd[f"{q}.conv1.weight"] / 2)
    torch.testing.assert_close(st[:, :, 0], st[:, :, 2])
    for path in ("s", "st"):
        for name in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(own[f"{p}.paths.{path}.0.{name}"], sd[f"{q}.norm1.{name}"])
    assert torch.equal(own[f"{p}.conv2.weight"][:, :, 0], sd[f"{q}.conv2.weight"])
    # transition
    torch.testing.assert_close(own["features.transition1.paths.st.2.weight"].sum(2),
                               sd["features.transition1.conv.weight"] / 2)
    # stem output of a still clip equals the 2D conv output where the 5-frame window lies inside the clip
    img = clip(5, (1, 3, 1, 16, 16))
    still = img.expand(-1, -1, 5, -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(net.features.conv0(still)[:, :, 2], net2d.features.conv0(img[:, :, 0]),
                                   rtol=1e-4, atol=1e-5)


def test_resnet_inflation_rules():
    sd50 = reference_2d("resnet50").state_dict()
    own = tiny("resnet50", pretrained_2d=sd50).state_dict()
    assert own["conv1.weight"].shape[2:] == (1, 7, 7)
    assert torch.equal(own["conv1.weight"][:, :, 0], sd50["conv1.weight"])
    assert torch.equal(own["layer2.0.paths.s.0.weight"][:, :, 0], sd50["layer2.0.conv1.weight"])
    torch.testing.assert_close(own["layer2.0.paths.st.0.weight"].sum(2), sd50["layer2.0.conv1.weight"])
    assert torch.equal(own["layer2.0.paths.st.1.running_var"], sd50["layer2.0.bn1.running_var"])
    assert torch.equal(own["layer2.0.paths.st.1.weight"], sd50["layer2.0.bn1.weight"] / 2)  # S + ST shares the 2D
    assert torch.equal(own["layer2.0.paths.s.1.bias"], sd50["layer2.0.bn1.bias"] / 2)  # response half and half
    assert torch.equal(own["layer2.0.conv2.weight"][:, :, 0], sd50["layer2.0.conv2.weight"])

    own = tiny("resnet50", "full", pretrained_2d=sd50).state_dict()
    st = own["layer3.0.paths.st.0.weight"]
    assert st.shape[2:] == (3, 3, 3)
    torch.testing.assert_close(st.sum(2), sd50["layer3.0.conv2.weight"])

    sd18 = reference_2d("resnet18").state_dict()
    net = tiny("resnet18", pretrained_2d=sd18)
    own = net.state_dict()
    assert torch.equal(own["layer1.0.conv1.weight"][:, :, 0], sd18["layer1.0.conv1.weight"])
    # the gated paths of a factorised BasicBlock have no 2D counterpart: identity init, fresh BN with gamma 1,
    # halved in the template (S + ST is the identity)
    for f in net.fusion_layers:
        assert bool((f.s[1].weight == 0.5).all()) and bool((f.st[1].weight == 0.5).all())


def test_classifier_loaded_only_when_num_classes_match():
    sd = reference_2d("resnet18").state_dict()
    net = ResNetTemplate(NUM_CLASSES + 1, depth=18, width_multiplier=0.25, layers=(1, 1, 1, 1))
    fc_before = net.fc.weight.detach().clone()
    assert net.inflate_from_2d(sd) is False
    assert torch.equal(net.fc.weight, fc_before)
    assert torch.equal(net.layer4[0].conv2.weight[:, :, 0], sd["layer4.0.conv2.weight"])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_inflation_errors(backbone, tmp_path):
    sd = reference_2d(backbone).state_dict()
    key = "features.denseblock1.denselayer1.conv1.weight" if backbone == "densenet" else "layer1.0.conv1.weight"
    bad = dict(sd)
    bad[key] = torch.zeros(*bad[key].shape[:-1], bad[key].shape[-1] + 2)
    with pytest.raises(StfusionError, match="shape"):
        tiny(backbone, pretrained_2d=bad)
    missing = {k: v for k, v in sd.items() if k != key}
    with pytest.raises(StfusionError, match="missing"):
        tiny(backbone, pretrained_2d=missing)
    with pytest.raises(StfusionError, match="no such file"):
        tiny(backbone, pretrained_2d=str(tmp_path / "absent.pt"))
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(StfusionError) as err:
        tiny(backbone, pretrained_2d=str(tmp_path / "junk.pt"))
    assert "\n" not in str(err.value)
    # a different width
    with pytest.raises(StfusionError, match="shape"):
        if backbone == "densenet":
            DenseNet121Template(NUM_CLASSES, width_multiplier=0.5, block_config=(2, 2, 2, 2), pretrained_2d=sd)
        else:
            ResNetTemplate(NUM_CLASSES, depth=int(backbone[6:]), width_multiplier=0.5, layers=(1, 1, 1, 1),
                           pretrained_2d=sd)


def test_resnet_inflation_refuses_a_deeper_2d_net():
    sd = ResNet2d(Basic2d, (2, 1, 1, 1), (16, 32, 64, 128), stem=16, num_classes=NUM_CLASSES).state_dict()
    with pytest.raises(StfusionError, match="more than 1 blocks in layer1"):
        tiny("resnet18", pretrained_2d=sd)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_reference_variant(backbone):
    """The paper's reference code's layout (variant="reference"): DenseNet pool0 3x3x3 and a 123rd gate on the
    classifier input; ResNet stem 5x7x7 (time stride 2 on request), 3x3x3 max-pool, one BN after the gated sum,
    average-pool shortcut. It trains, exports without gates, and takes 2D weights."""
    extra = {} if backbone == "densenet" else {"temporal_stride": True}
    net = tiny(backbone, "full", variant="reference", **extra)
    n_gates = 2 * net.n_fusion_layers
    if backbone == "densenet":
        assert net.features.pool0.kernel_size == (3, 3, 3) and len(net.gate_parameters()) == n_gates + 1
    else:
        assert net.conv1.kernel_size == (5, 7, 7) and net.conv1.stride == (2, 2, 2)
        assert net.maxpool.kernel_size == (3, 3, 3) and len(net.gate_parameters()) == n_gates
        blk = net.layer2[0]
        assert isinstance(blk.paths.s, nn.Conv3d) and isinstance(blk.paths_bn, nn.BatchNorm3d)
        assert isinstance(blk.downsample[0], nn.AvgPool3d)
    net.train()
    x = clip(7, (2, 3, 4, 32, 32))
    loss = net(x).square().mean() + net.kl(100, 3.0)
    loss.backward()
    assert all(p.grad is not None for p in net.gate_parameters())
    plain = net.export(uniform(net, BOTH))
    assert not [k for k in plain.state_dict() if k.endswith("p_logit")]
    net.inflate_from_2d(reference_2d(backbone).state_dict())
    net.eval().set_strategy(uniform(net, BOTH))
    with torch.no_grad():
        assert plain.eval()(x).shape == net(x).shape == (2, NUM_CLASSES)


def test_densenet121_reference_has_the_papers_123_gates():
    with torch.device("meta"):
        assert len(DenseNet121Template(174, variant="reference").gate_parameters()) == 123


@pytest.mark.parametrize("unit", UNITS)
def test_densenet_export_drops_the_channels_of_none_layers(unit):
    """An exported `none` layer adds no channels: later convs read fewer inputs (one channel of ones stands for the
    constant the dead channels became after BN -> ReLU), the classifier's bias absorbs the rest; same logits."""
    from stfusion.core.costs import network_costs
    from stfusion.models.base import FusionNetwork

    torch.manual_seed(0)
    net = tiny("densenet", unit).eval()
    randomise_bn(net, seed=3)
    # none in every block, the last block's first layer included (its channels reach the classifier)
    strategy = Strategy(tuple(NONE if a and i % 3 != 1 else (BOTH if i % 2 else ST)
                              for i, a in enumerate(net.allow_none)))
    unpruned = FusionNetwork.export(net, strategy)
    pruned = net.export(strategy)  # in the template's mode (eval), new modules included
    x = clip(1, (2, 3, 4, 32, 32))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), unpruned(x), rtol=1e-5, atol=1e-5)
    before, after = network_costs(unpruned, x.shape[1:]), network_costs(pruned, x.shape[1:])
    assert after["macs"] < before["macs"] and after["params"] < before["params"]
    full = uniform(net, BOTH)  # nothing to drop: the same network
    assert network_costs(net.export(full), x.shape[1:]) == network_costs(FusionNetwork.export(net, full), x.shape[1:])
