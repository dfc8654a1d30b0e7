"""Validation during training: the history columns of the supernet and of plain networks, the eval_every
thinning, and that validating leaves the training itself unchanged; the MAC / parameter counts of strategies."""

import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from stfusion.core.costs import count_macs, network_costs, strategy_costs
from stfusion.engine.evaluation import is_due, plain_evaluator, supernet_evaluator
from stfusion.config.settings import Settings
from stfusion.models import build_model
from stfusion.engine.evaluation import eval_loader, evaluate
from stfusion.core.strategies import families
from stfusion.engine.train import TrainConfig, fit

from conftest import motion_clips


def _supernet(params, data, out, evaluate=None, epochs=2, warmup=1):
    torch.manual_seed(0)
    model = build_model(Settings.for_stage(params), 2)
    cfg = TrainConfig(epochs=epochs, warmup_epochs=warmup, batch_size=16, lr=0.05, kl_k=5.0)
    return model, fit(model, data, cfg, out, progress=False, evaluate=evaluate)


def test_is_due():
    assert [e for e in range(1, 8) if is_due(e, 3, 7)] == [3, 6, 7]
    assert all(is_due(e, 1, 4) for e in range(1, 5))


def test_supernet_history_has_validation_and_entropy(tmp_path, tiny_params):
    train, val = motion_clips(48, seed=1), motion_clips(32, seed=2)
    hook = supernet_evaluator(val, 16, 2, every=2, total_epochs=3)
    model, hist = _supernet(tiny_params, train, tmp_path / "a", hook)
    plain, _ = _supernet(tiny_params, train, tmp_path / "b")
    for (name, a), b in zip(model.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name  # validation draws no random numbers from the training's generators
    assert model.strategy is None  # the template is restored after the hard-gate evaluation
    on_disk = pd.read_csv(tmp_path / "a" / "history.csv")
    assert {"val_top1", "val_loss", "entropy_paper", "entropy_plain", "val_top1_most_probable_paper",
            "most_probable_plain"} <= set(on_disk.columns)
    assert on_disk["val_top1"].isna().tolist() == [True, False, False]  # epochs 2 and 3 (the last) only
    assert on_disk["entropy_paper"].notna().all() and (on_disk["entropy_paper"] > 0).all()
    last = hist.iloc[-1]
    model.set_strategy(None)
    tmpl = evaluate(model, eval_loader(val, 16), 2, torch.device("cpu"))
    assert last["val_top1"] == pytest.approx(tmpl["top1"]) and last["val_loss"] == pytest.approx(tmpl["loss"])
    best = model.posterior("paper").most_probable()
    assert last["most_probable_paper"] == best.text
    model.set_strategy(best)
    hard = evaluate(model, eval_loader(val, 16), 2, torch.device("cpu"))
    assert last["val_top1_most_probable_paper"] == pytest.approx(hard["top1"])
    assert last["entropy_plain"] == pytest.approx(model.posterior("plain").entropy())


def test_plain_history_has_validation(tmp_path, tiny_params):
    train, val = motion_clips(32, seed=1), motion_clips(16, seed=2)
    torch.manual_seed(0)
    net = build_model(Settings.for_stage(tiny_params), 2).export(families(3)["all-ST"])
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05)
    hist = fit(net, train, cfg, tmp_path, progress=False, evaluate=plain_evaluator(val, 8, 2, every=1,
                                                                                    total_epochs=2))
    assert hist["val_top1"].between(0, 1).all() and (hist["val_loss"] > 0).all()
    assert hist.iloc[-1]["val_top1"] == pytest.approx(evaluate(net, eval_loader(val, 8), 2, "cpu")["top1"])


def test_costs_count_the_kept_convs(tiny_params):
    model = build_model(Settings.for_stage(tiny_params), 2)
    fam = families(model.n_fusion_layers)
    shape = (3, 6, 16, 16)
    costs = dict(zip(["all-S", "all-ST", "all-S+ST"],
                     strategy_costs(model, [fam["all-S"], fam["all-ST"], fam["all-S+ST"]], shape)))
    assert costs["all-S"]["macs"] < costs["all-ST"]["macs"] < costs["all-S+ST"]["macs"]
    # full units: a 1x3x3 S conv costs a third of the 3x3x3 ST conv of the same layer
    s_macs = costs["all-S+ST"]["macs"] - costs["all-ST"]["macs"]
    st_macs = costs["all-S+ST"]["macs"] - costs["all-S"]["macs"]
    assert st_macs == 3 * s_macs
    exported = model.export(fam["all-S+ST"]).eval()
    x = torch.zeros(1, *shape)
    with count_macs(exported) as counter, FlopCounterMode(display=False) as flops:
        exported(x)
    assert costs["all-S+ST"]["macs"] == counter.total
    assert flops.get_total_flops() == 2 * counter.total  # the stated convention: FLOPs = 2 x MACs
    assert costs["all-S+ST"]["params"] == sum(p.numel() for p in exported.parameters())
    assert costs["all-S+ST"]["params"] < sum(p.numel() for p in model.parameters())  # no gates, no logits
    assert network_costs(exported, shape) == costs["all-S+ST"]
