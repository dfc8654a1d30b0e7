"""The ``videos`` storage at run time: on-the-fly decoding of prepared files, the train / eval / test views,
multi-view testing, and a file damaged after preparation (replacement in training, a clear stop in scoring)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from stfusion.data.dataset import MEAN, STD, ClipDataset
from stfusion.data.sampling import TorchRNG, segment_test_clips, spatial_crops, test_clips, train_indices
from stfusion.data.transforms import (ViewSpec, crop_boxes, inference_clip_shape, normalize, reported_views,
                                      view_from_params, views_text)
from stfusion.data.video import read_frames, write_video
from stfusion.data.video_dataset import (ClipDecodeError, DecodeFailures, VideoDataset, decode_size, open_clips,
                                         split_failures)
from stfusion.errors import StfusionError
from stfusion.config.settings import Settings
from stfusion.models import build_model
from stfusion.scoring.prefix import score_strategies_prefix
from stfusion.engine.evaluation import eval_loader, evaluate, view_logits
from stfusion.scoring.naive import score_strategies
from stfusion.core.strategies import families
from stfusion.engine.train import TrainConfig, batches_per_epoch, epoch_loader, epoch_order, fit

from conftest import settings_with
from conftest_data import write_clip

H, W, N_FRAMES = 48, 64, 12  # prepared at short side 48
SPLITS = {"train": 6, "val": 3, "test": 3}


def write_prepared(folder, h=H, w=W, n=N_FRAMES, content=None) -> pd.DataFrame:
    """A ``videos`` folder as preparation leaves it: lossless mp4 files, manifest.csv, classes.csv, storage.json.
    Returns the manifest with a ``frames_data`` column holding each video's decoded frames. ``content(n, h, w,
    seed)``: the frames (default :func:`conftest_data.smooth_frames`)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, seed = [], 0
    for split, count in SPLITS.items():
        for k in range(count):
            rel = f"videos/{split}_{k}.mp4"
            if content is None:
                frames = write_clip(folder / rel, n=n, h=h, w=w, seed=seed)
            else:
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                frames = content(n, h, w, seed)
                write_video(folder / rel, frames)
            rows.append({"id": f"{split}_{k}", "path": rel, "label": f"c{k % 2}", "label_idx": k % 2, "split": split,
                         "calib": k < 2, "frames": n, "fps": 12, "width": w, "height": h, "status": "ok",
                         "reason": "", "frames_data": frames})
            seed += 1
    df = pd.DataFrame(rows)
    df.drop(columns="frames_data").to_csv(folder / "manifest.csv", index=False)
    pd.DataFrame({"index": [0, 1], "name": ["c0", "c1"], "kind": ["", ""]}).to_csv(folder / "classes.csv", index=False)
    (folder / "storage.json").write_text(json.dumps({"storage": "videos"}))
    return df


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prepared")
    return folder, write_prepared(folder)


def _frames_of(manifest, split, i):
    return manifest[manifest.split == split].iloc[i]["frames_data"]


def test_storage_json_picks_the_dataset(prepared, tmp_path):
    folder, _ = prepared
    data = settings_with({"data": {"frames": 4, "stride": 2, "size": 32, "crop": 32, "train_short_side": [40, 56],
                                   "flip": True}}).data
    ds = open_clips(data, folder, "train", train=True)
    assert isinstance(ds, VideoDataset) and len(ds) == 6 and ds.view == ViewSpec("train", 32, (40, 56), True)
    (tmp_path / "storage.json").write_text(json.dumps({"storage": "tape"}))
    with pytest.raises(StfusionError, match="storage must be cache or videos"):
        open_clips(data, tmp_path, "train", train=True)


