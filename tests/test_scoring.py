"""Strategy scoring: BN recalibration per strategy, determinism, resumable chunks."""

import pandas as pd
import pytest
import torch

from stfusion.config.settings import Settings
from stfusion.models import build_model
from stfusion.scoring.naive import bn_state, calibration_batches, score_resumable, score_strategies
from stfusion.engine.evaluation import eval_loader
from stfusion.core.strategies import families

from conftest import motion_clips


@pytest.fixture
def setup(tiny_params):
    torch.manual_seed(0)
    model = build_model(Settings.for_stage(tiny_params), 2)
    train, val = motion_clips(64, seed=1), motion_clips(32, seed=2)
    # give the BN layers non-trivial running statistics, as a trained template has
    model.train()
    with torch.no_grad():
        for i in range(0, 64, 16):
            model(train.tensors[0][i : i + 16])
    strategies = list(families(model.n_fusion_layers).values())
    kw = dict(model=model, val_loader=eval_loader(val, 16), num_classes=2,
              calib_batches=calibration_batches(train, 16, 2, seed=0), progress=False)
    return model, strategies, kw


def test_scores_are_deterministic_and_restore_bn(setup):
    model, strategies, kw = setup
    before = bn_state(model)
    a = score_strategies(strategies=strategies, **kw)
    b = score_strategies(strategies=strategies, **kw)
    pd.testing.assert_frame_equal(a, b)
    after = bn_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert list(a.columns[:6]) == ["strategy", "id", "top1", "top5", "loss", "n"]
    assert (a["n"] == 32).all() and a["top1"].between(0, 1).all()


def test_recalibration_changes_the_statistics_used(setup):
    model, strategies, kw = setup
    rec = score_strategies(strategies=strategies, recalibrate=True, **kw)
    plain = score_strategies(strategies=strategies, recalibrate=False, **kw)
    assert not (rec["loss"].to_numpy() == plain["loss"].to_numpy()).all()


def test_group_accuracies(setup):
    model, strategies, kw = setup
    df = score_strategies(strategies=strategies[:2], groups={"left": [0], "right": [1]}, **kw)
    for _, row in df.iterrows():
        assert row["top1"] == pytest.approx((row["top1_left"] + row["top1_right"]) / 2)  # balanced classes


def test_resumable_scoring_survives_an_interruption(setup, tmp_path):
    model, strategies, kw = setup
    full = score_resumable(score_strategies, strategies, tmp_path / "full", chunk_size=3, **kw)
    calls = {"n": 0}

    def dies_on_second_chunk(**kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return score_strategies(**kwargs)

    with pytest.raises(KeyboardInterrupt):
        score_resumable(dies_on_second_chunk, strategies, tmp_path / "cut", chunk_size=3, **kw)
    assert len(list((tmp_path / "cut").glob("chunk_*.csv"))) == 1
    calls["n"] = 0
    counted = []

    def counting(**kwargs):
        counted.append(len(kwargs["strategies"]))
        return score_strategies(**kwargs)

    resumed = score_resumable(counting, strategies, tmp_path / "cut", chunk_size=3, **kw)
    assert sum(counted) == len(strategies) - 3  # the first chunk was not scored again
    pd.testing.assert_frame_equal(full, resumed)
