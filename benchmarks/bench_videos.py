"""Videos storage at run time: loader throughput per worker process and the memory of a training epoch.

    python benchmarks/bench_videos.py [--quick]
    python benchmarks/bench_videos.py --gpu-loader     # on a GPU: the training step vs the loader (8, 16 workers)

- ``video_loader_16x112``: training clips per second that one loader process delivers (decode + scale jitter +
  random crop + flip, :class:`stfusion.data.video_dataset.VideoDataset`) of 16 frames (stride 2) at 112x112 from
  files prepared at short side 128, as ``stfusion prepare`` writes them (H.264, a key frame every 16 frames);
- ``video_loader_32x224``: the same for 32 frames (stride 2) at 224x224 from files prepared at short side 256;
- ``train_epoch_memory_4x``: the memory one training epoch of a tiny template adds (the process's own peak,
  ``VmHWM``, over its size just before the epoch) over 4x the videos, over the same with 1x (each in its own
  subprocess; the manifest's rows cycle over the same prepared files at short side 256).

Clips per second are counted on the process's CPU time (one worker process on its own core; decoding runs in the
process, one decoder thread): the figure does not depend on other load of the machine. Wall-clock rates go to
stderr.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the generated test footage (tests/video_factory.py)
sys.path.insert(0, str(REPO / "benchmarks"))  # peak_memory

#: (name, short side of the prepared files, source (width, height), frames, crop, train short side range)
LOADER_CASES = (("video_loader_16x112", 128, (320, 240), 16, 112, (128, 160)),
                ("video_loader_32x224", 256, (480, 360), 32, 224, (256, 320)))
#: the clips of the training-epoch memory benchmark: 8 frames from files at short side 256 (about 2 MB decoded)
EPOCH_SHORT_SIDE, EPOCH_FRAMES = 256, 8


def prepared_folder(folder: Path, short_side: int, source_size: tuple[int, int], n_videos: int, n_frames: int,
                    rows: int | None = None) -> Path:
    """``n_videos`` generated clips re-encoded by ``stfusion prepare``'s :func:`reencode` into a videos-storage
    folder whose manifest has ``rows`` rows (default one a video; more cycle over the files), all ``train``."""
    from video_factory import textured_frames, write_source

    from stfusion.data.prepare_videos import reencode

    folder.mkdir(parents=True, exist_ok=True)
    infos = []
    for k in range(n_videos):
        src = write_source(folder / "src" / f"{k}.mp4", textured_frames(n_frames, source_size[1], source_size[0], k),
                           audio=False)
        infos.append((f"videos/{k}.mp4", reencode(src, folder / "videos" / f"{k}.mp4", short_side)))
    return write_manifest(folder, infos, rows or n_videos)


def more_rows(prepared: Path, folder: Path, rows: int) -> Path:
    """A videos-storage folder whose manifest has ``rows`` rows cycling over the files of ``prepared`` (absolute
    paths: nothing is encoded again)."""
    import pandas as pd

    table = pd.read_csv(prepared / "manifest.csv", keep_default_na=False).drop_duplicates("path")
    infos = [(str(prepared / r.path), {k: getattr(r, k) for k in ("frames", "fps", "width", "height")})
             for r in table.itertuples()]
    return write_manifest(folder, infos, rows)


def write_manifest(folder: Path, infos: list[tuple[str, dict]], rows: int) -> Path:
    """``manifest.csv``, ``classes.csv`` and the storage marker of a folder of ``rows`` training rows cycling over
    ``infos`` (``(path, reencode's info)`` a file)."""
    import pandas as pd

    from stfusion.data.storage import write_storage

    folder.mkdir(parents=True, exist_ok=True)
    table = []
    for r in range(rows):
        path, info = infos[r % len(infos)]
        table.append({"id": f"v{r}", "path": path, "label": f"c{r % 2}", "label_idx": r % 2, "split": "train",
                      "calib": False, "frames": info["frames"], "fps": info["fps"], "width": info["width"],
                      "height": info["height"], "status": "ok", "reason": ""})
    pd.DataFrame(table).to_csv(folder / "manifest.csv", index=False)
    pd.DataFrame({"index": [0, 1], "name": ["c0", "c1"], "kind": ["", ""]}).to_csv(folder / "classes.csv", index=False)
    write_storage(folder, {"storage": "videos", "reason": "benchmark"})
    return folder


def loader_rate(folder: Path, frames: int, crop: int, short_side: tuple[int, int], items: int) -> dict:
    """Training clips per second of one process over ``items`` items (after one warm-up item), by CPU time and
    by wall time."""
    import torch

    from stfusion.data.transforms import ViewSpec
    from stfusion.data.video_dataset import VideoDataset

    torch.set_num_threads(1)  # as in a DataLoader worker
    ds = VideoDataset(folder, "train", frames=frames, stride=2, view=ViewSpec("train", crop, short_side, flip=True))
    x, _, failure = ds[0]
    assert x.shape == (3, frames, crop, crop) and not failure, (x.shape, failure)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(items):
        ds[i % len(ds)]
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"clips_per_cpu_s": items / cpu, "clips_per_s": items / wall}


def epoch_peak_rss(folder: Path, *, leak: bool = False) -> dict:
    """Memory of a fresh process that trains one epoch over ``folder``: ``peak`` (its own ``VmHWM``, bytes) and
    ``before`` (its resident size once imports, model and dataset are ready, just before the epoch).
    ``leak``: a deliberately faulty variant that keeps every decoded clip (the benchmark must catch it)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, __file__, "--epoch", str(folder)] + (["--leak"] if leak else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"training epoch failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def epoch_memory_ratio(tmp: Path, n: int, files: int, *, leak: bool = False) -> dict:
    """``train_epoch_memory_4x``: the memory one training epoch adds over ``4 * n`` videos over the same for
    ``n`` videos (``n`` rows cycling over ``files`` prepared files at short side 256), each in a fresh process.
    What an epoch adds is its peak over the process's size just before it (imports, model, dataset): the ~300 MiB
    of the imports would otherwise hide a leak of the dataset's size."""
    one = prepared_folder(tmp / "epoch_1x", EPOCH_SHORT_SIDE, (480, 360), files, 24, rows=n)
    mem = {n: epoch_peak_rss(one, leak=leak), 4 * n: epoch_peak_rss(more_rows(one, tmp / "epoch_4x", 4 * n), leak=leak)}
    added = {rows: m["peak"] - m["before"] for rows, m in mem.items()}
    return {"ratio": added[4 * n] / added[n], "added_1x": added[n], "added_4x": added[4 * n],
            "peak_1x": mem[n]["peak"], "peak_4x": mem[4 * n]["peak"], "videos": n}


def _train_one_epoch(folder: Path, leak: bool) -> None:
    """The ``--epoch`` subprocess: one epoch of a tiny plain template (0 loader workers, so decoding happens in
    this process), then its own memory figures (:func:`epoch_peak_rss`) as JSON."""
    import torch

    from peak_memory import own_peak_bytes, reset_peak
    from stfusion.config.settings import Settings
    from stfusion.data.transforms import ViewSpec
    from stfusion.data.video_dataset import VideoDataset
    from stfusion.engine.train import TrainConfig, fit
    from stfusion.models import build_model

    class LeakyVideoDataset(VideoDataset):
        """Keeps every decoded clip: the memory leak the benchmark exists to catch."""

        kept: list = []

        def _decode(self, i, t):
            frames = super()._decode(i, t)
            self.kept.append(frames)
            return frames

    torch.set_num_threads(1)
    params = {"seed": 0, "model": {"backbone": "plain", "unit": "full", "widths": [8, 16], "layers_per_stage": [1, 1],
                                   "stem_width": 8},
              "gate": {"init_p": 0.1, "temperature": 0.2, "rescale": False, "kl_k": 5.0, "kl_form": "linear"}}
    dataset = LeakyVideoDataset if leak else VideoDataset
    # short side from the files' own 256 up: the clips are decoded at full size (a view asking for less is decoded
    # at its short side, and a kept clip would then be too small for a leak to show at these sizes)
    view = ViewSpec("train", 48, (EPOCH_SHORT_SIDE, EPOCH_SHORT_SIDE + 8), flip=True)
    ds = dataset(folder, "train", frames=EPOCH_FRAMES, stride=2, view=view)
    model = build_model(Settings.for_stage(params), 2)
    before = reset_peak()
    with tempfile.TemporaryDirectory() as out:
        fit(model, ds, TrainConfig(epochs=1, batch_size=8, lr=0.01, device="cpu"), out, progress=False)
    print(json.dumps({"peak": own_peak_bytes(), "before": before, "videos": len(ds)}))


def gpu_loader_check(workers=(8, 16), *, device: str = "cuda", batch: int = 32, frames: int = 16, crop: int = 224,
                     n_videos: int = 32, steps: int = 10, backbone: str = "densenet121") -> list[str]:
    """The loader against the GPU (the issue's GPU check): seconds per training step of the ``backbone`` template
    at ``frames`` x ``crop`` x ``crop``, batch ``batch``, bf16 autocast and channels_last_3d, vs seconds per
    batch that DataLoaders with each number of ``workers`` deliver from 256p prepared files. One line each."""
    import torch
    import torch.nn.functional as F

    from stfusion.config.loading import load_params
    from stfusion.config.settings import Settings
    from stfusion.data.loader import clip_loader
    from stfusion.data.transforms import ViewSpec, normalize
    from stfusion.data.video_dataset import VideoDataset
    from stfusion.models import build_model

    params = load_params(REPO / "params.yaml", {"model": {"backbone": backbone, "unit": "factorised"}})
    model = build_model(Settings.for_stage(params), 400).to(device).to(memory_format=torch.channels_last_3d).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randint(0, 256, (batch, 3, frames, crop, crop), dtype=torch.uint8)
    y = torch.randint(0, 400, (batch,), device=device)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = F.cross_entropy(model(normalize(x, device, channels_last=True)).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    step_s = (time.perf_counter() - t) / steps
    precision = "bf16" if device == "cuda" else "fp32"
    memory = (f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device == "cuda" else "")
    lines = [f"{backbone} {frames}x{crop}x{crop} batch {batch} {precision} channels_last_3d on {device}: "
             f"{step_s:.3f} s a step ({batch / step_s:.0f} clips/s){memory}"]
    with tempfile.TemporaryDirectory(prefix="stfusion-gpu-loader-") as tmp:
        folder = prepared_folder(Path(tmp), 256, (480, 360), n_videos, 2 * 2 * frames + 32, rows=batch * (steps + 2))
        ds = VideoDataset(folder, "train", frames=frames, stride=2, view=ViewSpec("train", crop, (256, 320), True))
        for w in workers:
            it = iter(clip_loader(ds, batch, workers=w))
            next(it)  # workers started, first batches in flight
            t = time.perf_counter()
            for _ in range(steps):
                next(it)
            batch_s = (time.perf_counter() - t) / steps
            verdict = "keeps up" if batch_s <= step_s else "is the bottleneck"
            lines.append(f"loader with {w} workers: {batch_s:.3f} s a batch ({batch / batch_s:.0f} clips/s): the loader "
                         f"{verdict} ({batch_s / step_s:.2f}x the step)")
    return lines


def run(quick: bool, note=print, names=None) -> dict[str, float]:
    """The figures of this file named in ``names`` (default all): ``{name: value}`` for the goals of
    ``benchmarks/run.py``."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="stfusion-videos-") as tmp:
        for name, short, source, frames, crop, jitter in LOADER_CASES:
            if names is not None and name not in names:
                continue
            n_frames = 2 * frames + 32 if not quick else 2 * frames
            folder = prepared_folder(Path(tmp) / name, short, source, 1 if quick else 4, n_frames)
            rate = loader_rate(folder, frames, crop, jitter, 2 if quick else (24 if frames == 16 else 12))
            results[name] = rate["clips_per_cpu_s"]
            note(f"{name}: {rate['clips_per_cpu_s']:.1f} clips per CPU second, {rate['clips_per_s']:.1f} per wall "
                 f"second (short side {short} files from {source[0]}x{source[1]}, {n_frames} frames, key frame "
                 f"every 16; short side drawn from {jitter[0]}-{jitter[1]}, random {crop} crop, flip)")
        if names is not None and "train_epoch_memory_4x" not in names:
            return results
        n, files = (4, 2) if quick else (32, 4)
        res = epoch_memory_ratio(Path(tmp), n, files)
        results["train_epoch_memory_4x"] = res["ratio"]
        note(f"train_epoch_memory_4x: one epoch over {4 * n} videos adds {res['added_4x'] / 2**20:.1f} MiB (peak "
             f"{res['peak_4x'] / 2**20:.0f} MiB), over {n} videos {res['added_1x'] / 2**20:.1f} MiB (peak "
             f"{res['peak_1x'] / 2**20:.0f} MiB); VmHWM of a fresh process each")
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    ap.add_argument("--gpu-loader", action="store_true",
                    help="the DenseNet-121 training step on the GPU (16x224x224, batch 32, bf16, channels_last_3d) "
                         "vs the loader with 8 and 16 workers from 256p files")
    ap.add_argument("--epoch", type=Path, help=argparse.SUPPRESS)  # the subprocess of train_epoch_memory_4x
    ap.add_argument("--leak", action="store_true", help=argparse.SUPPRESS)  # its leaky variant (a test's)
    args = ap.parse_args(argv)
    if args.epoch:
        _train_one_epoch(args.epoch, args.leak)
        return 0
    if args.gpu_loader:
        for text in gpu_loader_check():
            print(text, flush=True)
        return 0
    for name, value in run(args.quick, note=lambda text: print(text, file=sys.stderr)).items():
        print(f"{name}: {value:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
