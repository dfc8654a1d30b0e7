"""Prefix-shared scoring equals the naive one-by-one scorer (scores, table, ranking), does less work when
strategies share prefixes, and falls back to the naive scorer for networks without a module chain."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from stfusion.errors import StfusionError
from stfusion.models import build_model
from stfusion.models.plain import PlainTemplate
from stfusion.core.costs import count_macs
from stfusion.scoring.prefix import score_strategies_prefix
from stfusion.scoring.naive import bn_state, score_strategies
from stfusion.core.strategies import BOTH, ST, S, Strategy, enumerate_all

from conftest import settings_with

NUM_CLASSES = 5
GROUPS = {"motion": [0, 1, 2], "appearance": [3, 4]}
SCORE_COLUMNS = ["top1", "top5", "loss", "top1_motion", "top1_appearance"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convs: one intra-op thread is as fast and does not fight other processes for the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_plain(unit: str) -> PlainTemplate:
    torch.manual_seed(0)
    model = {"backbone": "plain", "unit": unit, "widths": [8, 16], "layers_per_stage": [1, 2], "stem_width": 8}
    return prepared(build_model(settings_with({"model": model}), NUM_CLASSES))


def prepared(net: nn.Module) -> nn.Module:
    """Non-trivial template BN statistics and affine parameters (a few train-mode batches, random affines)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
        net.train()
        for _ in range(2):
            net(torch.randn(4, 3, 4, 16, 16, generator=g))
    return net.eval()


def data(n_val: int = 20, batch: int = 6, shape=(3, 4, 16, 16)):
    g = torch.Generator().manual_seed(2)
    val = TensorDataset(torch.randn(n_val, *shape, generator=g), torch.arange(n_val) % NUM_CLASSES)
    calib = [torch.randn(8, *shape, generator=g) for _ in range(2)]
    return DataLoader(val, batch_size=batch, shuffle=False), calib


def ranking(df: pd.DataFrame) -> list[str]:
    return df.sort_values(["top1", "top5", "loss", "id"], ascending=[False, False, True, True], kind="stable")[
        "id"].tolist()


def assert_same(naive: pd.DataFrame, prefix: pd.DataFrame) -> None:
    assert list(prefix.columns) == list(naive.columns)
    assert prefix["strategy"].tolist() == naive["strategy"].tolist()
    assert prefix["id"].tolist() == naive["id"].tolist()
    assert prefix["n"].tolist() == naive["n"].tolist()
    cols = [c for c in SCORE_COLUMNS if c in naive.columns]
    np.testing.assert_allclose(prefix[cols].to_numpy(float), naive[cols].to_numpy(float), rtol=1e-6, atol=1e-6)
    assert ranking(prefix) == ranking(naive)


def score_both(net, strategies, loader, calib, recalibrate, **kw):
    common = dict(calib_batches=calib, recalibrate=recalibrate, groups=GROUPS, progress=False)
    with count_macs(net) as c:
        naive = score_strategies(net, strategies, loader, NUM_CLASSES, **common)
    naive_state = bn_state(net)
    with count_macs(net) as p:
        prefix = score_strategies_prefix(net, strategies, loader, NUM_CLASSES, **common, **kw)
    assert all(torch.equal(v, bn_state(net)[k]) for k, v in naive_state.items())  # template stats restored
    assert net.strategy is None and not net.training
    return naive, prefix, c.total, p.total


@pytest.mark.parametrize("unit", ["full", "factorised"])
@pytest.mark.parametrize("recalibrate", [True, False])
def test_prefix_scores_equal_naive_and_rank_identically(unit, recalibrate):
    net = tiny_plain(unit)
    loader, calib = data()
    every = enumerate_all(net.n_fusion_layers, net.allow_none)  # 27 strategies, all prefixes shared
    strategies = every[::-1] + every[:4]  # an order that is not the tree's, with repeats
    naive, prefix, naive_macs, prefix_macs = score_both(net, strategies, loader, calib, recalibrate,
                                                        chunk_batches=2)
    assert_same(naive, prefix)
    assert prefix.attrs["prefix_shared"] is True
    # FLOPs: the counts the scorer reports are the ones executed, and its naive estimate is the naive run's
    assert prefix.attrs["macs_executed"] == prefix_macs
    assert prefix.attrs["macs_naive"] == naive_macs
    assert prefix_macs < 0.5 * naive_macs


def test_chunking_does_not_change_scores_or_work():
    net = tiny_plain("full")
    loader, calib = data(n_val=23, batch=5)  # a last partial batch
    strategies = enumerate_all(net.n_fusion_layers, net.allow_none)[:9]
    outs = [score_strategies_prefix(net, strategies, loader, NUM_CLASSES, calib_batches=calib, groups=GROUPS,
                                    progress=False, chunk_batches=c) for c in (1, 3, None)]
    for df in outs[1:]:
        pd.testing.assert_frame_equal(df, outs[0])
        assert df.attrs["macs_executed"] == outs[0].attrs["macs_executed"]


