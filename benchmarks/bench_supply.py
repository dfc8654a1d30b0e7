"""Supply and demand of training clips for each paper preset (``stfusion/config/presets``).

    python benchmarks/bench_supply.py [--quick] [--device cuda] [--preset NAME ...] [--clips-per-decode K]

For each preset, one goal line ``supply_<preset>: ratio <workers> (goal <= 8.00)``: the DataLoader workers one
GPU needs, i.e. the clips per second the preset's supernet step consumes on one GPU over the clips per second one
loader worker supplies at the preset's training clip.

- **Supply**: training clips per CPU second of one process (one decoder thread, as a DataLoader worker) reading
  the preset's training clip (frames, stride or segment sampling, short-side jitter, crop, flip) with
  :func:`stfusion.data.video_dataset.open_clips` from generated footage prepared as ``stfusion prepare`` writes
  it (the preset's ``data.short_side``, a key frame every 16 frames), with the preset's ``data.backend`` and
  ``data.clips_per_decode`` (``--clips-per-decode K``: K instead; every clip of an item is counted).
- **Demand**: with ``--device cuda``, the preset's gated supernet training step (its backbone and batch, bf16
  and channels_last_3d as the presets set them) timed on the GPU. Without a GPU, no step of a preset has been
  measured on one (``benchmarks/RESULTS.md`` records none): the demand is then the *estimate* of
  :data:`ESTIMATE` (about 2 ms of H100 time a clip for the SSv2 ResNet-50 supernet at 8 x 224 x 224), scaled by
  the clip's voxels and labelled as an estimate on stderr.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the generated test footage
sys.path.insert(0, str(REPO / "benchmarks"))

GOAL_WORKERS = 8.0
#: (clips/s, clip voxels T*H*W it was stated for): the GPU time the SSv2 ResNet-50 supernet was estimated to take
#: on an H100 (2 ms a clip), the demand used where no GPU figure of a preset's step exists
ESTIMATE = (500.0, 8 * 224 * 224)
#: frames of the generated videos by dataset (about the datasets' typical lengths: 10 s at 30 fps for Kinetics,
#: 7 s at 25 fps for UCF101/HMDB51, 4 s at 12 fps for Something-Something), and the source's (width, height)
FOOTAGE = {"kinetics400": (300, (480, 360)), "ucf101": (160, (320, 240)), "hmdb51": (160, (320, 240)),
           "ssv1": (48, (426, 240)), "ssv2": (48, (426, 240))}


def presets() -> list[str]:
    from stfusion.config.loading import PRESET_DIR

    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_settings(name: str, backend: str | None = None, clips_per_decode: int | None = None):
    """``(params, Settings)`` of the preset ``name``, with ``data.backend`` and ``data.clips_per_decode`` replaced
    by ``backend`` and ``clips_per_decode`` where given."""
    from stfusion.config.loading import resolve_params
    from stfusion.config.settings import Settings

    data = {k: v for k, v in (("backend", backend), ("clips_per_decode", clips_per_decode)) if v is not None}
    params = resolve_params(None, {"preset": name, **({"data": data} if data else {})})
    return params, Settings.for_stage(params)


def supply(name: str, tmp: Path, items: int, videos: int = 2, backend: str | None = None,
           quick: bool = False, clips_per_decode: int | None = None) -> dict:
    """Training clips per CPU second (and per wall second) of one process at the preset's training clip, over
    ``items`` items of ``data.clips_per_decode`` clips each (with ``quick``, from videos just long enough for one
    clip: a smoke run)."""
    import torch
    from bench_videos import prepared_folder

    from stfusion.data.video_dataset import open_clips

    params, settings = preset_settings(name, backend, clips_per_decode)
    data = settings.data
    frames_total, source = FOOTAGE[data.dataset]
    if quick:
        frames_total = data.frames * (data.stride if data.sampling == "dense" else 1) + 2
    folder = tmp / f"{name}-{frames_total}" if quick else tmp / f"{data.dataset}-{data.short_side}"
    if not (folder / "manifest.csv").is_file():
        prepared_folder(folder, data.short_side, source, videos, frames_total)
    torch.set_num_threads(1)  # as in a DataLoader worker
    ds = open_clips(data, folder, "train", train=True)
    ds[0]  # warm-up (library initialisation)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(items):
        clip = ds[i % len(ds)][0]
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    crop, k = data.crop or data.size, data.clips_per_decode
    assert tuple(clip.shape) == ((k,) if k > 1 else ()) + (3, data.frames, crop, crop), clip.shape
    clips = items * k
    return {"clips_per_cpu_s": clips / cpu, "clips_per_s": clips / wall, "frames": data.frames, "crop": crop,
            "clips_per_decode": k,
            "short_side": data.short_side, "train_short_side": data.train_short_side, "sampling": data.sampling,
            "backend": ds.backend, "backbone": settings.model.backbone, "batch": settings.supernet.batch_size}


def demand_gpu(name: str, steps: int = 10) -> float:
    """Clips per second the preset's gated supernet training step consumes on the GPU (its backbone and batch, bf16
    autocast, channels_last_3d)."""
    import torch
    from bench_model import supernet_step

    params, settings = preset_settings(name)
    data, batch = settings.data, settings.supernet.batch_size
    crop = data.crop or data.size
    x = torch.randn(batch, 3, data.frames, crop, crop, device="cuda")
    y = torch.randint(0, 10, (batch,), device="cuda")
    step = supernet_step(params, x, y, channels_last=True, bf16=True)
    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def demand_estimate(frames: int, crop: int) -> float:
    """Clips per second of :data:`ESTIMATE`, scaled to a clip of ``frames`` x ``crop`` x ``crop``."""
    rate, voxels = ESTIMATE
    return rate * voxels / (frames * crop * crop)


def run(quick: bool, device: str = "cpu", names=None, note=print, backend: str | None = None,
        clips_per_decode: int | None = None) -> dict[str, float]:
    """``{"supply_<preset>": workers needed a GPU}`` for each preset in ``names`` (default every preset)."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="stfusion-supply-") as tmp:
        for name in names or presets():
            res = supply(name, Path(tmp), 2 if quick else 12, videos=1 if quick else 2, backend=backend, quick=quick,
                         clips_per_decode=clips_per_decode)
            if device == "cuda":
                rate, source = demand_gpu(name), f"measured on {device}"
            else:
                rate = demand_estimate(res["frames"], res["crop"])
                source = "ESTIMATE (no GPU figure of this preset's step is recorded)"
            results[f"supply_{name}"] = rate / res["clips_per_cpu_s"]
            note(f"supply_{name}: one worker supplies {res['clips_per_cpu_s']:.1f} clips per CPU second "
                 f"({res['clips_per_s']:.1f} per wall second; {res['frames']} frames, {res['sampling']} sampling, "
                 f"short side {res['train_short_side']} from files at {res['short_side']}, {res['crop']} crop, "
                 f"{res['backend']} decoding, {res['clips_per_decode']} clip(s) a decode); the {res['backbone']} "
                 f"supernet step (batch {res['batch']}) consumes "
                 f"{rate:.0f} clips/s, {source}")
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    ap.add_argument("--device", default="cpu", help="cuda: measure each preset's supernet step on the GPU")
    ap.add_argument("--preset", action="append", help="only this preset (repeatable)")
    ap.add_argument("--backend", help="decode with this data.backend instead of the preset's (e.g. torchcodec)")
    ap.add_argument("--clips-per-decode", type=int, help="data.clips_per_decode instead of the preset's")
    args = ap.parse_args(argv)
    for key, value in run(args.quick, args.device, args.preset, backend=args.backend,
                          clips_per_decode=args.clips_per_decode,
                          note=lambda text: print(f"  [{text}]", file=sys.stderr, flush=True)).items():
        print(f"{key}: ratio {value:.3f} (goal <= {GOAL_WORKERS:.2f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
