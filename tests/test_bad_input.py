"""Bad input of every kind gets a one-line, human-readable error (or a manifest row with its reason for a data
file) and leaves no partial output behind."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from stfusion.engine.checkpoint import load_checkpoint, save_torch
from stfusion.config.loading import deep_merge, load_params
from stfusion.data.video import write_video
from stfusion.errors import StfusionError
from stfusion.config.settings import Settings
from stfusion.models import build_model
from stfusion.core.strategies import Strategy

from conftest import REPO, TINY_PARAMS


def _params_file(tmp_path, **overrides) -> str:
    params = deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()),
                        yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text()))
    params = deep_merge(params, overrides)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


def _cli(*args, cwd=None):
    res = subprocess.run([sys.executable, "-m", "stfusion.cli", *args], capture_output=True, text=True,
                         cwd=cwd, timeout=180)
    return res.returncode, res.stdout, res.stderr


def _assert_one_line_error(code, stderr, *needles):
    assert code == 2, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("stfusion: error:")]
    assert len(errors) == 1, stderr[-2000:]
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


# ---------------------------------------------------------------------------------------------- params
@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("data.frames", "abc", "data.frames"),  # wrong type
        ("supernet.epochs", "-1", "supernet.epochs"),  # negative epochs
        ("gate.temperature", "0", "gate.temperature"),  # temperature <= 0
        ("gate.init_p", "1.5", "gate.init_p"),  # p outside (0, 1)
        ("gate.temprature", "0.2", "temprature"),  # unknown key (typo)
        ("model.backbone", "vgg", "model.backbone"),  # unknown choice
    ],
)
def test_bad_params_name_the_key(tmp_path, key, value, needle):
    code, _, err = _cli("prepare", "--params", _params_file(tmp_path), "--set", f"{key}={value}",
                        "--cache", str(tmp_path / "cache"), cwd=tmp_path)
    _assert_one_line_error(code, err, needle)
    assert not (tmp_path / "cache").exists()


def test_typo_in_params_file_is_named(tmp_path):
    path = tmp_path / "p.yaml"
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["scoring"]["n_sample"] = params["scoring"].pop("n_samples")
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(StfusionError, match="unknown parameter scoring.n_sample"):
        load_params(path)


def test_params_file_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(StfusionError, match="mapping"):
        load_params(path)


def test_missing_params_file(tmp_path):
    code, _, err = _cli("prepare", "--params", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    _assert_one_line_error(code, err, "nope.yaml")


# ---------------------------------------------------------------------------------------------- strategies
def test_unknown_strategy_text():
    with pytest.raises(StfusionError, match="unknown fusion state 'SX'"):
        Strategy.parse("S|SX|ST")


def test_a_run_of_an_unlisted_strategy_id_names_it():
    from stfusion.stages.plain_runs import _selected

    table = pd.DataFrame({"id": ["a1", "b2"], "strategy": ["S|ST", "ST|S"]})
    with pytest.raises(StfusionError, match="strategy 'zz' is not listed in the stand-alone table \\(listed: a1, b2\\)"):
        _selected(table, ["a1", "zz"], "stand-alone")
    assert list(_selected(table, ["b2"], "stand-alone")["id"]) == ["b2"]
    assert list(_selected(table, None, "stand-alone")["id"]) == ["a1", "b2"]


def test_strategy_with_wrong_number_of_layers():
    model = build_model(Settings.for_stage(TINY_PARAMS), 2)
    with pytest.raises(StfusionError, match="has 2 layers but the network has 3"):
        model.set_strategy(Strategy.parse("S|ST"))


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_from_a_different_architecture(tmp_path):
    model = build_model(Settings.for_stage(TINY_PARAMS), 2)
    save_torch({"arch": model.arch, "model": model.state_dict()}, tmp_path / "model.pt")
    other = deep_merge(TINY_PARAMS, {"model": {"widths": [8, 32]}})
    with pytest.raises(StfusionError, match="different architecture .*widths"):
        load_checkpoint(tmp_path / "model.pt", arch=build_model(Settings.for_stage(other), 2).arch)


def test_damaged_checkpoint(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(StfusionError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "model.pt")


def _fit_tiny(out, on_stale="refuse", lr=0.05, record=None):
    import torch

    from stfusion.engine.train import TrainConfig, fit

    from conftest import motion_clips

    torch.manual_seed(0)
    model = build_model(Settings.for_stage(TINY_PARAMS), 2)
    cfg = TrainConfig(epochs=1, warmup_epochs=0, batch_size=16, lr=lr, kl_k=5.0)
    return fit(model, motion_clips(32, seed=0), cfg, out, progress=False, on_stale=on_stale, record=record)


def test_stale_last_checkpoint_is_refused_or_restarted(tmp_path, caplog):
    """One policy for a ``last.pt`` of other settings, or damaged: refused by default, deleted and trained over
    with ``on_stale="restart"`` (what the stages ask for); the restarted run equals a fresh one."""
    import torch

    fresh = _fit_tiny(tmp_path / "fresh", lr=0.02, record={"build": {"clip_shape": [3, 6, 16, 16]}})
    assert torch.load(tmp_path / "fresh" / "model.pt", weights_only=False)["build"] == {"clip_shape": [3, 6, 16, 16]}
    run = tmp_path / "run"
    for damage in (None, b"not a checkpoint"):
        _fit_tiny(run)
        if damage:
            (run / "last.pt").write_bytes(damage)
        with pytest.raises(StfusionError, match="cannot read|different training settings"):
            _fit_tiny(run, lr=0.02)
        restarted = _fit_tiny(run, on_stale="restart", lr=0.02)
        assert "starting the training over" in caplog.text
        pd.testing.assert_frame_equal(restarted.drop(columns="seconds"), fresh.drop(columns="seconds"))
        (run / "last.pt").unlink()


def test_missing_cache_for_training(tmp_path):
    code, _, err = _cli("train-supernet", "--params", _params_file(tmp_path), "--cache", str(tmp_path / "nocache"),
                        "--out", str(tmp_path / "ckpt"), cwd=tmp_path)
    _assert_one_line_error(code, err)
    assert not (tmp_path / "ckpt" / "model.pt").exists()


# ---------------------------------------------------------------------------------------------- data files
def _frames(n, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)


@pytest.fixture
def messy_dataset(tmp_path):
    """A generic CSV dataset: good videos beside every kind of bad file."""
    root = tmp_path / "videos"
    root.mkdir()
    rows = []
    for i in range(4):
        for label in ("a", "b"):
            write_video(root / f"good_{label}{i}.mp4", _frames(8, seed=i))
            rows.append((f"good_{label}{i}.mp4", label, "train" if i < 3 else "test"))
    write_video(root / "short.mp4", _frames(2))
    rows.append(("short.mp4", "a", "train"))
    good = (root / "good_a0.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(1).bytes(4000))
    (root / "empty.mp4").write_bytes(b"")
    (root / "notes.mp4").write_text("these are my notes, not a video\n")
    for name in ("truncated.mp4", "corrupt.mp4", "empty.mp4", "notes.mp4", "missing.mp4"):
        rows.append((name, "b", "train"))
    pd.DataFrame(rows, columns=["path", "label", "split"]).to_csv(root / "annotations.csv", index=False)
    return root


def test_bad_video_files_become_manifest_rows_with_reasons(tmp_path, messy_dataset):
    params = _params_file(tmp_path, data={"dataset": "csv", "root": str(messy_dataset),
                                          "annotations": str(messy_dataset / "annotations.csv"), "frames": 4})
    code, out, err = _cli("prepare", "--params", params, "--cache", str(tmp_path / "cache"), "--no-progress",
                          cwd=tmp_path)
    assert code == 0, err[-3000:]
    manifest = pd.read_csv(tmp_path / "cache" / "manifest.csv").set_index("video_id")
    by_file = {str(p).split("/")[-1]: r for p, r in zip(manifest["path"], manifest.to_dict("records"))}
    assert by_file["good_a0.mp4"]["status"] == "ok"
    for name in ("truncated.mp4", "corrupt.mp4", "empty.mp4", "notes.mp4", "missing.mp4"):
        row = by_file[name]
        assert row["status"] != "ok", name
        assert isinstance(row["reason"], str) and row["reason"], name
    assert by_file["missing.mp4"]["status"] == "missing"
    assert by_file["empty.mp4"]["status"] == "empty"
    assert "short" in str(by_file["short.mp4"]["reason"])
    # the good videos are all there, and the warnings were logged
    assert (manifest["status"] == "ok").sum() == 9
    clips = np.load(tmp_path / "cache" / "clips.npy")
    assert clips.shape[0] == 9
    assert "corrupt.mp4" in err or "corrupt.mp4" in out


def test_unknown_label_becomes_a_manifest_row(tmp_path):
    from stfusion.data.cache import preprocess

    root = tmp_path / "videos"
    root.mkdir()
    for name in ("a.mp4", "b.mp4", "z.mp4"):
        write_video(root / name, _frames(8))
    videos = pd.DataFrame({"video_id": ["a", "b", "z"], "path": [str(root / n) for n in ("a.mp4", "b.mp4", "z.mp4")],
                           "label": ["cat", "dog", "zebra"], "split": ["train", "train", "train"]})
    manifest = preprocess(videos, ["cat", "dog"], tmp_path / "cache", cache_frames=4, size=16, workers=1,
                          val_fraction=0.0, calib_fraction=0.0, progress=False).set_index("video_id")
    assert manifest.loc["z", "status"] == "unknown_label" and "zebra" in manifest.loc["z", "reason"]
    assert (manifest.loc[["a", "b"], "status"] == "ok").all()


def test_every_video_bad_fails_without_output(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    (root / "x.mp4").write_bytes(b"garbage")
    pd.DataFrame({"path": ["x.mp4"], "label": ["a"], "split": ["train"]}).to_csv(root / "ann.csv", index=False)
    params = _params_file(tmp_path, data={"dataset": "csv", "root": str(root), "annotations": str(root / "ann.csv")})
    code, _, err = _cli("prepare", "--params", params, "--cache", str(tmp_path / "cache"), "--no-progress",
                        cwd=tmp_path)
    _assert_one_line_error(code, err)
    assert not (tmp_path / "cache" / "manifest.csv").exists()


@pytest.mark.parametrize(
    "content, needle",
    [
        ("", "empty"),  # empty annotation file
        ("file,category\nx.mp4,a\n", "column"),  # wrong columns
        ("path,label\nx.mp4,a\nx.mp4,b\n", "x.mp4 is listed more than once"),  # one video twice
    ],
)
def test_bad_annotation_files(tmp_path, content, needle):
    root = tmp_path / "videos"
    root.mkdir()
    write_video(root / "x.mp4", _frames(8))
    (root / "ann.csv").write_text(content)
    params = _params_file(tmp_path, data={"dataset": "csv", "root": str(root), "annotations": str(root / "ann.csv")})
    code, _, err = _cli("prepare", "--params", params, "--cache", str(tmp_path / "cache"), cwd=tmp_path)
    _assert_one_line_error(code, err)
    assert needle in err.lower()
    assert not (tmp_path / "cache" / "manifest.csv").exists()


def test_missing_dataset_folder(tmp_path):
    params = _params_file(tmp_path, data={"dataset": "ucf101", "root": str(tmp_path / "UCF-101")})
    code, _, err = _cli("prepare", "--params", params, "--cache", str(tmp_path / "cache"), cwd=tmp_path)
    _assert_one_line_error(code, err, "UCF-101")
    assert not (tmp_path / "cache").exists()
