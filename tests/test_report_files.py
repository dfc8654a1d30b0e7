"""The report folder's helpers: the Pareto front, the confusion matrix, the drop-rate summary, the HTML tables,
and the summary lines a run ends with."""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from stfusion.config.layout import RunLayout
from stfusion.report.document import build_report, summary_lines
from stfusion.report.files import confusion_matrix, drop_rate_summary, pareto_front, plot_pareto
from stfusion.io.tables import write_html


def test_pareto_front_keeps_the_undominated():
    macs = np.array([1, 2, 2, 3, 4, 4])
    acc = np.array([0.5, 0.4, 0.7, 0.7, 0.9, 0.8])
    assert pareto_front(macs, acc).tolist() == [True, False, True, False, True, False]


def test_confusion_matrix_counts_in_class_order():
    pred = pd.DataFrame({"actual": ["a", "a", "b", "c"], "predicted": ["a", "b", "b", "a"]})
    cm = confusion_matrix(pred, ["a", "b", "c"])
    assert cm.to_numpy().tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]


def test_drop_rate_summary_has_fixed_columns():
    rates = pd.DataFrame([{"epoch": e, "layer": l, "stage": 0, "p_S": 0.1 * l + e, "p_ST": 0.2 * l}
                          for e in (1, 2) for l in range(3)])
    s = drop_rate_summary(rates)
    assert list(s.columns) == ["epoch", "mean_p_S", "mean_p_ST", "first_layer_p_S", "first_layer_p_ST",
                               "last_layer_p_S", "last_layer_p_ST"]
    assert np.allclose(s["mean_p_S"], [1.1, 2.1]) and np.allclose(s["last_layer_p_ST"], [0.4, 0.4])


def test_html_table_and_pareto_figure(tmp_path):
    df = pd.DataFrame({"name": ["x", "y"], "strategy": ["S|ST", "ST|ST"], "macs": [10, 20], "top1": [0.5, 0.25]})
    html = write_html(df, tmp_path / "t.html", "title", "a note").read_text()
    assert "<table" in html and "S|ST" in html and "a note" in html
    assert plot_pareto(df, "top1", tmp_path / "p.png", "t", "top-1").read_bytes()[:4] == b"\x89PNG"


def test_summary_lines(tmp_path):
    (tmp_path / "strategies").mkdir()
    pd.DataFrame({"strategy": ["S|ST", "S|S"], "name": ["sample-1", "all-S"], "source": ["sample", "family"],
                  "top1": [0.9, 0.5], "log_prob": [-1.0, -2.0]}).to_csv(tmp_path / "strategies" / "ranking.csv",
                                                                        index=False)
    (tmp_path / "metrics.json").write_text(json.dumps({"all_S_motion_gap": 0.25, "kendall_tau": 0.6}))
    lines = summary_lines(tmp_path, tmp_path / "report.md")
    assert lines[1] == "stfusion: HTML report: snakemake --report results/report.zip"
    assert lines[2] == ("stfusion: best strategy S|ST (validation top-1 0.900); all-S gap on motion 0.250; "
                        "Kendall tau 0.600")
    (tmp_path / "metrics.json").write_text(json.dumps({"all_S_motion_gap": 0.0, "n_standalone": 6}))
    assert summary_lines(tmp_path, tmp_path / "report.md")[2].endswith(
        "Kendall tau n/a (undefined, the stand-alone accuracies (or the supernet scores) all tie)")  # why it is blank


def test_report_reads_the_layout_and_carries_test_views_as_numbers(tmp_path):
    """A run under non-default roots: the report reads its tables where the layout puts them, links them
    relative to the page, and states the test views from the ranking's numeric columns."""
    layout = RunLayout(cache=str(tmp_path / "c"), checkpoints=str(tmp_path / "ck"), results=str(tmp_path / "r"))
    ranking = pd.DataFrame({"id": ["a", "b"], "strategy": ["S|ST", "S|S"], "name": ["sample-1", "all-S"],
                            "source": ["sample", "family"], "top1": [0.9, 0.5], "log_prob": [-1.0, -2.0],
                            "rank": [1, 2], "test_views": ["1 clip x 1 crop"] * 2, "test_clips": [2, 2], "test_crops": [3, 3]})
    history = pd.DataFrame({"epoch": [1, 2], "phase": ["warmup", "gated"], "train_top1": [0.5, 0.6]})
    finetuned = pd.DataFrame({"id": ["a", "b"], "strategy": ["S|ST", "S|S"], "top1_val": [0.7, 0.8]})
    manifest = pd.DataFrame({"split": ["train", "train", "test"], "status": ["ok", "unreadable", "ok"]})
    for df, path in ((ranking, layout.ranking), (history, layout.of_seed(3).history), (finetuned, layout.finetune_table),
                     (manifest, layout.manifest)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(path, index=False)
    text, metrics = build_report(layout, seed=3, seeds=(3,), versions={}, page=tmp_path / "r" / "page" / "report.md")
    assert metrics["test_clips"] == 2 and metrics["test_crops"] == 3 and metrics["seed"] == 3
    assert "Test accuracies (`top1_test*`): 2 clips x 3 crops per video" in text
    assert "History: `../../ck/supernet/seed3/history.csv`" in text
    assert ("The best on validation is `b` (S|S, top-1 0.800): `stfusion export --strategy best` writes it" in
            text)  # the report names the id the export takes
    assert "clips: test 1, train 1; skipped by prepare (not used): 1 unreadable (reasons in manifest.csv)." in text
    assert "- `../strategies/candidates.csv`, `../strategies/ranking.csv`: listed and scored strategies" in text
