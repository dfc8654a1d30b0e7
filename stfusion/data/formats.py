"""Readers for the published annotation formats.

:func:`read_annotations` returns ``(videos, classes)``: a DataFrame with columns ``video_id, path, label,
split`` (``split`` in {train, test}; ``path`` is ``root`` joined with the video's place, a file or, for
Something-Something V1, a folder of JPEG frames) and the list of class names in label-index order.

Formats and the files each one reads (``annotations`` is the file or folder holding them; None = ``root``):

``builtin``      ``root/annotations.csv`` (path,label,split) and ``root/classes.csv`` (name,kind), as written
                 by :func:`stfusion.data.builtin.generate`.
``csv``          one CSV (``annotations``, default ``root/annotations.csv``) with columns ``path,label`` and
                 optionally ``split`` (train/test; val/validation count as test; without the column every
                 video is train); ``path`` relative to ``root`` (or absolute).  Classes: sorted labels.
``ssv2``         Something-Something V2: ``labels.json`` ({name: "index"}), ``train.json``,
                 ``validation.json`` (lists of {"id", "label", "template", "placeholders"}; the
                 ``something-something-v2-*.json`` names of the original release are accepted too); videos
                 ``root/<id>.webm``.  The class is the template with its brackets removed, as the official
                 loaders do.  validation -> test.
``ssv1``         Something-Something V1: ``something-something-v1-labels.csv`` (one class a line, in index
                 order), ``something-something-v1-train.csv`` and ``something-something-v1-validation.csv``
                 (lines ``id;label``); frames ``root/<id>/00001.jpg ...``.  validation -> test.
``kinetics400``  CSV files with header ``label,youtube_id,time_start,time_end,split`` (extra columns such as
                 ``is_cc`` are ignored): ``annotations`` is one such file or a folder whose CSV files with
                 that header are all read (a CSV without a ``label`` column, like an unlabelled test list,
                 is skipped).  Videos are found by name ``<youtube_id>_<time_start:06d>_<time_end:06d>`` with
                 any video suffix anywhere under ``root``, which covers the usual layouts ``root/<name>.mp4``,
                 ``root/<split>/<label>/<name>.mp4`` and ``root/<label>/<name>.mp4`` (labels with spaces or
                 underscores).  split: train -> train, val/validate/validation -> test; rows of the original
                 ``test`` split are test only when there is no validation split, otherwise dropped.
                 Classes: sorted labels.
``ucf101``       ``classInd.txt`` ("1 ApplyEyeMakeup"), ``trainlist0N.txt`` ("Class/v_..._c01.avi 1"),
                 ``testlist0N.txt`` (path only; the class is the folder) for ``split`` N in 1-3, in
                 ``annotations``, ``root`` or ``root/ucfTrainTestlist``; videos ``root/<Class>/<file>`` (or
                 ``root/<file>``).
``hmdb51``       split files ``<class>_test_split<N>.txt`` with lines ``<video>.avi <0|1|2>`` (1 train, 2 test,
                 0 unused) in ``annotations``, ``root`` or ``root/testTrainMulti_7030_splits``; videos
                 ``root/<class>/<video>``.  Classes: sorted class names of the split files.

Video ids: the dataset's own ids (SSv2 and SSv1 numbers, Kinetics ``<youtube_id>_<start>_<end>``, UCF101 and
HMDB51 file names) where each names one file; for ``csv``/``builtin``, and for any ids that name several
files (``a/001.avi`` and ``b/001.avi``), the ids of :func:`path_ids`: the path relative to ``root`` without
suffix (``a/001``), with the suffix where only it differs (``clip.mov``, ``clip.webm``), a short hash of the
folder for paths outside ``root``.

Errors raise :class:`StfusionError` with one line: missing dataset folder, missing or empty annotation
file, wrong columns, the same video listed twice, or no known label at all.  A label that is not in the class list
(e.g. an SSv2 template missing from labels.json) does not stop reading: the row keeps its label and
:func:`stfusion.data.cache.preprocess` marks it ``unknown_label``.  Missing video files are not checked here
(preprocessing marks them ``missing``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import pandas as pd

from stfusion.errors import StfusionError

__all__ = ["DATASETS", "path_ids", "read_annotations", "VIDEO_SUFFIXES"]

log = logging.getLogger(__name__)

DATASETS = ("builtin", "csv", "ssv1", "ssv2", "kinetics400", "ucf101", "hmdb51")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
COLUMNS = ["video_id", "path", "label", "split"]
_TEST_NAMES = {"test": "test", "val": "test", "validate": "test", "validation": "test", "train": "train"}


# --------------------------------------------------------------------------------------------- helpers
def _find(dataset: str, name: str, *folders: Path, alternatives=()) -> Path:
    """The first existing file ``name`` (or one of ``alternatives``) in ``folders``."""
    for folder in folders:
        for candidate in (name, *alternatives):
            p = folder / candidate
            if p.is_file():
                return p
    where = " or ".join(str(f) for f in dict.fromkeys(folders))
    raise StfusionError(f"{dataset}: annotation file {name} not found in {where}")


def _text_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise StfusionError(f"annotation file is empty: {path}")
    return lines


def _read_json(path: Path):
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StfusionError(f"{path} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    if not data:
        raise StfusionError(f"annotation file is empty: {path}")
    return data


def _read_csv(path: Path, **kwargs) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise StfusionError(f"annotation file is empty: {path}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise StfusionError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from None
    if df.empty:
        raise StfusionError(f"annotation file has no rows: {path}")
    return df


def _require_columns(df: pd.DataFrame, required, path: Path) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise StfusionError(
            f"{path} must have columns {','.join(required)} (missing {','.join(missing)}; "
            f"found {','.join(map(str, df.columns))})"
        )


def _finish(rows, classes: list[str], source: str, root: Path) -> tuple[pd.DataFrame, list[str]]:
    videos = pd.DataFrame(rows, columns=COLUMNS)
    if videos.empty:
        raise StfusionError(f"no videos listed in {source}")
    videos["video_id"] = _unique_ids(videos["video_id"].astype(str).tolist(), videos["path"].tolist(), root)
    videos["label"] = videos["label"].astype(str)
    dup = videos["video_id"][videos["video_id"].duplicated()]
    if len(dup):
        first = videos["path"][videos["video_id"] == dup.iloc[0]].iloc[0]
        raise StfusionError(f"duplicated video id {dup.iloc[0]!r} in {source} ({dup.nunique()} ids appear twice; "
                            f"the same video {first} is listed more than once)")
    if len(set(classes)) != len(classes):
        seen = set()
        first = next(c for c in classes if c in seen or seen.add(c))
        raise StfusionError(f"duplicated class {first!r} in the class list of {source}")
    known = videos["label"].isin(set(classes))
    if not known.any():
        raise StfusionError(
            f"none of the {len(videos)} labels in {source} is in the class list (first label: {videos['label'].iloc[0]!r})"
        )
    if not known.all():
        log.warning("%s: %d videos have a label outside the class list (first: %r)", source, (~known).sum(),
                    videos.loc[~known, "label"].iloc[0])
    return videos.reset_index(drop=True), list(classes)


def path_ids(paths, root) -> list[str]:
    """Video ids from file paths, unique and stable for any layout: the path relative to ``root`` without its
    suffix (``a/001.mp4`` -> ``a/001``); the suffix is kept where files differ only in it (``clip.mov``,
    ``clip.webm``); a path outside ``root`` becomes ``<folder>/<stem>~<8 hex digits of its folder's absolute
    path>``.  The same list of paths always gives the same ids (nothing is read from disk)."""
    root = os.path.abspath(root)
    short, long = [], []
    for path in paths:
        p = Path(os.path.normpath(os.path.join(root, str(path))))
        try:
            rel = p.relative_to(root)
            tail = "" if rel.parent == Path(".") else f"{rel.parent.as_posix()}/"
            mark = ""
        except ValueError:
            tail, mark = f"{p.parent.name}/", "~" + hashlib.sha1(str(p.parent).encode()).hexdigest()[:8]
        stem, suffix = (p.stem, p.suffix) if p.suffix else (p.name, "")
        short.append(f"{tail}{stem}{mark}")
        long.append(f"{tail}{stem}{suffix}{mark}")
    owners: dict[str, set[str]] = {}
    for vid, name in zip(short, long):
        owners.setdefault(vid, set()).add(name)
    return [name if len(owners[vid]) > 1 else vid for vid, name in zip(short, long)]


def _unique_ids(ids: list[str], paths: list[str], root: Path) -> list[str]:
    """The dataset's own ids where each names one file; ids shared by different files become :func:`path_ids`."""
    owners: dict[str, set[str]] = {}
    for vid, path in zip(ids, paths):
        owners.setdefault(vid, set()).add(os.path.normpath(path))
    clash = {vid for vid, files in owners.items() if len(files) > 1}
    if not clash:
        return ids
    derived = path_ids(paths, root)
    return [new if vid in clash else vid for vid, new in zip(ids, derived)]