def test_eval_view_is_the_centre_crop_and_never_varies(prepared):
    folder, manifest = prepared
    ds = VideoDataset(folder, "val", frames=4, stride=2, train=False, view=ViewSpec("eval", crop=32))
    x, y = ds[1]
    assert x.dtype == torch.uint8 and x.shape == (3, 4, 32, 32) and y == 1
    video = _frames_of(manifest, "val", 1)
    t = test_clips(N_FRAMES, 4, 2, 1)[0]
    box = spatial_crops(H, W, 32, 1)[0]  # (8, 16, 40, 48): no short side, no resize
    np.testing.assert_array_equal(x.permute(1, 2, 3, 0).numpy(), video[t, box[0]:box[2], box[1]:box[3]])
    torch.manual_seed(3)
    assert torch.equal(ds[1][0], x)
    scaled = VideoDataset(folder, "val", frames=4, stride=2, train=False,
                          view=view_from_params(settings_with({"data": {"size": 32, "eval_crop": 24,
                                                                           "eval_short_side": 36}}).data, "eval"))
    a = scaled[1][0]
    assert a.shape == (3, 4, 24, 24) and torch.equal(scaled[1][0], a)


def test_costs_are_counted_at_the_evaluation_clip(prepared):
    """The input size of costs is the clip evaluation feeds the network, not the training crop."""
    folder, _ = prepared
    data = settings_with({"data": {"frames": 4, "stride": 2, "size": 32, "crop": 24, "train_short_side": [40, 48],
                                   "eval_crop": 32, "eval_short_side": 40}}).data
    val = open_clips(data, folder, "val", train=False)
    assert inference_clip_shape(data) == tuple(val[0][0].shape) == (3, 4, 32, 32)
    assert open_clips(data, folder, "train", train=True)[0][0].shape == (3, 4, 24, 24)


def test_train_crops_vary(prepared):
    folder, _ = prepared
    ds = VideoDataset(folder, "train", frames=4, stride=2, train=True,
                      view=ViewSpec("train", crop=32, short_side=(36, 48), flip=True))
    torch.manual_seed(0)
    items = [ds[0] for _ in range(8)]
    assert all(x.shape == (3, 4, 32, 32) and x.dtype == torch.uint8 and y == 0 and f == "" for x, y, f in items)
    assert len({x.numpy().tobytes() for x, _, _ in items}) == 8  # scale, position, flip and start all drawn
    torch.manual_seed(0)
    again = [ds[0][0] for _ in range(8)]
    assert all(torch.equal(a, b) for (a, _, _), b in zip(items, again))  # from torch's RNG: reproducible


def test_test_views_come_from_one_decode(prepared, monkeypatch):
    folder, manifest = prepared
    ds = VideoDataset(folder, "test", frames=4, stride=2, train=False, view=ViewSpec("test", crop=32, clips=2, crops=3))
    decoded = []
    real = ds._decode
    monkeypatch.setattr(ds, "_decode", lambda i, t: decoded.append(t.copy()) or real(i, t))
    x, _ = ds[2]
    assert x.shape == (6, 3, 4, 32, 32) and len(decoded) == 1
    clips = test_clips(N_FRAMES, 4, 2, 2)
    np.testing.assert_array_equal(decoded[0], np.unique(clips))
    video = _frames_of(manifest, "test", 2)
    for v, (c, box) in enumerate((c, b) for c in range(2) for b in spatial_crops(H, W, 32, 3)):
        np.testing.assert_array_equal(x[v].permute(1, 2, 3, 0).numpy(), video[clips[c], box[0]:box[2], box[1]:box[3]])
    seg = VideoDataset(folder, "test", frames=3, sampling="segment", train=False, view=ViewSpec("test", crop=32, clips=2))
    np.testing.assert_array_equal(segment_test_clips(N_FRAMES, 3, 2), [[1, 5, 9], [3, 7, 11]])
    box = spatial_crops(H, W, 32, 1)[0]
    xs = seg[0][0]
    assert xs.shape == (2, 3, 3, 32, 32)
    np.testing.assert_array_equal(xs[1].permute(1, 2, 3, 0).numpy(),
                                  _frames_of(manifest, "test", 0)[[3, 7, 11], box[0]:box[2], box[1]:box[3]])
    assert views_text(2, 3) == "2 clips x 3 crops"
    assert views_text(1, 1) == "1 clip x 1 crop"
    assert reported_views(settings_with({"data": {"test_clips": 2, "test_crops": 3}}).data) == {
        "test_views": "2 clips x 3 crops", "test_clips": 2, "test_crops": 3}


