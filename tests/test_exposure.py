"""Exposure (stfusion.analysis.exposure) against its closed form on a hand-written drop-rate history."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stfusion.analysis.exposure import exposure_table, rate_history
from stfusion.core.strategies import BOTH, NONE, S, ST
from stfusion.errors import StfusionError

# epoch 1 is the warm-up (left out); layer 0 has no bypass (none not allowed), layer 1 has one
HISTORY = pd.DataFrame(
    [(1, 0, 0.1, 0.1), (1, 1, 0.1, 0.1),
     (2, 0, 0.2, 0.5), (2, 1, 0.1, 0.6),
     (3, 0, 0.4, 0.5), (3, 1, 0.3, 0.8)],
    columns=["epoch", "layer", "p_S", "p_ST"])
ALLOW_NONE = [False, True]


def test_exposure_equals_the_closed_form():
    rates = rate_history(HISTORY, warmup_epochs=1, n_layers=2)
    assert rates.shape == (2, 2, 2)
    # (S, ST): layer 0 S = (1 - p_S) p_ST = 0.4, 0.3 (mean 0.35); layer 1 ST = p_S (1 - p_ST) = 0.04, 0.06 (0.05)
    # (S+ST, none): layer 0 (1 - p_S)(1 - p_ST) = 0.4, 0.3 (0.35); layer 1 p_S p_ST = 0.06, 0.24 (0.15)
    got = exposure_table(rates, [[S, ST], [BOTH, NONE]], ALLOW_NONE, uniform_share=0.0)
    assert got["exposure"].tolist() == pytest.approx([0.05, 0.15])
    assert got["exposure_layer"].tolist() == [1, 1]
    assert got["exposure_joint"].tolist() == pytest.approx([(0.4 * 0.04 + 0.3 * 0.06) / 2,
                                                             (0.4 * 0.06 + 0.3 * 0.24) / 2])
    # a quarter of uniform steps: layer 0 draws from 3 states, layer 1 from 4
    mixed = exposure_table(rates, [[S, ST]], ALLOW_NONE, uniform_share=0.25)
    assert mixed["exposure"].iloc[0] == pytest.approx(min(0.75 * 0.35 + 0.25 / 3, 0.75 * 0.05 + 0.25 / 4))
    assert mixed["exposure_joint"].iloc[0] == pytest.approx(0.75 * 0.017 + 0.25 / 12)


def test_a_history_without_gated_epochs_or_with_a_missing_layer_is_refused():
    with pytest.raises(StfusionError, match="no gated epoch"):
        rate_history(HISTORY, warmup_epochs=3, n_layers=2)
    with pytest.raises(StfusionError, match="layers 0..1"):
        rate_history(HISTORY.drop(index=5), warmup_epochs=1, n_layers=2)


def _flagged_ranking():
    """test_analysis's hand-made ranking with exposures: the uniform families and every third other strategy
    extrapolated."""
    from test_analysis import make_posterior, make_ranking

    post, p = make_posterior()
    ranked = make_ranking(post, n_samples=20)
    flag = ranked["name"].isin(["all-S", "all-ST", "all-S+ST"]) | (ranked.index % 3 == 1)
    ranked["exposure"] = np.where(flag, 0.01, 0.3)
    return post, p, ranked.assign(extrapolated=flag, min_exposure=0.05)


def test_the_report_says_which_quoted_scores_are_extrapolations():
    from stfusion.analysis import space
    from stfusion.report import document

    post, p, ranked = _flagged_ranking()
    pref = space.preference_table(post, p, [0, 1, 1])
    checks = {c["check"][:2]: c for c in document.compute_checks(pref, ranked, None)}
    for key in ("3a", "3c"):
        assert "extrapolated scores (exposure below 0.05" in checks[key]["numbers"]
        assert "all-S 0.010" in checks[key]["numbers"]
    clean = {c["check"][:2]: c for c in document.compute_checks(pref, ranked.assign(extrapolated=False), None)}
    assert "extrapolated" not in clean["3a"]["numbers"]


def test_the_study_selects_extrapolated_strategies_and_reports_their_rank_error():
    from stfusion.analysis import fidelity, supernet_side

    _, _, ranked = _flagged_ranking()
    few = ranked.assign(extrapolated=(ranked.index % 4 == 1) & ~ranked["name"].str.startswith("all-"))
    assert fidelity.select_strategies(few, 6)["id"].isin(few.loc[few["extrapolated"], "id"]).sum() >= 2
    sel = supernet_side.supernet_scores(fidelity.select_strategies(ranked, 12), ranked)
    # a predictor exact on the exposed strategies and reversed on the extrapolated ones
    truth = sel["supernet_top1"].to_numpy() + np.where(sel["extrapolated"], -sel["supernet_top1"] * 2, 0)
    effect = fidelity.exposure_effect(sel, sel["supernet_top1"].to_numpy(), truth)
    assert effect["n_extrapolated"] == int(sel["extrapolated"].sum())
    assert effect["kendall_tau_exposed"] == pytest.approx(1.0)
    assert effect["rank_error_extrapolated"] > effect["rank_error_exposed"]
    assert fidelity.spearman_brown(0.28, 3) == pytest.approx(3 * 0.28 / 1.56)