def _check_root(root) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise StfusionError(f"dataset folder not found: {root} (set data.root to the folder that holds the videos)")
    return root


def _folder(annotations, root: Path) -> Path:
    if annotations is None:
        return root
    p = Path(annotations)
    if not p.exists():
        raise StfusionError(f"annotation path not found: {p}")
    return p if p.is_dir() else p.parent


# -------------------------------------------------------------------------------------------- formats
def _builtin(root: Path, annotations, split):
    ann = Path(annotations) if annotations is not None and Path(annotations).is_file() else _folder(annotations, root) / "annotations.csv"
    cls_path = ann.parent / "classes.csv"
    if not ann.is_file():
        raise StfusionError(f"builtin: annotation file {ann} not found (generate the built-in benchmark first)")
    if not cls_path.is_file():
        raise StfusionError(f"builtin: class list {cls_path} not found (generate the built-in benchmark first)")
    df = _read_csv(ann, dtype=str, keep_default_na=False)
    _require_columns(df, ["path", "label", "split"], ann)
    cls = _read_csv(cls_path, dtype=str, keep_default_na=False)
    _require_columns(cls, ["name", "kind"], cls_path)
    rows = _csv_rows(df, root, ann)
    return _finish(rows, cls["name"].tolist(), str(ann), root)