def test_multi_view_score_is_the_mean_of_single_view_softmaxes(prepared, tiny_params):
    folder, _ = prepared
    torch.manual_seed(0)
    model = build_model(Settings.for_stage(tiny_params), 2).eval()
    ds = VideoDataset(folder, "test", frames=4, stride=2, train=False, view=ViewSpec("test", crop=32, clips=2, crops=3))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        singles = torch.stack([model(normalize(x[:, v], "cpu")).softmax(-1) for v in range(6)])  # (6, N, C)
        averaged = view_logits(model, normalize(x, "cpu")).exp()
    torch.testing.assert_close(averaged, singles.mean(0), rtol=1e-5, atol=1e-6)
    res = evaluate(model, eval_loader(ds, 2), 2, "cpu")
    nll = -singles.mean(0)[torch.arange(len(y)), y].log().mean()
    assert res["n"] == 3 and res["top1"] == pytest.approx(float((singles.mean(0).argmax(1) == y).double().mean()))
    assert res["loss"] == pytest.approx(float(nll), rel=1e-5)
    # the prefix-shared scorer averages the views the same way
    strategies = list(families(model.n_fusion_layers).values())[:3]
    kw = dict(model=model, strategies=strategies, val_loader=eval_loader(ds, 2), num_classes=2, recalibrate=False,
              progress=False)
    naive, prefix = score_strategies(**kw), score_strategies_prefix(**kw)
    assert prefix.attrs["prefix_shared"]
    pd.testing.assert_frame_equal(naive, prefix, rtol=1e-5)


def _damaged(tmp_path, split="train", index=1):
    folder = tmp_path / "prepared"
    manifest = write_prepared(folder)
    path = folder / manifest[manifest.split == split].iloc[index]["path"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # truncated after preparation
    return folder, manifest, path


def test_damaged_file_is_replaced_in_training_and_stops_scoring(tmp_path, caplog):
    folder, manifest, bad = _damaged(tmp_path)
    ds = VideoDataset(folder, "train", frames=4, stride=2, train=True, view=ViewSpec("train", crop=32))
    x, y, failure = ds[1]
    assert str(bad) in failure and x.shape == (3, 4, 32, 32)
    assert y == int(manifest[manifest.split == "train"].iloc[2]["label_idx"])  # the next video of the split
    assert ds[0][2] == ""
    # scoring: retried, then one line naming the file, also from a worker process
    calib = VideoDataset(folder, "train", frames=4, stride=2, train=False, view=ViewSpec("eval", crop=32))
    with pytest.raises(ClipDecodeError, match=r"cannot decode .*train_1\.mp4") as err:
        list(eval_loader(calib, 2, workers=1))
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)


def test_decode_failures_are_counted_and_stop_training_past_the_limit(tmp_path, tiny_params, caplog):
    folder, _, bad = _damaged(tmp_path)
    torch.manual_seed(0)
    model = build_model(Settings.for_stage(tiny_params), 2)
    cfg = TrainConfig(epochs=2, batch_size=3, lr=0.01, device="cpu", loader_workers=1)
    ds = VideoDataset(folder, "train", frames=4, stride=2, view=ViewSpec("train", crop=32), max_decode_failures=0.2)
    with caplog.at_level(logging.WARNING):
        hist = fit(model, ds, cfg, tmp_path / "run", progress=False)
    # the damaged video, once an epoch (1 of 6 <= 0.2), counted in the training process from a worker's batches
    assert list(hist["decode_failures"]) == [1, 1]
    assert list(pd.read_csv(tmp_path / "run" / "history.csv")["decode_failures"]) == [1, 1]
    assert str(bad) in caplog.text
    strict = VideoDataset(folder, "train", frames=4, stride=2, view=ViewSpec("train", crop=32), max_decode_failures=0.1)
    with pytest.raises(StfusionError, match=rf"training stopped: 1 of the epoch's 6 videos failed .*{bad.name}"):
        fit(build_model(Settings.for_stage(tiny_params), 2), strict,
            TrainConfig(epochs=1, batch_size=3, lr=0.01, device="cpu"), tmp_path / "strict", progress=False)


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    from stfusion.data.cache import preprocess

    tmp_path = tmp_path_factory.mktemp("small_cache")
    videos = []
    for k in range(10):
        write_clip(tmp_path / "src" / f"{k}.mp4", n=8, h=32, w=40, seed=k)
        videos.append({"video_id": str(k), "path": str(tmp_path / "src" / f"{k}.mp4"), "label": f"c{k % 2}",
                       "split": "train" if k < 8 else "test"})
    preprocess(pd.DataFrame(videos), ["c0", "c1"], tmp_path / "cache", cache_frames=8, size=32, workers=1,
               val_fraction=0.0, progress=False)
    return tmp_path


