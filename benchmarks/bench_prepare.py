"""Videos storage: what the preparation (``stfusion.data.prepare_videos``) buys and costs, on generated footage-like
video (a smooth texture panned across the frame with a moving disk and sensor noise, encoded at CRF 23 like
downloaded video, with an audio track).

    python benchmarks/bench_prepare.py [--quick]

* ``prepared_seek_speedup``: time to decode a random training clip (16 consecutive frames of a 10-s video at
  short side 128, decord, a fresh reader per clip as DataLoader workers do) from files with a 250-frame key-frame
  interval (x264's default) over the same from the prepared files (a key frame every 16): information, no goal
  (2.2-3.1 over many runs; what remains is decord's fixed cost a call).
* ``prepared_bytes``: bytes of the prepared files (short side 256) over the bytes of the 480x360 sources:
  goal <= 1.
* ``prepare_peak_memory``: the memory preparing 4x the videos adds (the process's own peak, ``VmHWM``, over its
  size once the imports are done) over the same for 1x, each in a fresh process: goal <= 1.15 (memory flat in
  the dataset size).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

from video_factory import textured_frames, write_source  # noqa: E402

from stfusion.data.prepare_videos import reencode  # noqa: E402
from stfusion.data.video import read_frames  # noqa: E402


def seek_speedup(tmp: Path, *, videos: int, frames: int, clips: int, short_side: int = 128, seed: int = 0) -> dict:
    """Random-clip decode time of long-GOP sources over prepared files of the same videos (same size)."""
    long_gop, prepared = [], []
    width = short_side * 4 // 3 // 2 * 2
    for k in range(videos):
        src = write_source(tmp / f"seek{short_side}-{k}.mp4", textured_frames(frames, short_side, width, seed=k), 30,
                           keyint=250)
        long_gop.append(src)
        prepared.append(tmp / f"seek{short_side}-{k}-prepared.mp4")
        reencode(src, prepared[-1], short_side)
    rng = np.random.default_rng(seed)
    draws = [(int(rng.integers(videos)), int(rng.integers(0, frames - 16))) for _ in range(clips)]

    read_frames(long_gop[0], [0]), read_frames(prepared[0], [0])  # warm-up
    spent = {"long": 0.0, "prepared": 0.0}
    for v, s in draws:  # interleaved, so that load from other processes falls on both alike
        for kind, files in (("long", long_gop), ("prepared", prepared)):
            start = time.perf_counter()
            read_frames(files[v], np.arange(s, s + 16))
            spent[kind] += time.perf_counter() - start
    long_s, prepared_s = spent["long"] / clips, spent["prepared"] / clips
    return {"ratio": long_s / prepared_s, "long_s": long_s, "prepared_s": prepared_s, "clips": clips}


def prepared_bytes(tmp: Path, *, videos: int, frames: int, short_side: int = 256) -> dict:
    """Bytes of prepared files at ``short_side`` over their 480x360 sources; bytes per hour of each."""
    source = written = 0
    for k in range(videos):
        src = write_source(tmp / f"size{k}.mp4", textured_frames(frames, 360, 480, seed=10 + k), 30)
        out = tmp / f"size{k}-prepared.mp4"
        reencode(src, out, short_side)
        source += src.stat().st_size
        written += out.stat().st_size
    hours = videos * frames / 30 / 3600
    small = tmp / "size0-prepared-128.mp4"
    reencode(tmp / "size0.mp4", small, 128)
    return {"ratio": written / source, "source_gb_per_hour": source / hours / 1e9,
            "prepared_gb_per_hour": written / hours / 1e9,
            "prepared_128_gb_per_hour": small.stat().st_size / (frames / 30 / 3600) / 1e9}


_MEMORY_CHILD = """
import json, sys
import pandas as pd
from peak_memory import own_peak_bytes, reset_peak
from stfusion.data import prepare_videos
from stfusion.data.video import read_frames
leak, out, paths = sys.argv[1] == "leak", sys.argv[2], sys.argv[3:]
if leak:  # the faulty variant a test runs: every prepared video is decoded and kept
    kept, reencode = [], prepare_videos.reencode
    def leaky(src, dst, short_side):
        info = reencode(src, dst, short_side)
        kept.append(read_frames(dst))
        return info
    prepare_videos.reencode = leaky
videos = pd.DataFrame({"video_id": [f"v{i}" for i in range(len(paths))], "path": paths, "label": "a", "split": "train"})
before = reset_peak()
prepare_videos.prepare_shard(videos, ["a"], out, 0, 1, mode="reencode", short_side=128, clip_span=16, progress=False)
print(json.dumps({"peak": own_peak_bytes(), "before": before}))
"""


def prepare_memory(tmp: Path, *, videos: int, frames: int, leak: bool = False, repeats: int = 3) -> dict:
    """The memory ``prepare_shard`` adds (its process's own peak, ``VmHWM``, over its size just before the call,
    once the imports are done) over ``4 * videos`` videos, over the same for ``videos``, each in a fresh process.
    The 4x set repeats the 1x videos, so that a larger peak can only come from what accumulates. Each size is the
    least of ``repeats`` fresh processes: the few MiB a process's allocator and decoder threads add by chance
    (15.9 vs 18.9 MiB seen for the same work) only ever add, while a leak adds in every process. ``leak``: a
    faulty variant that keeps every prepared video decoded (the benchmark must catch it)."""
    files = [str(write_source(tmp / f"mem{k}.mp4", textured_frames(frames, 240, 320, seed=20 + k), 25))
             for k in range(videos)] * 4  # 4x: the same videos again under other ids (the same decoder peaks)

    def added(n: int, repeat: int) -> tuple[int, int]:  # a new output folder each time: prepare skips done work
        env = {"PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)]), "PATH": "/usr/bin:/bin",
               "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, "leak" if leak else "-", str(tmp / f"mem-out-{n}-{repeat}"),
                              *files[:n]], capture_output=True, text=True, check=True, cwd=HERE.parent, env=env)
        mem = json.loads(out.stdout.split("\n")[-2])
        return mem["peak"] - mem["before"], mem["peak"]

    (one, peak_one), (four, peak_four) = (min(added(n, r) for r in range(repeats)) for n in (videos, 4 * videos))
    return {"ratio": four / one, "added_1x_mb": one / 2**20, "added_4x_mb": four / 2**20,
            "peak_1x_mb": peak_one / 2**20, "peak_4x_mb": peak_four / 2**20, "videos": videos}


def run(quick: bool, names=("prepared_seek_speedup", "prepared_bytes", "prepare_peak_memory")) -> dict:
    """The measurements named in ``names`` (tiny sizes with ``quick``)."""
    jobs = {
        "prepared_seek_speedup": lambda tmp: seek_speedup(tmp, videos=2 if quick else 4, frames=120 if quick else 300,
                                                          clips=6 if quick else 40),
        "prepared_bytes": lambda tmp: prepared_bytes(tmp, videos=1 if quick else 3, frames=30 if quick else 90),
        "prepare_peak_memory": lambda tmp: prepare_memory(tmp, videos=2 if quick else 5, frames=10 if quick else 50,
                                                          repeats=1 if quick else 3),
    }
    with tempfile.TemporaryDirectory(prefix="stfusion-prepare-bench-") as name:
        return {key: job(Path(name)) for key, job in jobs.items() if key in names}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    for key, res in run(ap.parse_args().quick).items():
        print(key, {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()})
