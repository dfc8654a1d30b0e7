"""Ranking fidelity: the statistics on known inputs, the one selection, and the stages of the default run's check
and of the study on written run files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau, spearmanr

from stfusion.analysis import fidelity as F
from stfusion.config.layout import FIDELITY_CHECK, FIDELITY_STUDY
from stfusion.errors import StfusionError
from stfusion.stages.fidelity import report, select


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
    """A study table and its per-seed accuracies ``(n, 2)``."""
    rng = np.random.default_rng(seed)
    quality = np.linspace(0.3, 0.9, n)
    score = quality + rng.normal(scale=0.05, size=n)
    df = pd.DataFrame({
        "id": [f"s{i}" for i in range(n)], "name": [f"sample-{i}" for i in range(n)], "strategy": ["S+ST|ST"] * n,
        "supernet_top1": score, "supernet_top1_recal": score, "supernet_top1_plain_bn": rng.normal(size=n),
        "log_prob": rng.normal(size=n),
    })
    return df, np.stack([quality + rng.normal(scale=0.03, size=n) for _ in range(2)], axis=1)


def test_study_states_every_figure(tmp_path):
    df, per_seed = _study_table()
    res = F.study(df, per_seed, n_resamples=400, n_permutations=999)
    assert res["n_strategies"] == 12 and res["n_seeds"] == 2 and res["predictor"] == "supernet_top1"
    assert res["supernet"]["kendall_tau"] > 0.6 and res["supernet"]["kendall_p"] < 0.01
    assert res["recal"] == res["supernet"]  # the configured BN mode is the recalibrated one here
    assert 0 < res["ceiling"]["tau"] <= 1 and res["relative_to_ceiling"] > 0.5
    assert set(res["topk_overlap"]) == {"3", "5"}
    assert res["regret"]["pick"] in set(df["id"]) and res["regret"]["regret"] >= 0
    diff = res["differences"]["recal-plain_bn"]
    assert diff["difference"] > 0 and diff["ci"][0] < diff["difference"] < diff["ci"][1]
    assert len(res["misranked"]) == 5
    text = "\n".join(F.summary_lines(res))
    assert "Kendall tau-b" in text and "ceiling" in text and "regret" in text
    assert F.plot_study(df, per_seed, tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_headline_numbers_are_scipys_to_the_bit():
    """The flat keys the report reads (ranking_fidelity.json of the default run's check): tau, rho and n exactly
    as scipy computes them, Kendall's p exact where neither side has ties (scipy's own choice up to 33
    strategies), ``None`` where a side is constant."""
    from scipy.stats import kendalltau, spearmanr

    df, per_seed = _study_table(n=6, seed=4)
    df.loc[2, "supernet_top1_plain_bn"] = df.loc[3, "supernet_top1_plain_bn"]  # a tie
    df["log_prob"] = -1.0  # constant
    truth = per_seed[:, :1]
    res = F.study(df, truth, n_resamples=200, n_permutations=999)
    for label, col in (("", "supernet_top1"), ("_recal", "supernet_top1_recal"),
                       ("_plain_bn", "supernet_top1_plain_bn")):
        assert res[f"kendall_tau{label}"] == kendalltau(truth[:, 0], df[col]).statistic
        assert res[f"spearman_rho{label}"] == spearmanr(truth[:, 0], df[col]).statistic
    assert res["kendall_p"] == kendalltau(truth[:, 0], df["supernet_top1"]).pvalue
    assert res["kendall_p_plain_bn"] == res["plain_bn"]["kendall_p"] and res["plain_bn"]["kendall_p_method"] == "permutation"
    assert res["n"] == 6 and res["kendall_tau_log_prob"] is None and res["spearman_p_log_prob"] is None
    json.dumps(res)  # serialisable


def _ranking(n=30):
    rng = np.random.default_rng(0)
    names = ["all-S", "all-ST", "all-S+ST"] + [f"sample-{i}" for i in range(n - 3)]
    top1 = np.concatenate([[0.2, 0.7, 0.75], np.round(rng.uniform(0.3, 0.8, n - 3) ** 3, 2)])
    top1[10] = np.nan  # racing: dropped before the whole split
    return pd.DataFrame({"id": [f"id{i}" for i in range(n)], "name": names, "source": "sample",
                         "strategy": "S|ST", "log_prob": np.round(rng.normal(size=n), 1), "top1": top1})


def test_one_selection_for_the_check_and_the_study():
    """The uniform families, then strategies evenly spaced in score rank. The ids are those the default run's
    check chose before the check and the study shared one implementation: its selection is unchanged."""
    ranked = _ranking()
    expected = {6: ["id2", "id1", "id29", "id27", "id0", "id5"],
                10: ["id2", "id1", "id29", "id15", "id25", "id27", "id0", "id21", "id14", "id5"]}
    for n, ids in expected.items():
        assert list(F.select_strategies(ranked, n)["id"]) == ids
    sel = F.select_strategies(ranked, 24)
    assert len(sel) == 24 and sel["id"].is_unique and "id10" not in set(sel["id"])
    assert {"all-S", "all-ST", "all-S+ST"} <= set(sel["name"])
    with pytest.raises(StfusionError, match="fidelity.n_strategies is 30"):
        F.select_strategies(ranked, 30, "fidelity.n_strategies")


# ------------------------------------------------------------------------------- the stages, on written runs
PARAMS = {"seed": 0, "standalone": {"n_strategies": 4, "epochs": 1, "lr": 0.1, "batch_size": 8, "weight_decay": 0.0},
          "fidelity": {"n_strategies": 4, "seeds": 2}}


def _write_runs(tmp_path, per_seed):
    """A ranking, the selection of 4 strategies from it, and their run files: the check's in ``check/runs/``,
    the study's in ``study/runs/seed<j>/`` (seed 0 the check's runs)."""
    ranked = _ranking().assign(top1_recal=lambda d: d["top1"], top1_plain_bn=lambda d: d["top1"] ** 2,
                               rank=lambda d: d["top1"].rank(ascending=False))
    ranked.to_csv(tmp_path / "ranking.csv", index=False)
    select(PARAMS, FIDELITY_CHECK, ranking=tmp_path / "ranking.csv", out=tmp_path / "strategies.csv")
    ids = list(pd.read_csv(tmp_path / "strategies.csv")["id"])
    folders = [tmp_path / "check" / "runs"] + [tmp_path / "study" / "runs" / f"seed{j}" for j in range(2)]
    for folder, acc in zip(folders, [per_seed[:, 0], per_seed[:, 0], per_seed[:, 1]]):
        folder.mkdir(parents=True)
        for i, a in zip(ids, acc):
            (folder / f"{i}.json").write_text(json.dumps({
                "id": i, "strategy": "S|ST", "name": i, "top1_val": a, "top1_test": a, "macs": 10, "params": 5,
                "seconds": 2.0}))
            pd.DataFrame({"epoch": [1], "train_top1": [a]}).to_csv(folder / f"{i}.history.csv", index=False)
            pd.DataFrame({"label": [0], "prediction": [0]}).to_csv(folder / f"{i}.predictions.csv", index=False)
    return ids


def test_the_check_is_the_study_with_one_seed(tmp_path):
    """The check's files keep their names and columns; the study adds a column a seed; with the study's seed 0
    as its only seed the statistics are the check's."""
    per_seed = np.array([[0.9, 0.8], [0.5, 0.6], [0.7, 0.75], [0.3, 0.2]])
    ids = _write_runs(tmp_path, per_seed)
    kw = {"selection": tmp_path / "strategies.csv", "ranking": tmp_path / "ranking.csv"}
    check = report(PARAMS, FIDELITY_CHECK, runs_dir=tmp_path / "check" / "runs", out_dir=tmp_path / "check", **kw)
    study = report(PARAMS, FIDELITY_STUDY, runs_dir=tmp_path / "study" / "runs", out_dir=tmp_path / "study", **kw)
    table = pd.read_csv(tmp_path / "check" / "standalone.csv")
    assert list(table.columns) == ["id", "name", "source", "strategy", "log_prob", "supernet_top1",
                                   "supernet_top1_recal", "supernet_top1_plain_bn", "supernet_rank",
                                   "standalone_top1_val", "standalone_top1_test", "macs", "params",
                                   "standalone_seconds"]
    wide = pd.read_csv(tmp_path / "study" / "table.csv")
    assert list(wide.columns) == [*table.columns, "seed0", "seed1", "standalone_mean", "standalone_min",
                                  "standalone_max"]
    np.testing.assert_array_equal(wide[["seed0", "seed1"]].to_numpy(), per_seed)
    for out, names in ((tmp_path / "check", FIDELITY_CHECK), (tmp_path / "study", FIDELITY_STUDY)):
        for name in (names.result, names.figure, names.summary, "best_history.csv", "best_test_predictions.csv"):
            assert (out / name).is_file(), name
    assert json.loads((tmp_path / "check" / "ranking_fidelity.json").read_text())["kendall_tau"] == check["kendall_tau"]
    assert check["n_seeds"] == 1 and study["n_seeds"] == 2 and check["runs"] == 4 and study["runs"] == 8
    assert check["strategies"] == ids and check["train_seconds"] == 8.0 and study["train_seconds"] == 16.0
    one_seed = F.study(table, per_seed[:, :1], seed=PARAMS["seed"])
    assert {k: v for k, v in check.items() if k in one_seed} == one_seed
    assert study["supernet"] == F.study(wide, per_seed, seed=PARAMS["seed"])["supernet"]