def _csv_rows(df: pd.DataFrame, root: Path, source: Path):
    rows = []
    has_split = "split" in df.columns
    for rec in df.itertuples(index=False):
        rel = str(rec.path).strip()
        if not rel:
            raise StfusionError(f"{source}: empty path in a row (label {rec.label!r})")
        split = _TEST_NAMES.get(str(rec.split).strip().lower()) if has_split else "train"
        if split is None:
            raise StfusionError(f"{source}: unknown split {rec.split!r} for {rel} (use train or test)")
        p = Path(rel)
        rows.append(("", str(p if p.is_absolute() else root / p), str(rec.label).strip(), split))
    ids = path_ids([r[1] for r in rows], root)
    return [(vid, *row[1:]) for vid, row in zip(ids, rows)]


def _csv(root: Path, annotations, split):
    ann = Path(annotations) if annotations is not None else root / "annotations.csv"
    if ann.is_dir():
        ann = ann / "annotations.csv"
    if not ann.is_file():
        raise StfusionError(f"csv: annotation file {ann} not found")
    df = _read_csv(ann, dtype=str, keep_default_na=False)
    _require_columns(df, ["path", "label"], ann)
    rows = _csv_rows(df, root, ann)
    classes = sorted({r[2] for r in rows})
    return _finish(rows, classes, str(ann), root)


def _ssv2(root: Path, annotations, split):
    folder = _folder(annotations, root)
    folders = (folder, folder / "labels") if annotations is None else (folder,)
    lab_path = _find("ssv2", "labels.json", *folders, alternatives=("something-something-v2-labels.json",))
    labels = _read_json(lab_path)
    if not isinstance(labels, dict):
        raise StfusionError(f"{lab_path} must map class names to indices")
    try:
        order = sorted(labels.items(), key=lambda kv: int(kv[1]))
    except (TypeError, ValueError):
        raise StfusionError(f"{lab_path}: class indices must be integers") from None
    if [int(v) for _, v in order] != list(range(len(order))):
        raise StfusionError(f"{lab_path}: class indices must be 0..{len(order) - 1} without gaps")
    classes = [k for k, _ in order]
    rows = []
    for fname, alt, sp in (("train.json", "something-something-v2-train.json", "train"),
                           ("validation.json", "something-something-v2-validation.json", "test")):
        path = _find("ssv2", fname, lab_path.parent, alternatives=(alt,))
        items = _read_json(path)
        if not isinstance(items, list):
            raise StfusionError(f"{path} must hold a list of videos")
        for item in items:
            if not isinstance(item, dict) or "id" not in item or ("template" not in item and "label" not in item):
                raise StfusionError(f"{path}: every entry needs 'id' and 'template' (got {str(item)[:80]})")
            template = item.get("template", item.get("label"))
            label = str(template).replace("[", "").replace("]", "")
            vid = str(item["id"])
            rows.append((vid, str(root / f"{vid}.webm"), label, sp))
    return _finish(rows, classes, f"ssv2 annotations in {lab_path.parent}", root)


