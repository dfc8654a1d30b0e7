"""Videos storage on real files: the storage choice, re-encoding in shards (one killed with SIGKILL and run
again), packed JPEG folders, linked files, and the merged manifest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from video_factory import kinetics_like, ssv1_like, ssv2_like  # noqa: E402

from stfusion.data.builtin import CLASSES  # noqa: E402
from stfusion.data.video import read_frames
from stfusion.data.manifest import SHARD_COLUMNS, VIDEO_COLUMNS  # noqa: E402
from stfusion.data.prepare import prepare_dataset  # noqa: E402
from stfusion.data.prepare_videos import KEYINT, prepared_name, scaled_size  # noqa: E402
from stfusion.errors import StfusionError  # noqa: E402
from stfusion.config.settings import Settings
from stfusion.data.storage import BUILTIN_CLASSES, choose, read_storage  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHORT = 48


def _params(**data) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update({"storage": "videos", "short_side": SHORT, "workers": 1, "frames": 8, "stride": 2,
                           "val_fraction": 0.25, **data})
    return params


def _prepare(params: dict, **kw) -> dict:
    return prepare_dataset(Settings.from_params(params), **kw)


def _probe(path: Path) -> dict:
    """Stream types, size, rate, frame count and key-frame positions of a file, read with PyAV."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        keys = [p.is_keyframe for p in c.demux(v) if p.size]
        return {"streams": [s.type for s in c.streams], "width": v.codec_context.width,
                "height": v.codec_context.height, "rate": float(v.average_rate), "codec": v.codec_context.name,
                "pix_fmt": v.codec_context.pix_fmt, "packets": len(keys), "keys": np.flatnonzero(keys).tolist()}


# ------------------------------------------------------------------------------------------------ storage
def test_storage_choice():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert BUILTIN_CLASSES == len(CLASSES)
    info = choose(Settings.from_params(params).data, BUILTIN_CLASSES * 36)  # the built-in default stays on the cache
    assert info["storage"] == "cache" and "within" in info["reason"]
    assert info["estimate_gb"] == pytest.approx(504 * 12 * 32 * 32 * 3 / 1e9, abs=1e-4)
    k400 = {**params, "data": {**params["data"], "dataset": "kinetics400", "frames": 8, "stride": 8, "size": 224}}
    # the figure: 240k x 128 x 224 x 224 x 3 bytes = 4.6 TB
    info = choose(Settings.from_params(k400).data, 240_000)
    assert info["storage"] == "videos" and info["estimate_gb"] == pytest.approx(4624.4, rel=1e-3)
    assert "over data.cache_max_gb = 20" in info["reason"]
    explicit = {**k400, "data": {**k400["data"], "storage": "cache"}}
    assert choose(Settings.from_params(explicit).data, None)["storage"] == "cache"
    with pytest.raises(StfusionError, match="number of videos"):
        choose(Settings.from_params(k400).data, None)


def test_names_and_sizes():
    assert prepared_name("a/001", ".mp4") == Path("videos/a/001.mp4")
    assert prepared_name("../x", ".mp4") == Path("videos/_/x.mp4")
    assert scaled_size(320, 240, 128) == (170, 128) and scaled_size(240, 320, 128) == (128, 170)
    assert scaled_size(75, 51, 48) == (70, 48)
    with pytest.raises(StfusionError, match="even"):
        scaled_size(64, 48, 47)


def test_variable_frame_rate_becomes_constant(tmp_path):
    """Frames go to the output frame of their timestamp: a gap repeats the previous frame, a crowded frame is
    dropped; the output has a constant rate and key frames only every KEYINT frames."""
    from fractions import Fraction

    from stfusion.data.prepare_videos import reencode

    times_ms = [0, 40, 80, 200, 240, 250, 280]  # 25 fps with a gap after 80 ms and a frame crowding 240 ms
    src = tmp_path / "vfr.mkv"
    with av.open(str(src), "w", format="matroska") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"crf": "10"}
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 + 30 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    info = reencode(src, tmp_path / "cfr.mp4", SHORT)
    assert (info["frames"], info["fps"], info["width"], info["height"]) == (8, 25.0, 64, 48)
    levels = [int(round(f.mean() / 30 - 20 / 30)) for f in read_frames(tmp_path / "cfr.mp4", backend="pyav")]
    assert levels == [0, 1, 2, 2, 2, 3, 4, 6]  # frame 2 fills the gap, frame 5 (250 ms) shares 240 ms's slot
    assert _probe(tmp_path / "cfr.mp4")["rate"] == 25.0