class _FloatItems(torch.utils.data.Dataset):
    """The former items of the cache dataset: float32, normalised in the dataset (per item, on the CPU)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i]
        return x.float().sub_(MEAN[0]).mul_(1.0 / STD[0]), y


def test_uint8_items_train_exactly_as_float_items_did(small_cache, tiny_params):
    """Normalising on the device after the copy changes no number of a training run on the cache."""
    ds = ClipDataset(small_cache / "cache", "train", frames=4, flip=True)
    cfg = TrainConfig(epochs=2, warmup_epochs=1, batch_size=4, lr=0.05, kl_k=5.0, device="cpu")
    histories = []
    for k, data in enumerate((ds, _FloatItems(ds))):
        torch.manual_seed(0)
        model = build_model(Settings.for_stage(tiny_params), 2)
        histories.append(fit(model, data, cfg, small_cache / f"run{k}", progress=False))
    pd.testing.assert_frame_equal(histories[0].drop(columns="seconds"), histories[1].drop(columns="seconds"),
                                  check_exact=True)
    assert (histories[0]["kl"] > 0).any()  # the gated epoch ran


def test_cache_views_keep_the_default_and_crop_where_asked(small_cache):
    tmp_path = small_cache
    whole = ClipDataset(tmp_path / "cache", "train", frames=4)
    cropped = ClipDataset(tmp_path / "cache", "train", frames=4, view=ViewSpec("train", crop=24, short_side=(40, 48)))
    torch.manual_seed(0)
    a = whole[0][0]
    torch.manual_seed(0)
    default = ClipDataset(tmp_path / "cache", "train", frames=4, view=ViewSpec("train", crop=32))
    assert torch.equal(default[0][0], a)  # crop == side: the identity, and the same random numbers
    assert cropped[0][0].shape == (3, 4, 24, 24)
    test = ClipDataset(tmp_path / "cache", "test", frames=4, train=False, view=ViewSpec("test", crop=40, clips=2, crops=3))
    assert test[0][0].shape == (6, 3, 4, 32, 32)  # a crop larger than the cache is the whole frame


# ------------------------------------------------------------------ several training clips from one decode
def _old_cut(frames, box, size, flip):
    """A view as the loader cut it before clips_per_decode: numpy's mirror, a channels-first copy, then the
    antialiased bilinear resize; ``uint8 (3, T, size, size)``."""
    top, left, bottom, right = box
    region = frames[:, top:bottom, left:right]
    x = torch.from_numpy(np.ascontiguousarray(region[:, :, ::-1] if flip else region)).permute(0, 3, 1, 2)
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x.contiguous(), size=(size, size), mode="bilinear", align_corners=False,
                                            antialias=True)
    return x.permute(1, 0, 2, 3).contiguous()


def _expected_clips(video, view, k, seed):
    """The ``k`` clips an item should hold under ``seed``: one draw of the frames, then ``k`` draws of box and
    flip in turn, cut from the lossless video's frames ``(T, H, W, 3)``."""
    torch.manual_seed(seed)
    rng = TorchRNG()
    frames = video[train_indices(N_FRAMES, 4, 2, rng)]
    clips = []
    for _ in range(k):
        box = [int(v) for v in crop_boxes(H, W, view, rng)[0]]
        flip = bool(torch.rand(()) < 0.5)
        clips.append(_old_cut(frames, box, view.crop, flip))
    return torch.stack(clips)


class _CountedDecodes(VideoDataset):
    """The videos storage, counting its (real) decodes."""

    decodes = 0

    def _decode(self, i, t):
        self.decodes += 1
        return super()._decode(i, t)


VIEW = ViewSpec("train", crop=32, short_side=(40, 56), flip=True)  # a resize and a mirror half of the time