def _ssv1(root: Path, annotations, split):
    folder = _folder(annotations, root)
    lab_path = _find("ssv1", "something-something-v1-labels.csv", folder)
    classes = _text_lines(lab_path)
    rows = []
    for fname, sp in (("something-something-v1-train.csv", "train"), ("something-something-v1-validation.csv", "test")):
        path = _find("ssv1", fname, folder)
        for n, line in enumerate(_text_lines(path), 1):
            vid, sep, label = line.partition(";")
            if not sep or not vid.strip():
                raise StfusionError(f"{path} line {n}: expected 'id;label', got {line[:60]!r}")
            rows.append((vid.strip(), str(root / vid.strip()), label.strip(), sp))
    return _finish(rows, classes, f"ssv1 annotations in {folder}", root)


_KINETICS_COLS = ["label", "youtube_id", "time_start", "time_end", "split"]


def _index_videos(root: Path, max_depth: int = 3) -> dict[str, Path]:
    """Video files under ``root`` (up to ``max_depth`` folders deep) by file stem; first in sorted order wins."""
    index: dict[str, Path] = {}
    base = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if len(Path(dirpath).parts) - base >= max_depth:
            dirnames[:] = []
        for f in sorted(filenames):
            stem, ext = os.path.splitext(f)
            if ext.lower() in VIDEO_SUFFIXES:
                index.setdefault(stem, Path(dirpath) / f)
    return index


def _kinetics(root: Path, annotations, split):
    ann = Path(annotations) if annotations is not None else root
    if not ann.exists():
        raise StfusionError(f"kinetics400: annotation path not found: {ann}")
    files = [ann] if ann.is_file() else sorted(ann.glob("*.csv"))
    frames = []
    for f in files:
        try:
            head = pd.read_csv(f, nrows=0)
        except pd.errors.EmptyDataError:
            raise StfusionError(f"annotation file is empty: {f}") from None
        if ann.is_dir() and not set(_KINETICS_COLS) <= set(head.columns):
            log.info("kinetics400: skipping %s (columns %s)", f, ",".join(head.columns))
            continue
        df = _read_csv(f, dtype={"youtube_id": str, "label": str, "split": str})
        _require_columns(df, _KINETICS_COLS, f)
        frames.append(df)
    if not frames:
        raise StfusionError(f"kinetics400: no CSV with columns {','.join(_KINETICS_COLS)} in {ann}")
    df = pd.concat(frames, ignore_index=True)
    raw = df["split"].astype(str).str.strip().str.lower()
    has_val = raw.isin(["val", "validate", "validation"]).any()
    if has_val:
        df, raw = df[raw != "test"], raw[raw != "test"]
    mapped = raw.map(_TEST_NAMES)
    if mapped.isna().any():
        raise StfusionError(f"kinetics400: unknown split {raw[mapped.isna()].iloc[0]!r} (expected train, val or test)")
    try:
        start = df["time_start"].astype(float).round().astype(int)
        end = df["time_end"].astype(float).round().astype(int)
    except ValueError:
        raise StfusionError("kinetics400: time_start and time_end must be numbers") from None
    index = _index_videos(root)
    rows = []
    for label, yid, t0, t1, sp in zip(df["label"].astype(str).str.strip(), df["youtube_id"].astype(str), start, end, mapped):
        name = f"{yid}_{t0:06d}_{t1:06d}"
        path = index.get(name, root / f"{name}.mp4")
        rows.append((name, str(path), label, sp))
    classes = sorted(df["label"].astype(str).str.strip().unique())
    return _finish(rows, classes, f"kinetics400 annotations in {ann}", root)