def test_prepared_files_are_encoded_for_fast_decoding(tmp_path):
    """x264 writes its settings into the stream (an SEI string): the fastdecode tune turns CABAC, the deblocking
    filter and weighted prediction off, which is what makes a DataLoader worker decode 1.5-1.8x faster."""
    from video_factory import textured_frames, write_source

    from stfusion.data.prepare_videos import reencode

    src = write_source(tmp_path / "src.mp4", textured_frames(20, 48, 64, 0), audio=False)
    reencode(src, tmp_path / "fast.mp4", SHORT)
    options = (tmp_path / "fast.mp4").read_bytes().split(b"options: ", 1)[1].split(b"\0", 1)[0].decode().split()
    assert {"cabac=0", "weightb=0", "weightp=0"} <= set(options), options
    assert any(o.startswith("deblock=0") for o in options), options
    assert f"keyint={KEYINT}" in options, options

# ------------------------------------------------------------------------------- shards, kill, rerun
@pytest.fixture(scope="module")
def kinetics(tmp_path_factory):
    root = tmp_path_factory.mktemp("k400") / "data"
    clips = kinetics_like(root, seconds=[1.0, 2.0, 3.0, 1.0, 6.0, 2.5, 4.0, 1.5])  # shard 1's second video is long
    (root / "abseiling" / "broken_000000_000010.mp4").write_bytes(clips[0]["path"].read_bytes()[:2000])
    with open(root / "annotations" / "train.csv", "a") as f:
        f.write("abseiling,broken,0,10,train\nabseiling,absent,0,10,train\n")
    return root, clips


