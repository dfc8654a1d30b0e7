"""Racing (stfusion/scoring/racing.py): Wilson intervals, the round schedule, and a race on a trained tiny supernet whose
survivors carry exactly the full-split scores while dropped strategies carry only marked partial scores."""

import numpy as np
import pandas as pd
import pytest
import torch

from stfusion.config.settings import Settings
from stfusion.models import build_model
from stfusion.scoring.prefix import score_strategies_prefix
from stfusion.scoring.racing import DROPPED, FULL, fully_scored, race_strategies, round_ends, wilson_interval
from stfusion.scoring.naive import calibration_batches
from stfusion.engine.evaluation import eval_loader
from stfusion.core.strategies import Strategy
from stfusion.engine.train import TrainConfig, fit

from conftest import motion_clips


def test_wilson_interval_known_values():
    low, high = wilson_interval(np.array([50, 0, 100]), 100, 0.95)
    np.testing.assert_allclose(low, [0.40383, 0.0, 0.96300], atol=1e-4)
    np.testing.assert_allclose(high, [0.59617, 0.03700, 1.0], atol=1e-4)
    narrow, wide = wilson_interval(np.array([50]), 100, 0.5), wilson_interval(np.array([50]), 100, 0.99)
    assert wide[0][0] < narrow[0][0] < 0.5 < narrow[1][0] < wide[1][0]


def test_round_ends_grow_to_the_split():
    assert round_ends(1000, 128, 2.0) == [128, 256, 512, 1000]
    assert round_ends(100, 128, 2.0) == [100]
    assert round_ends(10, 3, 1.01) == [3, 4, 5, 6, 7, 8, 9, 10]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import TINY_PARAMS

    torch.manual_seed(0)
    model = build_model(Settings.for_stage(TINY_PARAMS), 2)
    cfg = TrainConfig(epochs=4, warmup_epochs=2, batch_size=16, lr=0.05, kl_k=5.0)
    train = motion_clips(128, seed=1)
    fit(model, train, cfg, tmp_path_factory.mktemp("race"), progress=False)
    n = model.n_fusion_layers
    strategies = [Strategy(tuple(int(v) for v in np.unravel_index(i, (4,) * n))) for i in range(4 ** n)]
    strategies = [s for s in strategies if all(st != 0 for st in s.states)]  # 27 strategies, none all-off
    return model, strategies, motion_clips(192, seed=2), calibration_batches(train, 16, 2, 0)


def test_race_keeps_exact_scores_for_survivors_and_marks_the_dropped(trained):
    model, strategies, val, calib = trained
    kw = dict(calib_batches=calib, groups={"left": [0], "right": [1]}, progress=False)
    ref = score_strategies_prefix(model, strategies, eval_loader(val, 32), 2, **kw).set_index("id")
    protect = [strategies[0].id]
    raced = race_strategies(model, strategies, val, 2, keep_top=3, first_clips=32, growth=2.0, confidence=0.5,
                            seed=0, batch_size=32, protect=protect, **kw)
    assert list(raced["id"]) == [s.id for s in strategies]
    assert [r["clips"] for r in raced.attrs["rounds"]] == [32, 64, 128, 192]
    full, dropped = raced[raced.race_status == FULL], raced[raced.race_status == DROPPED]
    assert len(dropped) >= 1 and len(full) >= 3 and protect[0] in set(full["id"])
    assert fully_scored(raced)["id"].tolist() == full["id"].tolist()
    # survivors: the full-split scores of the one-pass scorer (counts exact, loss to float rounding)
    for col in ("top1", "top5", "top1_left", "top1_right"):
        np.testing.assert_allclose(full[col].to_numpy(), ref.loc[full["id"], col].to_numpy(), atol=1e-12)
    np.testing.assert_allclose(full["loss"].to_numpy(), ref.loc[full["id"], "loss"].to_numpy(), rtol=1e-6)
    assert (full["race_clips"] == len(val)).all() and (full["n"] == len(val)).all()
    # dropped: no full-split score, a partial score on fewer clips inside its interval
    assert dropped[["top1", "top5", "loss", "top1_left"]].isna().all().all()
    assert (dropped["race_clips"] < len(val)).all()
    assert ((dropped.top1_low <= dropped.top1_partial) & (dropped.top1_partial <= dropped.top1_high)).all()
    # every strategy that was clearly among the best survived: the reference's best is fully scored
    assert ref["top1"].idxmax() in set(full["id"])
    # dropping strategies saves work: fewer MACs than scoring all of them on every clip
    assert raced.attrs["macs_executed"] < ref.attrs["macs_executed"]
    assert sum(r["scored"] for r in raced.attrs["rounds"][1:]) < len(strategies) * 3


def test_dropped_strategies_are_never_taken_as_fully_scored():
    """Downstream of a raced ranking: the network table marks the status, the stand-alone selection and the best
    sampled strategy come from fully scored rows only."""
    from stfusion.analysis.space import network_table
    from stfusion.stages.strategies import add_rank
    from stfusion.analysis.fidelity import select_strategies

    rows = []
    for i in range(8):
        full = i < 6
        rows.append({"id": f"s{i}", "name": f"sample-{i}", "source": "sample", "strategy": "x", "log_prob": -i,
                     "prob": 0.1, "top1": 0.9 - 0.1 * i if full else np.nan, "race_status": FULL if full else DROPPED,
                     "race_clips": 100 if full else 10, "top1_partial": 0.95 if not full else 0.9 - 0.1 * i})
    ranked = add_rank(pd.DataFrame(rows))
    assert list(ranked["id"][-2:]) == ["s6", "s7"]  # dropped: last, although their partial score is the highest
    net = network_table(ranked)
    assert {"race_status", "race_clips", "top1_partial"} <= set(net.columns)
    sel = select_strategies(ranked, 4)
    assert not set(sel["id"]) & {"s6", "s7"}
    with pytest.raises(Exception, match="whole validation split"):
        select_strategies(ranked, 7)
