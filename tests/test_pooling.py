"""Pooling supernet replicates (stfusion/analysis/pooling.py, the pool-seeds stage) on known inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stfusion.analysis import pooling
from stfusion.analysis.space import STATE_COLUMNS
from stfusion.errors import StfusionError


def _pref(probs):
    """A preference table of ``probs`` ``(layers, 4)`` in the order of STATE_COLUMNS."""
    probs = np.asarray(probs, float)
    df = pd.DataFrame(probs, columns=STATE_COLUMNS)
    df.insert(0, "layer", range(len(df)))
    df.insert(1, "stage", 1)
    df["preferred"] = [STATE_COLUMNS[i][2:-1] for i in probs.argmax(axis=1)]
    df["keep_prob_rule"] = "paper"
    return df


def _ranking(top1):
    return pd.DataFrame({"id": [f"s{i}" for i in range(len(top1))], "strategy": [f"S|ST|{i}" for i in range(len(top1))],
                         "name": "x", "source": "sample", "log_prob": -1.0, "top1": top1})


PROBS = [[0.1, 0.2, 0.6, 0.1], [0.5, 0.2, 0.2, 0.1], [0.1, 0.7, 0.1, 0.1]]


def test_identical_seeds_have_zero_width_intervals():
    pref = pooling.pool_preference([_pref(PROBS)] * 3, {c: 0.25 for c in STATE_COLUMNS})
    for col in STATE_COLUMNS:
        assert np.allclose(pref[f"{col} low"], pref[col]) and np.allclose(pref[f"{col} high"], pref[col])
        assert np.allclose(pref[f"{col} sd"], 0)
    ranked = pooling.pool_ranking({s: _ranking([0.5, 0.7, 0.6]) for s in (0, 1, 2)})
    assert np.allclose(ranked["top1 high"] - ranked["top1 low"], 0)
    assert list(ranked["id"]) == ["s1", "s2", "s0"] and list(ranked["best_in_seeds"]) == [3, 0, 0]


def test_intervals_t_below_five_seeds_bootstrap_from_five():
    x = np.array([[0.1], [0.3], [0.2]])
    mean, low, high = pooling.seed_interval(x)
    half = 4.302652729911275 * np.std(x, ddof=1) / np.sqrt(3)  # t(0.975, 2)
    assert pooling.interval_method(3) == "t" and np.allclose([low[0], high[0]], [0.2 - half, 0.2 + half])
    five = np.linspace(0, 1, 5)[:, None]
    mean, low, high = pooling.seed_interval(five)
    assert pooling.interval_method(5) == "bootstrap" and 0 <= low[0] < 0.5 < high[0] <= 1


def test_uncertain_cells_include_the_prior_or_overlap_the_next_unit():
    a, b = _pref(PROBS), _pref([[0.1, 0.2, 0.6, 0.1], [0.2, 0.5, 0.2, 0.1], [0.1, 0.7, 0.1, 0.1]])
    pref = pooling.pool_preference([a, b, a], {c: 0.25 for c in STATE_COLUMNS})
    assert not pref.loc[0, "P(S+ST) uncertain"] and not pref.loc[2, "P(ST) uncertain"]  # same in every seed
    assert pref.loc[1, "P(S) uncertain"]  # S (0.5, 0.2, 0.5) against ST (0.2, 0.5, 0.2): the intervals overlap


def test_intervals_stay_in_zero_one_and_an_impossible_unit_is_never_uncertain():
    # no bypass: P(none) is 0 in every seed and before training; S+ST near 1 with a wide spread over the seeds
    seeds = [_pref([[0.0, 0.02, 0.98, 0.0]]), _pref([[0.3, 0.1, 0.6, 0.0]]), _pref([[0.0, 0.01, 0.99, 0.0]])]
    pref = pooling.pool_preference(seeds, {"P(S)": 0.09, "P(ST)": 0.09, "P(S+ST)": 0.81, "P(none)": 0.0})
    for col in STATE_COLUMNS:
        assert (pref[f"{col} low"] >= 0).all() and (pref[f"{col} high"] <= 1).all()
    assert pref.loc[0, "P(S) low"] == 0 and pref.loc[0, "P(S+ST) high"] == 1  # clipped, not cut off
    assert not pref.loc[0, "P(none) uncertain"]


def test_stability_share_is_one_for_identical_posteriors_and_counts_disagreement():
    same = pooling.stability({s: _pref(PROBS) for s in (0, 1, 2)},
                             {s: _ranking([0.5, 0.7, 0.6, 0.2]) for s in (0, 1, 2)})
    assert same["same_preferred_share"] == 1.0 and same["tau_mean"] == pytest.approx(1.0)
    assert all(v == pytest.approx(0, abs=1e-12) for layer in same["marginal_sd"].values() for v in layer.values())
    other = _pref([[0.1, 0.2, 0.6, 0.1], [0.2, 0.5, 0.2, 0.1], [0.1, 0.7, 0.1, 0.1]])
    mixed = pooling.stability({0: _pref(PROBS), 1: other}, {0: _ranking([0.5, 0.7, 0.6, 0.2]),
                                                            1: _ranking([0.2, 0.6, 0.7, 0.5])})
    assert mixed["same_preferred"] == 2 and mixed["layers_disagreeing"] == {1: {"0": "S", "1": "ST"}}
    assert mixed["tau_mean"] == pytest.approx(1 / 3)  # 4 concordant pairs of 6, 2 discordant


def test_seeds_trained_with_different_settings_are_refused_naming_the_key():
    rec = {"config": {"seed": 0, "epochs": 4, "kl_k": 3.0}, "gate": {"init_p": 0.1}}
    pooling.require_same_settings({0: rec, 1: {**rec, "config": {**rec["config"], "seed": 1}}})
    with pytest.raises(StfusionError, match=r"^seeds 0 and 2 .*: config\.kl_k differs"):
        pooling.require_same_settings({0: rec, 2: {**rec, "config": {**rec["config"], "seed": 2, "kl_k": 5.0}}})
    with pytest.raises(StfusionError, match=r"gate\.init_p differs"):
        pooling.require_same_settings({0: rec, 1: {**rec, "gate": {"init_p": 0.2}}})