def _cli_prepare(params_file, cache, *args, wait=True):
    cmd = [sys.executable, "-m", "stfusion.cli", "prepare", "--params", str(params_file), "--cache", str(cache),
           "--no-progress", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cwd = Path(cache).parent  # the merge's timing record goes to cwd/results/timing
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _journal_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_two_shards_one_killed_and_rerun(kinetics, tmp_path):
    root, clips = kinetics
    params = _params(dataset="kinetics400", root=str(root), annotations=str(root / "annotations"), prepare_shards=2)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    cache = tmp_path / "cache"
    _cli_prepare(params_file, cache, "--shard", "0/2")

    # shard 1: killed with SIGKILL once it has finished at least one video, then run again
    journal = cache / "shards" / "journal-1-of-2.jsonl"
    proc = _cli_prepare(params_file, cache, "--shard", "1/2", wait=False)
    deadline = time.monotonic() + 120
    while _journal_lines(journal) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "shard 1 finished before it could be killed"
    assert not (cache / "shards" / "manifest-1-of-2.csv").exists()
    done = [json.loads(line) for line in journal.read_text().splitlines()]
    assert 1 <= len(done) < 5
    finished = {e["id"]: os.stat(cache / e["row"]["path"]) for e in done if e["row"]["status"] == "ok"}
    assert finished
    res = _cli_prepare(params_file, cache, "--shard", "1/2")
    assert not list(cache.rglob(".*.tmp*"))  # what the killed write left is gone
    assert f"{len(done)} already prepared" in res.stderr
    for vid, before in finished.items():  # finished files were not redone
        after = os.stat(cache / prepared_name(vid, ".mp4"))
        assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert _journal_lines(journal) == 5  # the shard's 5 videos, each journaled once
    _cli_prepare(params_file, cache, "--merge", "2")
    timing = json.loads((tmp_path / "results" / "timing" / "prepare.json").read_text())
    assert timing["jobs"] == 2 and timing["seconds"] > timing["run_seconds"] > 0  # the shards' time included

    manifest = pd.read_csv(cache / "manifest.csv", keep_default_na=False, dtype={"id": str})
    assert list(manifest.columns) == VIDEO_COLUMNS
    shard_rows = sum(len(pd.read_csv(cache / "shards" / f"manifest-{i}-of-2.csv")) for i in range(2))
    assert shard_rows == len(manifest) == len(clips) + 2
    assert list(pd.read_csv(cache / "shards" / "manifest-0-of-2.csv").columns) == SHARD_COLUMNS
    rows = manifest.set_index("id")
    assert rows.loc["broken_000000_000010", "status"] == "unreadable" and rows.loc["broken_000000_000010", "reason"]
    assert rows.loc["absent_000000_000010", "status"] == "missing"
    assert (manifest["split"] == "val").sum() == 2 and manifest["calib"].sum() >= 2
    assert set(manifest.loc[manifest["split"] == "val", "status"]) == {"ok"}
    storage = read_storage(cache)
    assert storage["storage"] == "videos" and storage["short_side"] == SHORT
    assert storage["summary"]["videos"] == len(clips) + 2 and storage["summary"]["ok"] == len(clips)
    assert storage["summary"]["hours"] == pytest.approx(sum(c["frames"] / c["fps"] for c in clips) / 3600, rel=1e-3)
    assert 0 < storage["summary"]["bytes_written"] < storage["summary"]["source_bytes"]

    for clip in clips:
        row = rows.loc[clip["name"]]
        assert (row["status"], row["split"] in ("train", "val"), row["label"]) == ("ok", clip["split"] == "train",
                                                                                   clip["label"])
        got = _probe(cache / row["path"])
        assert got["streams"] == ["video"]  # audio dropped
        assert (got["codec"], got["pix_fmt"]) == ("h264", "yuv420p")
        assert min(got["width"], got["height"]) == SHORT and (got["width"], got["height"]) == (row["width"], row["height"])
        assert got["width"] == scaled_size(clip["width"], clip["height"], SHORT)[0]
        assert got["packets"] == row["frames"] == clip["frames"]
        assert got["rate"] == pytest.approx(clip["fps"]) == pytest.approx(row["fps"])
        assert got["keys"][0] == 0 and np.all(np.diff(got["keys"] + [got["packets"]]) <= KEYINT)
        assert len(read_frames(cache / row["path"], [0, row["frames"] - 1])) == 2  # decord reads the last frame


def test_ssv1_frames_are_packed_byte_for_byte_and_ssv2_reencoded(tmp_path):
    ssv1 = tmp_path / "ssv1"
    folders = ssv1_like(ssv1)
    (ssv1 / "99").mkdir()
    (ssv1 / "99" / "00001.jpg").write_text("not a JPEG")  # a damaged frame folder: a row, not a crash
    with open(ssv1 / "something-something-v1-train.csv", "a") as f:
        f.write("99;Pushing something from left to right\n")
    summary = _prepare(_params(dataset="ssv1", root=str(ssv1), val_fraction=0.0), cache_dir=tmp_path / "c1",
                              progress=False)
    assert summary["ok"] == len(folders) and summary["bytes_ratio"] > 1.0  # the JPEG bytes plus the ZIP headers
    manifest = pd.read_csv(tmp_path / "c1" / "manifest.csv", keep_default_na=False, dtype={"id": str})
    bad = manifest.set_index("id").loc["99"]
    assert bad["status"] == "unreadable" and "00001.jpg" in bad["reason"]
    manifest = manifest[manifest["id"] != "99"]
    import zipfile

    for folder, row in zip(folders, manifest.itertuples()):
        pack = tmp_path / "c1" / row.path
        assert pack.suffix == ".jpgpack" and row.frames == folder["frames"] == len(read_frames(pack))
        with zipfile.ZipFile(pack) as z:
            assert [z.read(n) for n in z.namelist()] == [f.read_bytes() for f in sorted(folder["path"].iterdir())]
        idx = [0, row.frames // 2, row.frames - 1]
        np.testing.assert_array_equal(read_frames(pack, idx), read_frames(folder["path"], idx))

    ssv2 = tmp_path / "ssv2"
    videos = ssv2_like(ssv2)
    _prepare(_params(dataset="ssv2", root=str(ssv2), prepare_shards=3), cache_dir=tmp_path / "c2",
                    progress=False)
    manifest = pd.read_csv(tmp_path / "c2" / "manifest.csv", keep_default_na=False, dtype={"id": str})
    assert manifest["id"].tolist() == [v["id"] for v in videos]
    assert manifest["path"].tolist() == [f"videos/{v['id']}.mp4" for v in videos]
    assert manifest["frames"].tolist() == [v["frames"] for v in videos]
    assert (manifest["height"] == SHORT).all() and manifest["split"].tolist()[-1] == "test"


def test_rerun_redoes_changed_sources_and_settings_only(tmp_path):
    root = tmp_path / "ssv2"
    videos = ssv2_like(root, n=3)
    cache = tmp_path / "cache"
    params = _params(dataset="ssv2", root=str(root))
    _prepare(params, cache_dir=cache, progress=False)
    files = {v["id"]: cache / "videos" / f"{v['id']}.mp4" for v in videos}
    stamp = {vid: f.stat().st_mtime_ns for vid, f in files.items()}
    os.utime(videos[0]["path"], ns=(time.time_ns(), time.time_ns()))  # the first source changed
    files["1002"].unlink()  # a prepared file lost
    _prepare(params, cache_dir=cache, progress=False)
    assert files["1000"].stat().st_mtime_ns != stamp["1000"] and files["1002"].is_file()
    assert files["1001"].stat().st_mtime_ns == stamp["1001"]  # untouched: not redone
    params["data"]["short_side"] = 32  # other settings: everything redone
    _prepare(params, cache_dir=cache, progress=False)
    assert all(_probe(f)["height"] == 32 for f in files.values())
    assert pd.read_csv(cache / "manifest.csv")["height"].tolist() == [32, 32, 32]


def test_link_uses_the_files_as_they_are(kinetics, tmp_path):
    root, clips = kinetics
    params = _params(dataset="kinetics400", root=str(root), annotations=str(root / "annotations"), prepare="link")
    summary = _prepare(params, cache_dir=tmp_path / "cache", progress=False)
    assert summary["bytes_written"] == 0 and not (tmp_path / "cache" / "videos").exists()
    rows = pd.read_csv(tmp_path / "cache" / "manifest.csv", keep_default_na=False).set_index("id")
    for clip in clips:
        row = rows.loc[clip["name"]]
        assert Path(row["path"]) == clip["path"].resolve()
        assert (row["frames"], row["width"], row["height"]) == (clip["frames"], clip["width"], clip["height"])
        assert row["fps"] == pytest.approx(clip["fps"])
    assert rows.loc["broken_000000_000010", "status"] == "unreadable" and rows.loc["absent_000000_000010", "status"] == "missing"


def test_shards_refused_for_the_cache_and_merge_checks_coverage(kinetics, tmp_path):
    root, _ = kinetics
    params = _params(dataset="kinetics400", root=str(root), annotations=str(root / "annotations"), storage="cache")
    with pytest.raises(StfusionError, match="--shard and --merge are for videos storage"):
        _prepare(params, cache_dir=tmp_path / "cache", shard=(0, 2), progress=False)
    params["data"]["storage"] = "videos"
    with pytest.raises(StfusionError, match=r"shard manifest not found: .*manifest-0-of-2.csv"):
        _prepare(params, cache_dir=tmp_path / "cache", merge=2, progress=False)
    assert not (tmp_path / "cache" / "manifest.csv").exists()