def test_flops_drop_only_as_far_as_prefixes_are_shared():
    net = tiny_plain("full")
    loader, calib = data(n_val=6)
    n = net.n_fusion_layers
    shared = [Strategy((BOTH,) * (n - 1) + (s,)) for s in (S, ST, BOTH)]  # differ only in the last layer
    disjoint = [Strategy((s,) * n) for s in (S, ST, BOTH)]  # differ from the first layer on
    kw = dict(calib_batches=calib, progress=False)
    a = score_strategies_prefix(net, shared, loader, NUM_CLASSES, **kw).attrs
    b = score_strategies_prefix(net, disjoint, loader, NUM_CLASSES, **kw).attrs
    work = {k: v["macs_executed"] - v["macs_check"] for k, v in (("a", a), ("b", b))}  # less the one-clip check
    assert work["a"] < 0.6 * a["macs_naive"]
    assert work["b"] < b["macs_naive"]  # only the stem (no fusion layer) is shared
    assert work["a"] / a["macs_naive"] < work["b"] / b["macs_naive"]
    single = score_strategies_prefix(net, shared[:1], loader, NUM_CLASSES, **kw).attrs
    assert single["macs_executed"] - single["macs_check"] == single["macs_naive"]  # nothing to share


class NoChain(PlainTemplate):
    def sequence(self):
        raise NotImplementedError("no chain")


class BrokenChain(PlainTemplate):
    def sequence(self):  # every fusion layer is there, but the classifier is not: not the forward
        return [self.stem, *self.features, nn.Sequential(self.pool, nn.Flatten(1))]


class MissingLayer(PlainTemplate):
    def sequence(self):
        return [self.stem, *list(self.features)[1:], nn.Sequential(self.pool, nn.Flatten(1), self.fc)]


def test_fallback_to_naive_without_a_chain(caplog):
    torch.manual_seed(0)
    net = prepared(NoChain(NUM_CLASSES, widths=(8,), layers_per_stage=(2,), stem_width=8))
    loader, calib = data(n_val=8)
    strategies = enumerate_all(net.n_fusion_layers, net.allow_none)
    naive = score_strategies(net, strategies, loader, NUM_CLASSES, calib_batches=calib, progress=False)
    with caplog.at_level(logging.INFO, logger="stfusion.scoring.prefix"):
        out = score_strategies_prefix(net, strategies, loader, NUM_CLASSES, calib_batches=calib, progress=False)
    assert "one by one" in caplog.text
    assert out.attrs["prefix_shared"] is False and out.attrs["macs_executed"] == out.attrs["macs_naive"]
    pd.testing.assert_frame_equal(out, naive)


def test_fallback_when_a_fusion_layer_is_outside_the_chain(caplog):
    torch.manual_seed(0)
    net = prepared(MissingLayer(NUM_CLASSES, widths=(8,), layers_per_stage=(2,), stem_width=8))
    loader, calib = data(n_val=8)
    strategies = enumerate_all(net.n_fusion_layers, net.allow_none)[:3]
    with caplog.at_level(logging.WARNING, logger="stfusion.scoring.prefix"):
        out = score_strategies_prefix(net, strategies, loader, NUM_CLASSES, calib_batches=calib, progress=False)
    assert "exactly once" in caplog.text and out.attrs["prefix_shared"] is False


def test_fallback_when_the_chain_is_not_the_forward(caplog):
    torch.manual_seed(0)
    net = prepared(BrokenChain(NUM_CLASSES, widths=(8,), layers_per_stage=(2,), stem_width=8))
    loader, calib = data(n_val=8)
    strategies = enumerate_all(net.n_fusion_layers, net.allow_none)[:3]
    naive = score_strategies(net, strategies, loader, NUM_CLASSES, calib_batches=calib, progress=False)
    with caplog.at_level(logging.WARNING, logger="stfusion.scoring.prefix"):
        out = score_strategies_prefix(net, strategies, loader, NUM_CLASSES, calib_batches=calib, progress=False)
    assert "forward" in caplog.text and out.attrs["prefix_shared"] is False
    pd.testing.assert_frame_equal(out, naive)


class InPlaceHead(nn.Module):
    def forward(self, x):
        return x.mul_(1.0)


class InPlaceChain(PlainTemplate):
    def sequence(self):
        return [self.stem, InPlaceHead(), *self.features, nn.Sequential(self.pool, nn.Flatten(1), self.fc)]


def test_a_module_that_modifies_its_input_in_place_is_refused():
    torch.manual_seed(0)
    net = prepared(InPlaceChain(NUM_CLASSES, widths=(8,), layers_per_stage=(1,), stem_width=8))
    loader, calib = data(n_val=4)
    with pytest.raises(StfusionError, match="in place"):
        score_strategies_prefix(net, [Strategy((S,))], loader, NUM_CLASSES, calib_batches=calib, progress=False)
    assert net.strategy is None  # state restored on the way out