def _check_split(dataset: str, split) -> int:
    try:
        n = int(split)
    except (TypeError, ValueError):
        n = 0
    if n not in (1, 2, 3):
        raise StfusionError(f"{dataset}: split must be 1, 2 or 3, got {split!r}")
    return n


def _ucf101(root: Path, annotations, split):
    n = _check_split("ucf101", split)
    folder = _folder(annotations, root)
    folders = (folder, folder / "ucfTrainTestlist") if annotations is None else (folder,)
    ind = _find("ucf101", "classInd.txt", *folders)
    classes = []
    for k, line in enumerate(_text_lines(ind), 1):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise StfusionError(f"{ind} line {k}: expected '<index> <class>', got {line[:60]!r}")
        if int(parts[0]) != k:
            raise StfusionError(f"{ind} line {k}: class indices must run 1, 2, 3, ... (got {parts[0]})")
        classes.append(parts[1])
    by_folder = {c.lower(): c for c in classes}
    rows = []
    for fname, sp in ((f"trainlist0{n}.txt", "train"), (f"testlist0{n}.txt", "test")):
        path = _find("ucf101", fname, ind.parent)
        for k, line in enumerate(_text_lines(path), 1):
            parts = line.split()
            rel = parts[0].replace("\\", "/")
            folder_name = rel.split("/")[0] if "/" in rel else ""
            if len(parts) >= 2:
                if not parts[1].isdigit() or not 1 <= int(parts[1]) <= len(classes):
                    raise StfusionError(f"{path} line {k}: class index {parts[1]!r} not in classInd.txt")
                label = classes[int(parts[1]) - 1]
            else:
                label = by_folder.get(folder_name.lower(), folder_name)
            p = root / rel
            if not p.exists() and (root / Path(rel).name).exists():
                p = root / Path(rel).name
            rows.append((Path(rel).stem, str(p), label, sp))
    return _finish(rows, classes, f"ucf101 split {n} in {ind.parent}", root)


_HMDB_RE = re.compile(r"^(?P<cls>.+)_test_split(?P<n>[1-3])\.txt$")


def _hmdb51(root: Path, annotations, split):
    n = _check_split("hmdb51", split)
    folder = _folder(annotations, root)
    folders = (folder, folder / "testTrainMulti_7030_splits") if annotations is None else (folder,)
    files = {}
    for f in folders:
        if f.is_dir():
            for p in sorted(f.iterdir()):
                m = _HMDB_RE.match(p.name)
                if m and int(m["n"]) == n:
                    files.setdefault(m["cls"], p)
    if not files:
        where = " or ".join(str(f) for f in folders)
        raise StfusionError(f"hmdb51: no split files <class>_test_split{n}.txt in {where}")
    classes = sorted(files)
    rows = []
    for cls in classes:
        path = files[cls]
        for k, line in enumerate(_text_lines(path), 1):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise StfusionError(f"{path} line {k}: expected '<video> <0|1|2>', got {line[:60]!r}")
            if parts[1] == "0":
                continue
            rows.append((Path(parts[0]).stem, str(root / cls / parts[0]), cls, "train" if parts[1] == "1" else "test"))
    return _finish(rows, classes, f"hmdb51 split {n} files", root)


_READERS = {
    "builtin": _builtin,
    "csv": _csv,
    "ssv1": _ssv1,
    "ssv2": _ssv2,
    "kinetics400": _kinetics,
    "ucf101": _ucf101,
    "hmdb51": _hmdb51,
}


def read_annotations(dataset: str, root, annotations=None, split: int = 1) -> tuple[pd.DataFrame, list[str]]:
    """Read the annotations of ``dataset`` (one of :data:`DATASETS`) for videos under ``root``.

    ``annotations``: annotation file or folder (None: look in ``root``, see the module docstring);
    ``split``: the split number of UCF101 / HMDB51 (1-3).  Returns ``(videos, classes)``.
    """
    if dataset not in _READERS:
        raise StfusionError(f"unknown dataset {dataset!r} (choose one of: {', '.join(DATASETS)})")
    root = _check_root(root)
    return _READERS[dataset](root, annotations, split)
