"""The whole workflow on a generated UCF101-layout folder through ``videos`` storage: ``snakemake --config
preset=ucf101 data='{...}'`` with a tiny template and budget, one epoch of training at a 112 crop from short side
128, scoring at the 128 centre crop (where every network's cost is counted), and the test split measured with
2 clips x 3 crops."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from video_factory import textured_frames, write_source  # noqa: E402

from conftest import REPO  # noqa: E402
from stfusion.config.layout import LAYOUT  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")
CLASSES = ("ApplyEyeMakeup", "Archery")


def ucf101_folder(root: Path, per_class: int = 5, test_per_class: int = 2) -> Path:
    """classInd.txt, trainlist01.txt, testlist01.txt and class folders of small .avi files (with audio)."""
    train, test = [], []
    for c, name in enumerate(CLASSES, 1):
        for g in range(per_class + test_per_class):
            rel = f"{name}/v_{name}_g{g + 1:02d}_c01.avi"
            write_source(root / rel, textured_frames(20, 120, 160, seed=10 * c + g), fps=25)
            (train if g < per_class else test).append(f"{rel} {c}" if g < per_class else rel)
    (root / "classInd.txt").write_text("".join(f"{c} {n}\n" for c, n in enumerate(CLASSES, 1)))
    (root / "trainlist01.txt").write_text("\n".join(train) + "\n")
    (root / "testlist01.txt").write_text("\n".join(test) + "\n")
    return root


def flow(mapping: dict) -> str:
    return yaml.safe_dump(mapping, default_flow_style=True, width=10_000).strip()


@pytest.mark.slow
def test_ucf101_preset_runs_end_to_end_through_videos_storage(tmp_path):
    root = ucf101_folder(tmp_path / "UCF-101")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    data = {"dataset": "ucf101", "root": str(root), "storage": "videos", "short_side": 128, "frames": 4, "stride": 2,
            "train_short_side": [128, 144], "crop": 112, "eval_short_side": 128, "eval_crop": 128,
            "test_clips": 2, "test_crops": 3, "workers": 1, "prepare_shards": 2}
    overrides = {
        "model": {"backbone": "plain", "unit": "full", "widths": [8, 16], "layers_per_stage": [1, 1], "stem_width": 8},
        "supernet": {"epochs": 1, "warmup_epochs": 0, "batch_size": 4},
        "compute": {"device": "cpu", "precision": "fp32", "channels_last": False, "loader_workers": 0},
        "scoring": {"n_samples": 2, "top_k": 1, "calib_batches": 1, "batch_size": 8},
        "derive": {"top_k": 1}, "finetune": {"epochs": 1, "batch_size": 4}, "seeds": [0],
        "standalone": {"n_strategies": 2, "epochs": 1, "batch_size": 4},
    }
    cmd = ["snakemake", "-s", str(REPO / "Snakefile"), "--cores", "all", "-d", str(work), "--config",
           "preset=ucf101", f"data={flow(data)}", *(f"{k}={flow(v)}" for k, v in overrides.items())]
    out = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-4000:]}"

    cache = work / "data" / "cache"
    assert json.loads((cache / "storage.json").read_text())["storage"] == "videos"
    manifest = pd.read_csv(cache / "manifest.csv")
    assert len(manifest) == 14 and (manifest["status"] == "ok").all() and (manifest["height"] == 128).all()
    assert set(manifest["split"]) == {"train", "val", "test"} and not (cache / "clips.npy").exists()
    history = pd.read_csv(work / LAYOUT.of_seed(0).history)
    assert len(history) == 1 and history["decode_failures"].tolist() == [0]
    model = __import__("torch").load(work / LAYOUT.of_seed(0).supernet, weights_only=False)
    assert model["arch"]["backbone"] == "plain"  # --config won over the preset's resnet50
    assert model["build"]["clip_shape"] == [3, 4, 128, 128]  # the evaluation crop, not the training crop

    ranking = pd.read_csv(work / "results" / "strategies" / "ranking.csv")
    assert (ranking["test_views"] == "2 clips x 3 crops").all()
    assert (ranking["test_clips"] == 2).all() and (ranking["test_crops"] == 3).all()
    assert ranking["top1_test"].between(0, 1).all() and ranking["top1"].between(0, 1).all()
    runs = [json.loads(p.read_text()) for p in (work / "results" / "finetune" / "runs").glob("*.json")]
    assert runs and all(r["test_views"] == "2 clips x 3 crops" for r in runs)
    # one input size for costs: a network's MACs agree across the ranking, the derived table and its runs
    macs = ranking.set_index("strategy")["macs"]
    derived = pd.read_csv(work / "results" / "derived" / "strategies.csv")
    scored = derived[derived["strategy"].isin(macs.index)]
    assert len(scored) and (scored["macs"].to_numpy() == macs[scored["strategy"]].to_numpy()).all()
    assert all(r["macs"] == derived.set_index("id").loc[r["id"], "macs"] for r in runs)
    assert "2 clips x 3 crops per video" in (work / "results" / "report.md").read_text()
    metrics = json.loads((work / "results" / "metrics.json").read_text())  # numbers only
    assert (metrics["test_clips"], metrics["test_crops"]) == (2, 3)