def test_one_clip_per_decode_is_the_clip_of_earlier_versions(prepared):
    folder, manifest = prepared
    ds = VideoDataset(folder, "train", frames=4, stride=2, view=VIEW)
    for seed in range(6):
        torch.manual_seed(seed)
        x, y, _ = ds[seed % 6]
        assert y == seed % 2 and torch.equal(x, _expected_clips(_frames_of(manifest, "train", seed % 6), VIEW, 1,
                                                                 seed)[0]), seed


def test_k_clips_per_decode_are_k_views_of_one_decode(prepared):
    folder, manifest = prepared
    ds = _CountedDecodes(folder, "train", frames=4, stride=2, view=VIEW, clips_per_decode=3)
    torch.manual_seed(5)
    x, y, failure = ds[4]
    assert x.shape == (3, 3, 4, 32, 32) and y == 0 and failure == "" and ds.decodes == 1
    assert torch.equal(x, _expected_clips(_frames_of(manifest, "train", 4), VIEW, 3, 5))
    assert len({c.numpy().tobytes() for c in x}) == 3


def _epoch(ds, batch_size, k):
    """The batches of epoch 0 of a training loader over ``ds`` at ``k`` clips an item, and the decodes."""
    ds.clips_per_decode, ds.decodes = k, 0
    batches = [split_failures(b) for b in epoch_loader(ds, TrainConfig(epochs=1, batch_size=batch_size, lr=0.1), 0)]
    return batches, ds.decodes


