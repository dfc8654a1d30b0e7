"""Clip samplers, the preprocessing cache (bad inputs, splits, determinism, atomic outputs) and ClipDataset."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest_data import builtin_root, write_clip  # noqa: E402

from stfusion.data.cache import MANIFEST_COLUMNS  # noqa: E402
from stfusion.data.dataset import ClipDataset, load_classes
from stfusion.data.sampling import TorchRNG, centre_indices, segment_indices, spatial_crops, test_clips, train_indices, uniform_indices
from stfusion.data.builtin import class_kinds
from stfusion.data.cache import preprocess, resize_crop
from stfusion.data.formats import read_annotations
from stfusion.data.video import read_uniform
from stfusion.data.dataset import MEAN, STD  # noqa: E402
from stfusion.data.transforms import ViewSpec, normalize  # noqa: E402
from stfusion.errors import StfusionError  # noqa: E402


# ------------------------------------------------------------------------------------------ sampling
def test_train_indices():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(300):
        idx = train_indices(20, 4, 3, rng)
        assert idx.dtype == np.int64 and len(idx) == 4
        assert (np.diff(idx) == 3).all() and idx[0] >= 0 and idx[-1] <= 19
        starts.add(int(idx[0]))
    assert starts == set(range(0, 20 - 9 - 1 + 1))  # every start where the clip fits
    # shorter than the clip: start at 0, clamp at the last frame (never loop back)
    np.testing.assert_array_equal(train_indices(5, 4, 2, rng), [0, 2, 4, 4])
    np.testing.assert_array_equal(train_indices(1, 3, 1, rng), [0, 0, 0])
    with pytest.raises(StfusionError):
        train_indices(0, 4, 1, rng)


def test_segment_and_uniform_indices():
    np.testing.assert_array_equal(uniform_indices(12, 4), [1, 4, 7, 10])
    np.testing.assert_array_equal(uniform_indices(3, 6), [0, 0, 1, 1, 2, 2])  # stretched, order kept
    np.testing.assert_array_equal(segment_indices(12, 4), uniform_indices(12, 4))  # eval: segment centres
    rng = np.random.default_rng(1)
    seen = np.zeros((4, 12), bool)
    for _ in range(200):
        idx = segment_indices(12, 4, rng)
        for k, i in enumerate(idx):
            assert 3 * k <= i < 3 * (k + 1)
            seen[k, i] = True
    assert seen.sum() == 12  # every frame of every segment is drawn
    assert (np.diff(segment_indices(3, 8, rng)) >= 0).all()


def test_test_clips_and_centre():
    clips = test_clips(30, 8, 2, 3)
    assert clips.shape == (3, 8)
    assert (np.diff(clips, axis=1) == 2).all()
    assert clips[0, 0] >= 0 and clips[-1, -1] <= 29
    assert clips[0, 0] < clips[1, 0] < clips[2, 0]
    np.testing.assert_array_equal(centre_indices(12, 8), [2, 3, 4, 5, 6, 7, 8, 9])
    np.testing.assert_array_equal(test_clips(12, 8, 1, 1)[0], centre_indices(12, 8))
    np.testing.assert_array_equal(test_clips(4, 3, 2, 2), [[0, 2, 3], [0, 2, 3]])  # too short: clamped
    # spacing: two clips in 30 frames with a 15-frame span: starts at quarter and three quarters of the room
    np.testing.assert_array_equal(test_clips(30, 8, 2, 2)[:, 0], [4, 11])


def test_spatial_crops():
    np.testing.assert_array_equal(spatial_crops(32, 48, 32, 1), [[0, 8, 32, 40]])
    np.testing.assert_array_equal(spatial_crops(32, 48, 32, 3), [[0, 0, 32, 32], [0, 8, 32, 40], [0, 16, 32, 48]])
    np.testing.assert_array_equal(spatial_crops(48, 32, 32, 3)[:, 0], [0, 8, 16])  # portrait: top/centre/bottom
    np.testing.assert_array_equal(spatial_crops(40, 40, 32, 1), [[4, 4, 36, 36]])
    with pytest.raises(StfusionError, match="does not fit"):
        spatial_crops(16, 48, 32, 3)


def test_torch_rng_follows_torch_seed():
    torch.manual_seed(5)
    a = [train_indices(30, 8, 2, TorchRNG())[0] for _ in range(10)] + list(segment_indices(40, 8, TorchRNG()))
    torch.manual_seed(5)
    b = [train_indices(30, 8, 2, TorchRNG())[0] for _ in range(10)] + list(segment_indices(40, 8, TorchRNG()))
    assert a == b and len(set(a[:10])) > 1


# ---------------------------------------------------------------------------------------- preprocess
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The small built-in benchmark plus one of each kind of bad input."""
    root = builtin_root(tmp_path_factory, clips_per_class=4, seed=0)
    videos, classes = read_annotations("builtin", root)
    bad = tmp_path_factory.mktemp("bad")
    write_clip(bad / "short.mp4", n=5, h=40, w=64, seed=1)  # 5 frames < cache_frames, not square
    write_clip(bad / "w48.mp4", n=12, h=32, w=48, seed=2)  # decord's bad width: decoded by PyAV
    good = Path(videos["path"][0]).read_bytes()
    (bad / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (bad / "text.mp4").write_text("not a video")
    (bad / "empty.mp4").write_bytes(b"")
    extra = pd.DataFrame(
        [("bad/short", str(bad / "short.mp4"), "disk", "train"), ("bad/w48", str(bad / "w48.mp4"), "square", "test"),
         ("bad/truncated", str(bad / "truncated.mp4"), "disk", "train"), ("bad/text", str(bad / "text.mp4"), "cross", "train"),
         ("bad/empty", str(bad / "empty.mp4"), "cross", "test"), ("bad/absent", str(bad / "absent.mp4"), "cross", "train"),
         ("bad/label", videos["path"][1], "juggling", "train")],
        columns=videos.columns,
    )
    return pd.concat([videos, extra], ignore_index=True), classes, class_kinds(root)


@pytest.fixture(scope="module")
def cache(inputs, tmp_path_factory):
    videos, classes, kinds = inputs
    out = tmp_path_factory.mktemp("cache")
    manifest = preprocess(videos, classes, out, cache_frames=12, size=32, workers=2, class_kinds=kinds, progress=False)
    return out, manifest


def test_more_frames_than_cached_names_the_keys(cache):
    """`stfusion train-supernet --set data.frames=13` over a cache of 12 frames: the line names data.frames and
    the key that sets the cache (data.builtin.frames), and the next step."""
    out, _ = cache
    with pytest.raises(StfusionError, match=r"data.frames=13 is more than the 12 frames per video in the cache "
                                            r".*: prepare it again .*data.builtin.frames >= 13"):
        ClipDataset(out, "train", frames=13)


def test_manifest_statuses_and_reasons(cache, inputs):
    out, manifest = cache
    videos, classes, _ = inputs
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert manifest["video_id"].tolist() == videos["video_id"].tolist()  # input order
    status = manifest.set_index("video_id")["status"]
    assert status[:56].eq("ok").all()
    assert status["bad/short"] == "ok" and status["bad/w48"] == "ok"
    assert status["bad/truncated"] == "unreadable" and status["bad/text"] == "unreadable"
    assert status["bad/empty"] == "empty" and status["bad/absent"] == "missing"
    assert status["bad/label"] == "unknown_label"
    reason = manifest.set_index("video_id")["reason"]
    assert reason["bad/short"].startswith("short: 5 frames < 12")
    assert "decoded by PyAV" in reason["bad/w48"]
    assert "juggling" in reason["bad/label"]
    assert (manifest.loc[manifest.status != "ok", "reason"].str.len() > 0).all()
    assert (manifest.loc[manifest.status == "ok", "reason"] == "").sum() == 56
    ok = manifest.status == "ok"
    assert manifest.loc[ok, "cache_index"].tolist() == list(range(58))
    assert (manifest.loc[~ok, "cache_index"] == -1).all()
    assert manifest.loc[ok, "n_frames"].tolist() == [12] * 56 + [5, 12]
    assert manifest.set_index("video_id").loc["bad/label", "label_idx"] == -1
    assert (manifest.loc[ok, "label_idx"] == manifest.loc[ok, "label"].map(classes.index)).all()
    # what was written on disk is what was returned
    disk = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert disk["video_id"].tolist() == manifest["video_id"].tolist()
    assert disk["status"].tolist() == manifest["status"].tolist()
    assert sorted(p.name for p in out.iterdir()) == ["classes.csv", "clips.npy", "manifest.csv"]  # no temp files


def test_clips_content(cache, inputs):
    out, manifest = cache
    clips = np.load(out / "clips.npy")
    assert clips.dtype == np.uint8 and clips.shape == (58, 12, 32, 32, 3)
    for vid in (manifest.video_id[0], manifest.video_id[30], "bad/short", "bad/w48"):
        row = manifest.set_index("video_id").loc[vid]
        frames, _ = read_uniform(row.path, 12, "pyav")
        np.testing.assert_array_equal(clips[row.cache_index], resize_crop(frames, 32))
    # the short 40x64 clip: centre square, resized; its 5 frames stretched over 12 in order
    short = clips[manifest.set_index("video_id").loc["bad/short", "cache_index"]]
    assert [int(np.abs(short[i].astype(int) - short[i + 1]).sum() == 0) for i in range(11)].count(1) == 7


def test_classes_and_splits(cache):
    out, manifest = cache
    table = load_classes(out)
    assert table.columns.tolist() == ["index", "name", "kind"]
    assert table["index"].tolist() == list(range(14)) and table["kind"].value_counts().to_dict() == {"motion": 10, "appearance": 4}
    ok = manifest[manifest.status == "ok"]
    assert set(ok.split) == {"train", "val", "test"}
    per_class = ok.groupby(["label", "split"]).size().unstack(fill_value=0)
    # builtin: 3 train videos per class -> round(3 * 0.25) = 1 val, 2 train; 1 test
    assert (per_class.loc[per_class.index != "disk", "val"] == 1).all()
    assert (per_class["test"] >= 1).all()
    assert not manifest.loc[manifest.status != "ok", "calib"].any()
    assert ok.loc[ok.calib, "split"].eq("train").all()  # calibration videos are training videos
    assert ok[ok.calib].groupby("label").size().min() >= 1  # round(2 * 0.2) -> at least one per class
    assert not ok[ok.split != "train"].calib.any()


def test_deterministic_and_inline_equals_parallel(cache, inputs, tmp_path):
    out, manifest = cache
    videos, classes, kinds = inputs
    again = preprocess(videos, classes, tmp_path, cache_frames=12, size=32, workers=1, class_kinds=kinds, progress=False)
    pd.testing.assert_frame_equal(again, manifest)
    assert (tmp_path / "manifest.csv").read_bytes() == (out / "manifest.csv").read_bytes()
    np.testing.assert_array_equal(np.load(tmp_path / "clips.npy"), np.load(out / "clips.npy"))
    other = preprocess(videos[:56], classes, tmp_path / "s1", cache_frames=12, size=32, seed=1, workers=1, progress=False)
    assert not other["split"].equals(manifest["split"][:56])  # another seed, another val draw


def test_bad_input_is_logged_and_counted(inputs, tmp_path, caplog, capsys):
    videos, classes, _ = inputs
    sub = videos.iloc[list(range(0, 56, 8)) + list(range(56, 63))].reset_index(drop=True)
    with caplog.at_level(logging.WARNING, logger="stfusion.data"):
        preprocess(sub, classes, tmp_path, cache_frames=8, size=16, workers=1, progress=False)
    text = caplog.text
    for vid in ("bad/truncated", "bad/text", "bad/empty", "bad/absent", "bad/label", "bad/w48"):
        assert vid in text, vid
    fallbacks = [r.getMessage() for r in caplog.records if "used PyAV instead" in r.getMessage()]
    assert len(fallbacks) == 1 and "bad/w48" in fallbacks[0], fallbacks  # each decoder fallback logged once
    summary = capsys.readouterr().out
    assert "preprocess: 9/14 videos cached" in summary
    assert "empty=1, missing=1, unknown_label=1, unreadable=2" in summary
    assert "1 short: fewer than 8 frames, repeated in order to fill the cache, and used); skipped: " in summary


def test_all_bad_raises_and_keeps_previous_outputs(inputs, cache, tmp_path):
    videos, classes, _ = inputs
    out, _ = cache
    shutil.copytree(out, tmp_path / "c")
    before = {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()}
    with pytest.raises(StfusionError, match=r"no usable video among 4 \(empty=1, missing=1, unreadable=2\)"):
        preprocess(videos.iloc[58:62], classes, tmp_path / "c", cache_frames=12, size=32, workers=2, progress=False)
    after = {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()}
    assert after == before  # nothing half-written, nothing replaced
    with pytest.raises(StfusionError, match="needs columns"):
        preprocess(videos.drop(columns="split"), classes, tmp_path / "d", cache_frames=12, size=32)
    with pytest.raises(StfusionError, match="cache_frames"):
        preprocess(videos, classes, tmp_path / "d", cache_frames=0, size=32)


# ------------------------------------------------------------------------------------------- dataset
def _pixels(x: torch.Tensor) -> np.ndarray:
    """A uint8 item (3, T, H, W) as frames (T, H, W, 3)."""
    assert x.dtype == torch.uint8
    return x.permute(1, 2, 3, 0).numpy()


def test_dataset_items_and_labels(cache):
    out, manifest = cache
    clips = np.load(out / "clips.npy")
    ds = ClipDataset(out, "test", frames=8, train=False)
    rows = manifest[(manifest.status == "ok") & (manifest.split == "test")]
    assert len(ds) == len(rows) and ds.num_classes == 14
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == rows.label_idx.tolist()
    x, y = ds[3]
    assert x.shape == (3, 8, 32, 32) and x.dtype == torch.uint8 and isinstance(y, int)
    np.testing.assert_array_equal(_pixels(x), clips[rows.cache_index.iloc[3], 2:10])  # centre clip of 12
    z = normalize(x[None], "cpu")[0]  # the network's input: (x - MEAN) / STD on the device
    assert z.dtype == torch.float32 and abs(float(z.mean())) < 1.0 and 0.3 < float(z.std()) < 2.0
    m, s = torch.tensor(MEAN).view(3, 1, 1, 1), torch.tensor(STD).view(3, 1, 1, 1)
    torch.testing.assert_close(z, (x.float() - m) / s)
    torch.manual_seed(0)
    assert torch.equal(ds[3][0], x)  # evaluation is deterministic
    assert len(ClipDataset(out, "train", frames=8, calib_only=True)) == int((manifest.calib & (manifest.status == "ok")).sum())
    loader = torch.utils.data.DataLoader(ds, batch_size=5)
    xb, yb = next(iter(loader))
    assert xb.shape == (5, 3, 8, 32, 32) and yb.tolist() == rows.label_idx.tolist()[:5]


def test_dataset_training_randomness_follows_torch_rng(cache):
    out, manifest = cache
    clips = np.load(out / "clips.npy")
    ds = ClipDataset(out, "train", frames=4, stride=2)
    torch.manual_seed(1)
    a = [ds[0][0] for _ in range(12)]
    torch.manual_seed(1)
    b = [ds[0][0] for _ in range(12)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    video = clips[ds.manifest.cache_index[0]]
    starts = set()
    for x in a:  # each item is a dense clip with stride 2 from some start; no flip without flip=True
        px = _pixels(x)
        match = [s for s in range(12 - 6) if np.array_equal(px, video[s : s + 7 : 2])]
        assert len(match) == 1
        starts.add(match[0])
    assert len(starts) > 1
    flips = ClipDataset(out, "train", frames=12, flip=True)
    torch.manual_seed(2)
    seen = {np.array_equal(_pixels(flips[0][0]), video[:, :, ::-1]) for _ in range(20)}
    assert seen == {True, False}
    seg = ClipDataset(out, "train", frames=4, sampling="segment")
    px = _pixels(seg[0][0])
    assert all(any(np.array_equal(px[k], video[i]) for i in range(3 * k, 3 * k + 3)) for k in range(4))


def test_dataset_views(cache):
    out, _ = cache
    clips = np.load(out / "clips.npy")
    ds = ClipDataset(out, "val", frames=4, stride=2, train=False, view=ViewSpec("test", clips=3))
    views = ds[0][0]
    assert views.shape == (3, 3, 4, 32, 32)
    video = clips[ds.manifest.cache_index[0]]
    for k, idx in enumerate(test_clips(12, 4, 2, 3)):
        np.testing.assert_array_equal(_pixels(views[k]), video[idx])
    centre = ClipDataset(out, "val", frames=4, stride=2, train=False)
    assert torch.equal(views[1], centre[0][0])  # the middle of three views is the evaluation clip
    crops = ClipDataset(out, "val", frames=4, stride=2, train=False, view=ViewSpec("test", crop=24, crops=3))
    x = crops[0][0]
    assert x.shape == (3, 3, 4, 24, 24)  # left, centre, right of the centre clip
    for k, left in enumerate((0, 4, 8)):
        np.testing.assert_array_equal(_pixels(x[k]), video[test_clips(12, 4, 2, 1)[0], 4:28, left : left + 24])


def test_dataset_errors(cache, tmp_path):
    out, _ = cache
    with pytest.raises(StfusionError, match="more than the 12 frames"):
        ClipDataset(out, "train", frames=16)
    with pytest.raises(StfusionError, match="unknown split"):
        ClipDataset(out, "validation", frames=8)
    with pytest.raises(StfusionError, match="run the preprocessing step first"):
        ClipDataset(tmp_path, "train", frames=8)
