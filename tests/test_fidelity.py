"""Statistics of the ranking-fidelity study on known inputs, and the stratified selection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau, spearmanr

from stfusion.analysis import fidelity as F
from stfusion.errors import StfusionError
from stfusion.stages.fidelity import select_stratified


def test_vectorised_tau_and_rho_equal_scipy_with_ties():
    rng = np.random.default_rng(1)
    a = np.round(rng.normal(size=15), 1)
    b = np.round(a + rng.normal(scale=0.8, size=15), 1)
    assert F._tau(a, b) == pytest.approx(kendalltau(a, b).statistic, abs=1e-12)
    assert F._rho(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    batch = np.stack([a, b, -a])
    np.testing.assert_allclose(F._tau(batch, np.stack([b, a, a])), [kendalltau(a, b).statistic] * 2 + [-1.0])
    assert F._tau(np.ones(5), np.arange(5.0)) == 0.0  # a constant side has no ordering


def test_bootstrap_interval_contains_the_known_tau():
    """A sample from a population whose Kendall tau is known (bivariate normal: tau = 2/pi asin(r))."""
    r = 0.7
    known = 2 / np.pi * np.arcsin(r)
    rng = np.random.default_rng(0)
    xy = rng.multivariate_normal([0, 0], [[1, r], [r, 1]], size=60)
    res = F.rank_stats(xy[:, 0], xy[:, 1], n_resamples=1000, n_permutations=999)
    low, high = res["kendall_ci"]
    assert low < known < high
    assert low < res["kendall_tau"] < high and high - low < 0.5
    assert res["kendall_p_method"] == "exact" and res["kendall_p"] < 1e-6
    assert res["kendall_tau"] == pytest.approx(kendalltau(xy[:, 0], xy[:, 1]).statistic)
    assert res["spearman_p"] < 0.01


def test_unrelated_predictor_is_not_significant():
    rng = np.random.default_rng(3)
    res = F.rank_stats(rng.normal(size=20), rng.normal(size=20), n_resamples=500, n_permutations=999)
    assert res["kendall_p"] > 0.05 and res["kendall_ci"][0] < 0 < res["kendall_ci"][1]


def test_ceiling_is_one_for_identical_seeds_and_lower_for_noisy_ones():
    acc = np.linspace(0.2, 0.9, 10)
    same = F.seed_ceiling(np.stack([acc, acc], axis=1))
    assert same["tau"] == pytest.approx(1.0) and same["ci"] == pytest.approx([1.0, 1.0]) and same["pairs"] == 1
    rng = np.random.default_rng(0)
    noisy = np.stack([acc + rng.normal(scale=0.2, size=10) for _ in range(3)], axis=1)
    res = F.seed_ceiling(noisy)
    assert res["pairs"] == 3 and -1 <= res["tau"] < 1
    assert F.seed_ceiling(acc[:, None])["tau"] is None


def test_topk_overlap_regret_and_paired_difference():
    truth = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    pred = np.array([0.5, 0.9, 0.8, 0.1, 0.2, 0.3])  # ranks the best strategy 3rd
    assert F.topk_overlap(pred, truth, 3) == pytest.approx(1.0)
    assert F.topk_overlap(pred, truth, 1) == 0.0
    assert F.topk_overlap(pred, truth, 7) is None
    reg = F.regret(pred, truth)
    assert reg["pick_index"] == 1 and reg["regret"] == pytest.approx(0.1) and reg["best_standalone"] == 0.9
    same = F.paired_difference(truth, pred, pred)
    assert same["difference"] == 0.0 and same["ci"] == [0.0, 0.0]
    better = F.paired_difference(truth, truth, -truth)
    assert better["difference"] == pytest.approx(2.0) and better["ci"][0] > 0


def _study_table(n=12, seed=0):
    rng = np.random.default_rng(seed)
    quality = np.linspace(0.3, 0.9, n)
    return pd.DataFrame({
        "id": [f"s{i}" for i in range(n)], "strategy": ["S+ST|ST"] * n,
        "supernet_top1_recal": quality + rng.normal(scale=0.05, size=n),
        "supernet_top1_plain_bn": rng.normal(size=n), "log_prob": rng.normal(size=n),
        "seed0": quality + rng.normal(scale=0.03, size=n), "seed1": quality + rng.normal(scale=0.03, size=n),
    })


def test_study_states_every_figure(tmp_path):
    df = _study_table()
    res = F.study(df, n_resamples=400, n_permutations=999)
    assert res["n_strategies"] == 12 and res["n_seeds"] == 2
    assert res["supernet"]["kendall_tau"] > 0.6 and res["supernet"]["kendall_p"] < 0.01
    assert res["recal"] == res["supernet"]
    assert 0 < res["ceiling"]["tau"] <= 1 and res["relative_to_ceiling"] > 0.5
    assert set(res["topk_overlap"]) == {"3", "5"}
    assert res["regret"]["pick"] in set(df["id"]) and res["regret"]["regret"] >= 0
    diff = res["differences"]["recal-plain_bn"]
    assert diff["difference"] > 0 and diff["ci"][0] < diff["difference"] < diff["ci"][1]
    assert len(res["misranked"]) == 5
    text = "\n".join(F.summary_lines(res))
    assert "Kendall tau-b" in text and "ceiling" in text and "regret" in text
    assert F.plot_study(df, tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def _ranking(n=30):
    rng = np.random.default_rng(0)
    names = ["all-S", "all-ST", "all-S+ST"] + [f"sample-{i}" for i in range(n - 3)]
    return pd.DataFrame({"id": [f"id{i}" for i in range(n)], "name": names, "source": "sample",
                         "strategy": "S|ST", "log_prob": rng.normal(size=n),
                         "top1": np.concatenate([[0.2, 0.7, 0.75], rng.uniform(0.3, 0.8, n - 3) ** 3])})


def test_stratified_selection_spans_the_score_range():
    ranked = _ranking()
    sel = select_stratified(ranked, 10)
    assert len(sel) == 10 and sel["id"].is_unique
    assert {"all-S", "all-ST", "all-S+ST"} <= set(sel["name"])
    scores = ranked.set_index("id").loc[sel["id"], "top1"]
    rest = ranked[~ranked["name"].str.startswith("all-")]["top1"]
    picked = scores[~sel["name"].str.startswith("all-").to_numpy()]
    # equal-width bins: the picks cover the range, not only the crowded low end
    edges = np.linspace(rest.min(), rest.max(), 8)
    occupied = {int(np.searchsorted(edges, v, side="right")) - 1 for v in rest}
    hit = {int(np.searchsorted(edges, v, side="right")) - 1 for v in picked}
    assert len(hit) >= min(len(occupied), 5)
    assert list(select_stratified(ranked, 10)["id"]) == list(sel["id"])  # deterministic
    with pytest.raises(StfusionError, match="n_strategies"):
        select_stratified(ranked, 31)