def test_degenerate_inputs_match_the_naive_scorer():
    net = tiny_plain("full")
    loader, calib = data(n_val=4)
    empty_loader = DataLoader(TensorDataset(torch.zeros(0, 3, 4, 16, 16), torch.zeros(0, dtype=torch.long)))
    one = [Strategy((S,) * net.n_fusion_layers)]
    for strategies, val in (([], loader), (one, empty_loader)):
        naive = score_strategies(net, strategies, val, NUM_CLASSES, calib_batches=calib, progress=False)
        prefix = score_strategies_prefix(net, strategies, val, NUM_CLASSES, calib_batches=calib, progress=False)
        pd.testing.assert_frame_equal(prefix, naive)


def test_errors_match_the_naive_scorer():
    net = tiny_plain("full")
    loader, calib = data(n_val=4)
    good = Strategy((S,) * net.n_fusion_layers)
    with pytest.raises(ValueError, match="calibration batches"):
        score_strategies_prefix(net, [good], loader, NUM_CLASSES, calib_batches=None, progress=False)
    with pytest.raises(StfusionError, match="layers"):
        score_strategies_prefix(net, [Strategy((S,))], loader, NUM_CLASSES, calib_batches=calib, progress=False)
    bad = Strategy((0,) * net.n_fusion_layers)  # 'none' on a plain layer (no bypass)
    with pytest.raises(StfusionError, match="none"):
        score_strategies_prefix(net, [good, bad], loader, NUM_CLASSES, calib_batches=calib, progress=False)


def tiny_backbone(backbone: str, chain: bool, unit: str = "factorised") -> nn.Module:
    """A small ResNet-18 / DenseNet template as the backbones build it, or (``chain``) a subclass that exposes the
    module chain at block granularity, so prefix sharing is exercised through residual and dense bypasses and the
    state ``none``."""
    try:
        from stfusion.models.densenet import DenseNet121Template
        from stfusion.models.resnet import ResNetTemplate
    except ImportError as exc:  # pragma: no cover - backbone files not there
        pytest.skip(f"backbone not available: {exc}")

    class ChainResNet(ResNetTemplate):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # a block in state none returns ReLU(x) of its own input; an in-place ReLU there would change the
            # cached input that sibling strategies share (the scorer refuses it), so use the out-of-place one
            for m in self.modules():
                if isinstance(m, nn.ReLU) and m is not self.relu:
                    m.inplace = False

        def sequence(self):
            return [nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool), *self.layer1, *self.layer2,
                    *self.layer3, *self.layer4, nn.Sequential(self.avgpool, nn.Flatten(1), self.fc)]

    class ChainDenseNet(DenseNet121Template):
        def sequence(self):
            f = list(self.features)
            return [nn.Sequential(*f[:4]), *f[4:], nn.Sequential(nn.ReLU(), self.pool, nn.Flatten(1),
                                                                     self.classifier)]

    torch.manual_seed(0)
    try:
        if backbone == "resnet18":
            cls = ChainResNet if chain else ResNetTemplate
            net = cls(NUM_CLASSES, depth=18, unit=unit, width_multiplier=0.25, layers=(1, 1, 1, 1))
        else:
            cls = ChainDenseNet if chain else DenseNet121Template
            net = cls(NUM_CLASSES, unit=unit, width_multiplier=0.25, block_config=(2, 2, 2, 2))
    except TypeError as exc:  # pragma: no cover - constructor changed
        pytest.skip(f"{backbone} constructor: {exc}")
    return prepared_shape(net)


def mixed_strategies(net, seed: int = 0) -> list[Strategy]:
    """A random strategy and its variants at the last layer and at a middle layer (shared prefixes), with
    ``none`` wherever the layer allows it."""
    rng = np.random.default_rng(seed)
    options = [[s for s in (S, ST, BOTH, 0) if s != 0 or a] for a in net.allow_none]
    base = [int(rng.choice(o)) for o in options]
    mid = len(base) // 2
    out = [Strategy(tuple(base))]
    out += [Strategy(tuple(base[:-1] + [s])) for s in options[-1] if s != base[-1]]
    out += [Strategy(tuple(base[:mid] + [s] + base[mid + 1:])) for s in options[mid] if s != base[mid]]
    return out


@pytest.mark.parametrize("backbone", ["resnet18", "densenet"])
@pytest.mark.parametrize("chain", [True, False])
def test_other_backbones_equal_naive(backbone, chain):
    """Any backbone: prefix-shared where it exposes ``sequence()``, the naive scorer where it does not; the
    numbers are the naive scorer's either way."""
    net = tiny_backbone(backbone, chain)
    try:
        net.sequence()
        has_chain = True
    except NotImplementedError:
        has_chain = False
    assert has_chain or not chain
    loader, calib = data(n_val=4, batch=2, shape=(3, 4, 32, 32))
    calib = [c[:2] for c in calib]
    strategies = mixed_strategies(net)
    naive, prefix, naive_macs, prefix_macs = score_both(net, strategies, loader, calib, True)
    assert_same(naive, prefix)
    assert prefix.attrs["prefix_shared"] is has_chain
    if has_chain:
        assert prefix_macs < naive_macs


def prepared_shape(net: nn.Module) -> nn.Module:
    """:func:`prepared` for the backbones' 32x32 clips."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
        net.train()
        net(torch.randn(2, 3, 4, 32, 32, generator=g))
    return net.eval()
