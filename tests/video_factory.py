"""Real video datasets written in the tests (small and fast): the layouts, containers, codecs, frame rates, sizes
and audio tracks that the published datasets come in.

    kinetics_like(root)   Kinetics-400 layout: root/<label>/<youtube_id>_<start>_<end>.<mp4|avi|mkv|webm>, mixed
                          sizes (4:3, 16:9, an odd size), rates (24, 25, 29.97, 30), 1-6 s, with audio tracks,
                          and root/annotations/{train,validate}.csv
    ssv2_like(root)       Something-Something V2: root/<id>.webm (VP9) and labels.json, train.json, validation.json
    ssv1_like(root)       Something-Something V1: root/<id>/00001.jpg ... and the three annotation CSVs
    write_source(path, frames, fps, ...)   one lossy video with an optional audio track, container from the suffix

Sizes are the published ones scaled down (320x240 -> 80x60, 480x360 -> 96x72, 640x360 -> 112x64), so that the
files keep the variety and stay a few kB each.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av  # noqa: F401  (before decord: see stfusion.data.video)
import numpy as np

from stfusion.data import video as _video  # noqa: F401  (fixes the import order of av, torch and decord)

#: (width, height) of the Kinetics-like clips: 4:3 (320x240, 480x360), 16:9 (640x360) scaled down, an odd size
SIZES = [(80, 60), (96, 72), (112, 64), (75, 51)]
RATES = [Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(30)]
SECONDS = [1.0, 2.0, 3.0, 6.0, 1.5, 2.5, 4.0, 1.0]
SUFFIXES = [".mp4", ".avi", ".mkv", ".webm"]


def textured_frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``uint8 (n, height, width, 3)``: a smooth random texture panned across the frame with a moving bright
    disk and a little noise, so that frames differ like camera footage (compresses like it, not like noise)."""
    rng = np.random.default_rng(seed)
    big = rng.normal(0, 1, (height + 2 * n + 16, width + 2 * n + 16, 3))
    for axis in (0, 1):  # smooth the texture: a few box blurs
        for _ in range(3):
            big = (np.roll(big, 1, axis) + big + np.roll(big, -1, axis)) / 3
    big = 128 + 60 * big / (big.std() + 1e-6)
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.empty((n, height, width, 3), np.uint8)
    vx, vy = rng.uniform(0.5, 1.5, 2)
    for t in range(n):
        frame = big[int(t * vy) : int(t * vy) + height, int(t * vx) : int(t * vx) + width].copy()
        cx, cy = (width * (0.2 + 0.6 * ((t * 0.03) % 1)), height / 2)
        frame[(xx - cx) ** 2 + (yy - cy) ** 2 < (min(height, width) / 6) ** 2] += 70
        frame += rng.normal(0, 2, frame.shape)
        out[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


_CONTAINERS = {".mp4": ("mp4", "libx264", "aac"), ".mov": ("mov", "libx264", "aac"),
               ".mkv": ("matroska", "libx264", "aac"), ".avi": ("avi", "libx264", "mp3"),
               ".webm": ("webm", "libvpx-vp9", "libopus")}


def write_source(path, frames: np.ndarray, fps=25, *, audio: bool = True, crf: int = 23,
                 keyint: int | None = None) -> Path:
    """Write ``frames`` as a lossy video like the ones people download: H.264 yuv420p (mp4, mov, mkv, avi) or
    VP9 (webm) at ``crf``, a key frame every ``keyint`` frames (None: the encoder's default, 250 for x264),
    and a 440 Hz audio track when ``audio``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt, vcodec, acodec = _CONTAINERS[path.suffix.lower()]
    rate = Fraction(fps).limit_denominator(1001)
    n, height, width, _ = frames.shape
    with av.open(str(path), "w", format=fmt) as out:
        v = out.add_stream(vcodec, rate=rate)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.codec_context.thread_count = 1
        options = {"crf": str(crf)} if vcodec == "libx264" else {"crf": str(crf + 10), "b": "0", "deadline": "realtime"}
        if keyint:
            options["g"] = str(keyint)
        v.options = options
        a = None
        if audio:
            a = out.add_stream(acodec, rate=48000 if acodec == "libopus" else 44100)
        samples_per_frame = int((a.rate if a else 44100) / float(rate))
        pts = 0
        for i, frame in enumerate(frames):
            for packet in v.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
            if a is not None:
                t = (pts + np.arange(samples_per_frame)) / a.rate
                tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
                af = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
                af.sample_rate, af.pts = a.rate, pts
                pts += samples_per_frame
                for packet in a.encode(af):
                    out.mux(packet)
        for stream in (v, a) if a is not None else (v,):
            for packet in stream.encode():
                out.mux(packet)
    return path


def kinetics_like(root, *, classes=("abseiling", "air drumming"), seconds=SECONDS, scale: float = 1.0) -> list[dict]:
    """Kinetics-400 layout under ``root`` (see the module docstring); ``len(seconds)`` clips spread over the
    classes, cycling through :data:`SIZES`, :data:`RATES` and :data:`SUFFIXES`.  Returns one dict a clip
    (``name, path, label, split, width, height, fps, frames``)."""
    root = Path(root)
    clips = []
    rows = {"train": [], "validate": []}
    for k, secs in enumerate(seconds):
        label = classes[k % len(classes)]
        width, height = SIZES[k % len(SIZES)]
        width, height = int(round(width * scale)), int(round(height * scale))
        rate = RATES[k % len(RATES)]
        n = max(1, int(round(secs * float(rate))))
        yid, start = f"yt{k:02d}-{'abcdefgh'[k % 8]}Z_q", 10 * k
        name = f"{yid}_{start:06d}_{start + 10:06d}"
        suffix = SUFFIXES[k % len(SUFFIXES)]
        if (width % 2 or height % 2) and suffix != ".webm":
            suffix = ".webm"  # yuv420p H.264 needs even sizes; VP9 takes odd ones
        path = write_source(root / label / f"{name}{suffix}", textured_frames(n, height, width, seed=k), rate)
        split = "validate" if k % 4 == 3 else "train"
        rows[split].append(f"{label},{yid},{start},{start + 10},{split}")
        clips.append({"name": name, "path": path, "label": label, "split": "test" if split == "validate" else "train",
                      "width": width, "height": height, "fps": float(rate), "frames": n})
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    for split, lines in rows.items():
        (ann / f"{split}.csv").write_text("label,youtube_id,time_start,time_end,split\n" + "\n".join(lines) + "\n")
    return clips


def ssv2_like(root, n: int = 4, *, size=(64, 48), frames: int = 12) -> list[dict]:
    """Something-Something V2 layout: ``root/<id>.webm`` (VP9, 12 fps, no audio) and the three JSON files."""
    root = Path(root)
    templates = ["Pushing [something] from left to right", "Pushing [something] from right to left"]
    items = []
    for k in range(n):
        vid = str(1000 + k)
        write_source(root / f"{vid}.webm", textured_frames(frames + k, size[1], size[0], seed=100 + k), 12, audio=False)
        items.append({"id": vid, "template": templates[k % 2], "label": templates[k % 2].replace("[", "").replace("]", ""),
                      "placeholders": ["something"]})
    (root / "labels.json").write_text(json.dumps({t.replace("[", "").replace("]", ""): str(i) for i, t in enumerate(templates)}))
    (root / "train.json").write_text(json.dumps(items[: n - 1]))
    (root / "validation.json").write_text(json.dumps(items[n - 1 :]))
    return [{"id": it["id"], "path": root / f"{it['id']}.webm", "frames": frames + k} for k, it in enumerate(items)]


def ssv1_like(root, n: int = 4, *, size=(60, 40), frames: int = 10) -> list[dict]:
    """Something-Something V1 layout: ``root/<id>/00001.jpg ...`` and the labels / train / validation CSVs."""
    from PIL import Image

    root = Path(root)
    classes = ["Pushing something from left to right", "Pushing something from right to left"]
    lines = []
    out = []
    for k in range(n):
        vid = str(1 + k)
        folder = root / vid
        folder.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(textured_frames(frames + k, size[1], size[0], seed=200 + k), 1):
            Image.fromarray(frame).save(folder / f"{i:05d}.jpg", quality=90)
        lines.append(f"{vid};{classes[k % 2]}")
        out.append({"id": vid, "path": folder, "frames": frames + k})
    (root / "something-something-v1-labels.csv").write_text("\n".join(classes) + "\n")
    (root / "something-something-v1-train.csv").write_text("\n".join(lines[: n - 1]) + "\n")
    (root / "something-something-v1-validation.csv").write_text("\n".join(lines[n - 1 :]) + "\n")
    return out
