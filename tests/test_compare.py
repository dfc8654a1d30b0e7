"""``stfusion compare`` on synthetic result folders and a synthetic ``dvc exp show --json``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from stfusion.cli import app as cli
from stfusion.analysis.compare import compare


def _run(folder, best, tau=None, entropy=4.0, study_tau=None):
    res = folder / "results"
    res.mkdir(parents=True)
    metrics = {"entropy": entropy, "entropy_ratio": entropy / 6.0, "drop_rate_spread": 0.4,
               "best_sampled_top1": best, "all_S_top1": 0.2, "all_ST_top1": 0.6, "all_SST_top1": 0.65,
               "all_SST_top1_appearance": 0.7, "all_S_top1_motion": 0.15, "kendall_tau": tau, "n_standalone": 6}
    (res / "metrics.json").write_text(json.dumps(metrics))
    if study_tau is not None:
        (res / "fidelity").mkdir()
        (res / "fidelity" / "fidelity.json").write_text(json.dumps(
            {"n_strategies": 24, "supernet": {"kendall_tau": study_tau, "kendall_ci": [0.2, 0.7]}}))
    return res


def test_compare_ranks_folders_and_writes_table_and_figure(tmp_path):
    a = _run(tmp_path / "k1", best=0.70, tau=0.3)
    b = _run(tmp_path / "k3", best=0.74, tau=0.1, entropy=3.0, study_tau=0.55)
    c = _run(tmp_path / "k10", best=0.70, tau=0.5)
    out = tmp_path / "cmp"
    assert cli.main(["compare", str(a), str(b), str(c), "--out-dir", str(out), "--params",
                     str(cli_params(tmp_path))]) == 0
    df = pd.read_csv(out / "compare.csv")
    assert list(df["experiment"]) == ["k3", "k10", "k1"]  # best sampled, then tau
    assert list(df["rank"]) == [1, 2, 3]
    k3 = df.iloc[0]
    assert k3["tau"] == pytest.approx(0.55) and k3["tau_n"] == 24 and k3["tau_ci_low"] == pytest.approx(0.2)
    assert k3["entropy_ratio"] == pytest.approx(0.5) and k3["all_SST_appearance"] == pytest.approx(0.7)
    assert df.iloc[2]["tau_n"] == 6
    assert "| k3 " in (out / "compare.md").read_text()
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"


def cli_params(tmp_path):
    from conftest import REPO

    return REPO / "params.yaml"


def test_compare_reads_dvc_exp_show_json(tmp_path):
    def entry(name, best):
        return {"rev": name, "name": name, "data": {"metrics": {"results/metrics.json": {"data": {
            "best_sampled_top1": best, "entropy": 3.0, "kendall_tau": 0.2}}}}}

    data = [{**entry("workspace", 0.5), "experiments": None},
            {**entry("abc123", 0.6), "experiments": [{"name": "exp-k3", "revs": [entry("r1", 0.8)]}]}]
    path = tmp_path / "exps.json"
    path.write_text(json.dumps(data))
    df = compare(dvc_json=path, out_dir=tmp_path / "out")
    assert list(df["experiment"]) == ["exp-k3", "abc123", "workspace"]
    assert df.iloc[0]["best_sampled"] == pytest.approx(0.8)


def test_compare_refuses_a_folder_without_metrics(tmp_path, capsys):
    assert cli.main(["compare", str(tmp_path), "--out-dir", str(tmp_path / "o"),
                     "--params", str(cli_params(tmp_path))]) == 2
    assert "stfusion: error: no metrics.json and no scored supernet" in capsys.readouterr().err


def test_compare_shows_the_swept_key_why_tau_is_missing_and_its_order(tmp_path):
    """`dvc exp show --json > exps.json && stfusion compare --dvc-json exps.json`: the swept key is a column, a
    blank tau says why, ties go by name, and compare.md states the order."""
    def entry(name, k, tau):
        return {"rev": name, "name": name, "data": {
            "params": {"params.yaml": {"data": {"seed": 0, "gate": {"kl_k": k, "kl_form": "paper"}}}},
            "metrics": {"results/metrics.json": {"data": {"best_sampled_top1": 0.0714, "kendall_tau": tau,
                                                          "n_standalone": 6}}}}}

    data = [{**entry("workspace", 3, None), "experiments": [
        {"name": "exp-k10", "revs": [entry("r2", 10, None)]}, {"name": "exp-k1", "revs": [entry("r1", 1, 0.2)]}]}]
    path = tmp_path / "exps.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "out"
    assert cli.main(["compare", "--dvc-json", str(path), "--out-dir", str(out), "--params",
                     str(cli_params(tmp_path))]) == 0
    df = pd.read_csv(out / "compare.csv")
    assert list(df.columns[:3]) == ["rank", "experiment", "gate.kl_k"] and "seed" not in df.columns
    assert list(df["experiment"]) == ["exp-k1", "exp-k10", "workspace"]  # a tie on best_sampled: tau, then name
    assert df.iloc[1]["missing"].endswith("; tau: undefined, the stand-alone accuracies (or the supernet scores) "
                                          "all tie")
    md = (out / "compare.md").read_text()
    assert md.startswith("ranked by best_sampled (validation top-1), then tau, then experiment name")
    assert "nan" not in md and "n/a" in md


def _partial(folder, bests):
    """A run stopped after scoring: per seed an analysis summary and a ranking, no metrics.json."""
    from stfusion.config.layout import RunLayout

    res = folder / "results"
    for seed, best in enumerate(bests):
        run = RunLayout(results=str(res)).of_seed(seed)
        for path in (run.analysis_summary, run.ranking):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(run.analysis_summary).write_text(json.dumps(
            {"entropy": 3.0, "entropy_initial": 6.0, "drop_rate_spread": 0.5}))
        pd.DataFrame({"id": ["s", "t", "b"], "name": ["sample-1", "all-S", "all-S+ST"],
                      "source": ["sample", "family", "family"], "log_prob": [-1.0, -5.0, -2.0],
                      "top1": [best, 0.2, 0.6]}).to_csv(run.ranking, index=False)
    return res


def test_compare_pools_the_seeds_of_partial_runs(tmp_path):
    same = _partial(tmp_path / "k3", [0.8, 0.8, 0.8])
    spread = _partial(tmp_path / "k5", [0.6, 0.7, 0.8])
    df = compare([same, spread], out_dir=tmp_path / "out")
    k3, k5 = df.set_index("experiment").loc["k3"], df.set_index("experiment").loc["k5"]
    assert k3["n_seeds"] == 3 and k3["best_sampled"] == pytest.approx(0.8)
    assert k3["best_sampled_low"] == pytest.approx(0.8) and k3["best_sampled_high"] == pytest.approx(0.8)
    assert k5["best_sampled"] == pytest.approx(0.7) and k5["best_sampled_low"] < 0.6 < 0.8 < k5["best_sampled_high"]
    assert k5["entropy_ratio"] == pytest.approx(0.5) and k5["all_SST"] == pytest.approx(0.6)
    assert pd.isna(k5["tau"])