@pytest.mark.parametrize("batch_size,k", [(2, 2), (4, 2), (8, 2), (8, 4)])
def test_an_epoch_keeps_its_clips_and_batches_at_k_clips_a_decode(prepared, batch_size, k):
    folder, _ = prepared
    ds = _CountedDecodes(folder, "train", frames=4, stride=2, view=VIEW)
    one, one_decodes = _epoch(ds, batch_size, 1)
    many, decodes = _epoch(ds, batch_size, k)
    cfg = TrainConfig(epochs=1, batch_size=batch_size, lr=0.1)
    assert len(many) == len(one) == batches_per_epoch(6, cfg)
    assert [len(x) for x, _, _ in many] == [len(x) for x, _, _ in one] and len(one[0][0]) == min(batch_size, 6)
    assert one_decodes == sum(len(x) for x, _, _ in one) and decodes == -(-one_decodes // k)
    assert all(x.shape == (len(y), 3, 4, 32, 32) for x, y, _ in many)
    videos = epoch_order(6, cfg, 0)[:decodes]  # the first 1/k of the epoch's order, k clips each, in turn
    labels = torch.from_numpy(ds._labels[videos]).repeat_interleave(k)[:len(one[0][0]) * len(one)]
    assert torch.equal(torch.cat([y for _, y, _ in many]), labels)


def test_k_clips_per_decode_train_and_count_failures_per_video(tmp_path, tiny_params):
    folder, _, bad = _damaged(tmp_path)
    torch.manual_seed(0)
    model = build_model(Settings.for_stage(tiny_params), 2)
    ds = VideoDataset(folder, "train", frames=4, stride=2, view=VIEW, clips_per_decode=2, max_decode_failures=0.5)
    hist = fit(model, ds, TrainConfig(epochs=2, batch_size=4, lr=0.01, device="cpu", loader_workers=1),
               tmp_path / "run", progress=False)
    assert len(hist) == 2 and hist["decode_failures"].isin([0, 1]).all() and np.isfinite(hist["loss"]).all()
    strict = DecodeFailures(ds, 4)  # 4 clips of 2 videos: one failed video is half of them
    strict.limit = 0.49
    with pytest.raises(StfusionError, match=rf"1 of the epoch's 2 videos failed .*{bad.name}"):
        strict.add([f"{bad}: damaged"])


@pytest.mark.parametrize("value", [0, -2, "two", 1.5, None])
def test_a_bad_clips_per_decode_is_refused_naming_the_key(prepared, value):
    with pytest.raises(StfusionError, match=r"^invalid parameter data\.clips_per_decode: ") as err:
        settings_with({"data": {"clips_per_decode": value}})
    assert "\n" not in str(err.value)
    folder, _ = prepared
    with pytest.raises(StfusionError, match=r"^data\.clips_per_decode must be a whole number"):
        VideoDataset(folder, "train", frames=4, view=VIEW, clips_per_decode=value)


def test_clips_per_decode_must_divide_the_batch_and_train_views_only(prepared, tiny_params, tmp_path):
    folder, _ = prepared
    ds = VideoDataset(folder, "train", frames=4, stride=2, view=VIEW, clips_per_decode=2)
    model = build_model(Settings.for_stage(tiny_params), 2)
    with pytest.raises(StfusionError, match=r"^data\.clips_per_decode = 2 does not divide the 3 clips of a batch"):
        fit(model, ds, TrainConfig(epochs=1, batch_size=3, lr=0.01, device="cpu"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(StfusionError, match=r"^data\.clips_per_decode = 2 applies to training clips only"):
        VideoDataset(folder, "val", frames=4, train=False, view=ViewSpec("eval", crop=32), clips_per_decode=2)
    data = settings_with({"data": {"frames": 4, "stride": 2, "size": 32, "clips_per_decode": 2}}).data
    assert open_clips(data, folder, "train", train=True).clips_per_decode == 2
    assert open_clips(data, folder, "train", train=True, views="eval").clips_per_decode == 1  # BN calibration
    assert open_clips(data, folder, "val", train=False)[0][0].shape == (3, 4, 32, 32)


# ------------------------------------------------------------------ files larger than a view needs
def _low_frequency(n, h, w, seed):
    """``uint8 (n, h, w, 3)``: colour waves of a few cycles a frame, moving: content a rescale keeps."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    waves = [[127 + 100 * np.sin(0.06 * x + 0.04 * (c + 1) * y + 0.3 * t + seed) for c in range(3)] for t in range(n)]
    return np.clip(np.array(waves).transpose(0, 2, 3, 1), 0, 255).astype(np.uint8)


def test_files_larger_than_the_view_are_decoded_at_its_short_side(tmp_path):
    manifest = write_prepared(tmp_path, h=96, w=128, content=_low_frequency)  # short side 96
    ds = VideoDataset(tmp_path, "val", frames=4, stride=2, train=False, view=ViewSpec("eval", 48, (64, 64)))
    t = test_clips(N_FRAMES, 4, 2, 1)[0]
    decoded = read_frames(tmp_path / "videos" / "val_0.mp4", t, size=(85, 64))
    assert ds._decode(0, t).shape == decoded.shape == (4, 64, 85, 3)
    x = ds[0][0]
    top, left, bottom, right = spatial_crops(64, 85, 48, 1)[0]  # exact: the centre 48 pixels at short side 64
    np.testing.assert_array_equal(x.permute(1, 2, 3, 0).numpy(), decoded[:, top:bottom, left:right])
    full = [int(v) for v in spatial_crops(96, 128, 72, 1)[0]]  # the same view of the full-size frames
    expected = _old_cut(_frames_of(manifest, "val", 0)[t], full, 48, False)
    shifted = _old_cut(_frames_of(manifest, "val", 0)[t], [v + 4 for v in full], 48, False)
    error, wrong = ((x.float() - e.float()).abs() for e in (expected, shifted))
    assert error.mean() < 4 and error.max() < 16 and wrong.mean() > 20  # up to interpolation; a 4 px shift is not
    train = VideoDataset(tmp_path, "train", frames=4, stride=2, view=ViewSpec("train", 32, (40, 64), flip=True))
    assert train._decode(0, t).shape == (4, 64, 85, 3) and train[0][0].shape == (3, 4, 32, 32)
    same = VideoDataset(tmp_path, "val", frames=4, stride=2, train=False, view=ViewSpec("eval", 48, (96, 128)))
    assert same._decode(0, t).shape == (4, 96, 128, 3)  # never scaled up


def test_decode_size_keeps_the_aspect_and_avoids_decords_bad_widths():
    assert decode_size(128, 96, 64) == (85, 64) and decode_size(120, 160, 60) == (60, 80)  # portrait
    assert decode_size(128, 96, 96) is None and decode_size(0, 0, 64) is None and decode_size(128, 96, None) is None
    assert decode_size(64, 48, 36) is None  # width 48: decord 0.6.0 returns 4 channels
