"""Published annotation formats, each built as a tiny fixture in its exact layout."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest_data import builtin_root, smooth_frames, webm_encoder_works, write_jpeg_folder  # noqa: E402

from stfusion.data.builtin import CLASSES  # noqa: E402
from stfusion.data.cache import preprocess
from stfusion.data.formats import read_annotations
from stfusion.data.video import write_video
from stfusion.errors import StfusionError  # noqa: E402


def _video(path: Path, seed: int = 0, lossless: bool = True) -> Path:
    write_video(path, smooth_frames(6, 24, 32, seed), lossless=lossless)
    return path


def _check(videos: pd.DataFrame) -> None:
    assert list(videos.columns) == ["video_id", "path", "label", "split"]
    assert set(videos["split"]) <= {"train", "test"}
    assert videos["video_id"].is_unique


# -------------------------------------------------------------------------------------------- SSv2
@pytest.fixture(scope="module")
def ssv2(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssv2")
    labels = {"Pushing something from left to right": "2", "Holding something": "0", "Moving something up": "1"}
    (root / "labels.json").write_text(json.dumps(labels))

    def item(i, template, filled):
        return {"id": str(i), "label": filled, "template": template, "placeholders": ["a pen"]}

    train = [item(1, "Holding [something]", "holding a pen"), item(2, "Moving [something] up", "moving a pen up"),
             item(3, "Pushing [something] from left to right", "pushing a pen from left to right"),
             item(4, "Spinning [something]", "spinning a pen")]  # template not in labels.json
    val = [item(10, "Holding [something]", "holding a pen"), item(11, "Moving [something] up", "moving a pen up")]
    (root / "train.json").write_text(json.dumps(train))
    (root / "validation.json").write_text(json.dumps(val))
    (root / "test.json").write_text(json.dumps([{"id": "99"}]))
    webm = webm_encoder_works(root)
    for i in (1, 2, 3, 4, 10, 11):
        if webm:
            _video(root / f"{i}.webm", seed=i)
    return root, webm


def test_ssv2(ssv2):
    root, _ = ssv2
    videos, classes = read_annotations("ssv2", root)
    _check(videos)
    assert classes == ["Holding something", "Moving something up", "Pushing something from left to right"]
    assert videos["video_id"].tolist() == ["1", "2", "3", "4", "10", "11"]
    assert videos["split"].tolist() == ["train"] * 4 + ["test"] * 2  # validation -> test; test.json ignored
    assert videos["label"][0] == "Holding something"  # template without brackets, not the filled-in label
    assert videos["label"][3] == "Spinning something"  # unknown: kept, marked later by preprocess
    assert videos["path"][4] == str(root / "10.webm")


# -------------------------------------------------------------------------------------------- SSv1
@pytest.fixture(scope="module")
def ssv1(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssv1")
    classes = ["Holding something", "Moving something up", "Pushing something from left to right"]
    (root / "something-something-v1-labels.csv").write_text("\n".join(classes) + "\n")
    (root / "something-something-v1-train.csv").write_text(
        "100218;Holding something\n24;Moving something up\n7;Pushing something from left to right\n")
    (root / "something-something-v1-validation.csv").write_text("42;Moving something up\n")
    for i, vid in enumerate(("100218", "24", "7", "42")):
        write_jpeg_folder(root / vid, n=5, h=24, w=32, seed=i)
    return root


def test_ssv1(ssv1):
    videos, classes = read_annotations("ssv1", ssv1)
    _check(videos)
    assert classes == ["Holding something", "Moving something up", "Pushing something from left to right"]
    assert videos["video_id"].tolist() == ["100218", "24", "7", "42"]
    assert videos["split"].tolist() == ["train", "train", "train", "test"]
    assert Path(videos["path"][0]) == ssv1 / "100218" and Path(videos["path"][0]).is_dir()


# ------------------------------------------------------------------------------------------ Kinetics
@pytest.fixture(scope="module")
def kinetics(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinetics")
    ann = root / "annotations"
    ann.mkdir()
    header = "label,youtube_id,time_start,time_end,split,is_cc\n"
    (ann / "train.csv").write_text(header + "abseiling,--07WQ2iBlw,1,11,train,0\n"
                                   "playing guitar,-0Dt2OVrWy0,14,24,train,0\n"
                                   "playing guitar,absent_vid1,0,10,train,0\n")
    (ann / "validate.csv").write_text(header + "abseiling,zzzz0001,30,40,val,0\n")
    (ann / "test.csv").write_text(header + "abseiling,tttt0001,5,15,test,0\n")
    (ann / "readme.csv").write_text("note\nnot an annotation file\n")
    _video(root / "train" / "abseiling" / "--07WQ2iBlw_000001_000011.mp4", 1)
    _video(root / "train" / "playing_guitar" / "-0Dt2OVrWy0_000014_000024.mp4", 2)
    _video(root / "zzzz0001_000030_000040.mp4", 3)  # flat layout
    return root


def test_kinetics400(kinetics):
    videos, classes = read_annotations("kinetics400", kinetics, kinetics / "annotations")
    _check(videos)
    assert classes == ["abseiling", "playing guitar"]
    by_id = videos.set_index("video_id")
    assert set(by_id.index) == {"--07WQ2iBlw_000001_000011", "-0Dt2OVrWy0_000014_000024", "absent_vid1_000000_000010",
                                "zzzz0001_000030_000040"}  # the original test split is dropped: val is the test
    assert by_id.loc["zzzz0001_000030_000040", "split"] == "test"
    assert Path(by_id.loc["-0Dt2OVrWy0_000014_000024", "path"]) == kinetics / "train/playing_guitar/-0Dt2OVrWy0_000014_000024.mp4"
    assert Path(by_id.loc["zzzz0001_000030_000040", "path"]) == kinetics / "zzzz0001_000030_000040.mp4"
    assert not Path(by_id.loc["absent_vid1_000000_000010", "path"]).exists()  # marked missing by preprocess
    # a single CSV file works too
    one, _ = read_annotations("kinetics400", kinetics, kinetics / "annotations" / "test.csv")
    assert one["split"].tolist() == ["test"]


# -------------------------------------------------------------------------------------------- UCF101
@pytest.fixture(scope="module")
def ucf101(tmp_path_factory):
    root = tmp_path_factory.mktemp("ucf101")
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 HandstandPushups\n3 YoYo\n")
    (lists / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nHandstandPushups/v_HandStandPushups_g08_c01.avi 2\r\n"
        "YoYo/v_YoYo_g08_c01.avi 3\r\n")
    (lists / "testlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n"
                                          "HandstandPushups/v_HandStandPushups_g01_c01.avi\r\n")
    (lists / "trainlist02.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\n")
    (lists / "testlist02.txt").write_text("YoYo/v_YoYo_g08_c01.avi\n")
    for i, rel in enumerate(["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "HandstandPushups/v_HandStandPushups_g08_c01.avi",
                             "YoYo/v_YoYo_g08_c01.avi", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
                             "HandstandPushups/v_HandStandPushups_g01_c01.avi"]):
        _video(root / rel, i, lossless=False)
    return root


def test_ucf101(ucf101):
    videos, classes = read_annotations("ucf101", ucf101)
    _check(videos)
    assert classes == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    assert videos["split"].tolist() == ["train"] * 3 + ["test"] * 2
    assert videos["label"].tolist() == ["ApplyEyeMakeup", "HandstandPushups", "YoYo", "ApplyEyeMakeup", "HandstandPushups"]
    assert videos["video_id"][1] == "v_HandStandPushups_g08_c01"
    assert all(Path(p).is_file() for p in videos["path"])
    two, _ = read_annotations("ucf101", ucf101, split=2)
    assert two[["video_id", "split"]].values.tolist() == [["v_ApplyEyeMakeup_g01_c01", "train"], ["v_YoYo_g08_c01", "test"]]
    with pytest.raises(StfusionError, match="split must be 1, 2 or 3"):
        read_annotations("ucf101", ucf101, split=4)
    with pytest.raises(StfusionError, match="trainlist03.txt not found"):
        read_annotations("ucf101", ucf101, split=3)


# -------------------------------------------------------------------------------------------- HMDB51
@pytest.fixture(scope="module")
def hmdb51(tmp_path_factory):
    root = tmp_path_factory.mktemp("hmdb51")
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text(
        "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \nAtempting_to_comb_my_hair_brush_hair_h_nm_np2_le_goo_0.avi 2 \n"
        "Aussie_Brush_hair_u_cm_np1_fr_med_0.avi 0 \n")
    (splits / "cartwheel_test_split1.txt").write_text("(Rad)Schlagen_cartwheel_f_cm_np1_le_med_0.avi 1 \n"
                                                      "Bodenturnen_cartwheel_f_cm_np1_ri_med_0.avi 2 \n")
    (splits / "cartwheel_test_split2.txt").write_text("(Rad)Schlagen_cartwheel_f_cm_np1_le_med_0.avi 2 \n")
    (splits / "brush_hair_test_split2.txt").write_text("April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \n")
    for i, (cls, name) in enumerate([("brush_hair", "April_09_brush_hair_u_nm_np1_ba_goo_0.avi"),
                                     ("brush_hair", "Atempting_to_comb_my_hair_brush_hair_h_nm_np2_le_goo_0.avi"),
                                     ("cartwheel", "(Rad)Schlagen_cartwheel_f_cm_np1_le_med_0.avi"),
                                     ("cartwheel", "Bodenturnen_cartwheel_f_cm_np1_ri_med_0.avi")]):
        _video(root / cls / name, i, lossless=False)
    return root


def test_hmdb51(hmdb51):
    videos, classes = read_annotations("hmdb51", hmdb51)
    _check(videos)
    assert classes == ["brush_hair", "cartwheel"]
    assert len(videos) == 4  # the line marked 0 is not used
    assert videos.groupby("split").size().to_dict() == {"test": 2, "train": 2}
    assert Path(videos["path"][2]) == hmdb51 / "cartwheel" / "(Rad)Schlagen_cartwheel_f_cm_np1_le_med_0.avi"
    two, _ = read_annotations("hmdb51", hmdb51, hmdb51 / "testTrainMulti_7030_splits", split=2)
    assert two[["label", "split"]].values.tolist() == [["brush_hair", "train"], ["cartwheel", "test"]]


# ---------------------------------------------------------------------------------- csv and builtin
def test_generic_csv(tmp_path):
    for i in range(3):
        _video(tmp_path / "clips" / f"c{i}.mp4", i)
    (tmp_path / "annotations.csv").write_text("path,label,split\nclips/c0.mp4,dog,train\nclips/c1.mp4,cat,val\n"
                                              "clips/c2.mp4,dog,test\n")
    videos, classes = read_annotations("csv", tmp_path)
    _check(videos)
    assert classes == ["cat", "dog"]
    assert videos["split"].tolist() == ["train", "test", "test"]
    assert videos["video_id"].tolist() == ["clips/c0", "clips/c1", "clips/c2"]
    assert Path(videos["path"][1]) == tmp_path / "clips" / "c1.mp4"
    (tmp_path / "nosplit.csv").write_text("path,label\nclips/c0.mp4,dog\nclips/c1.mp4,cat\n")
    videos, _ = read_annotations("csv", tmp_path, tmp_path / "nosplit.csv")
    assert videos["split"].tolist() == ["train", "train"]


def test_ids_are_unique_for_class_folders_absolute_paths_and_suffixes(tmp_path):
    """Absolute paths in class folders (a/001.mp4, b/001.mp4), two files differing only in their suffix, and a
    file outside root all get distinct ids, the same on every read."""
    root = tmp_path / "data"
    outside = tmp_path / "elsewhere" / "a"
    files = [root / "a" / "001.mp4", root / "b" / "001.mp4", root / "x" / "clip.mov", root / "x" / "clip.webm",
             outside / "001.mp4"]
    lines = ["path,label"] + [f"{f},{f.parent.name}" for f in files]
    (root).mkdir()
    (root / "annotations.csv").write_text("\n".join(lines) + "\n")
    videos, _ = read_annotations("csv", root)
    _check(videos)
    ids = videos["video_id"].tolist()
    assert ids[:4] == ["a/001", "b/001", "x/clip.mov", "x/clip.webm"]
    assert ids[4].startswith("a/001~") and len(ids[4]) == len("a/001~") + 8
    assert read_annotations("csv", root)[0]["video_id"].tolist() == ids  # stable
    assert [Path(p) for p in videos["path"]] == files


def test_natural_ids_kept_unless_they_name_two_files(tmp_path):
    """HMDB51-style names are kept; the same file name in two class folders falls back to path ids."""
    root = tmp_path / "hmdb"
    split = root / "testTrainMulti_7030_splits"
    split.mkdir(parents=True)
    (split / "jump_test_split1.txt").write_text("same.avi 1\nonly_jump.avi 2\n")
    (split / "run_test_split1.txt").write_text("same.avi 1\n")
    videos, _ = read_annotations("hmdb51", root)
    _check(videos)
    assert videos["video_id"].tolist() == ["jump/same", "only_jump", "run/same"]


def test_builtin_reads_what_generate_wrote(tmp_path_factory):
    root = builtin_root(tmp_path_factory, clips_per_class=4, seed=0)
    videos, classes = read_annotations("builtin", root)
    _check(videos)
    assert classes == [c for c, _ in CLASSES]
    assert len(videos) == 56 and videos.groupby("split").size().to_dict() == {"test": 14, "train": 42}
    assert all(Path(p).is_file() for p in videos["path"])


# ------------------------------------------------------------------------- every format decodes
def test_every_format_preprocesses(tmp_path, ssv2, ssv1, kinetics, ucf101, hmdb51):
    ssv2_root, webm = ssv2
    cases = [("ssv1", ssv1, None, {"ok": 4}), ("ucf101", ucf101, None, {"ok": 5}), ("hmdb51", hmdb51, None, {"ok": 4}),
             ("kinetics400", kinetics, kinetics / "annotations", {"ok": 3, "missing": 1})]
    if webm:
        cases.append(("ssv2", ssv2_root, None, {"ok": 5, "unknown_label": 1}))
    for name, root, ann, expected in cases:
        videos, classes = read_annotations(name, root, ann)
        manifest = preprocess(videos, classes, tmp_path / name, cache_frames=4, size=16, workers=1, val_fraction=0,
                              progress=False)
        assert manifest["status"].value_counts().to_dict() == expected, name
        assert np.load(tmp_path / name / "clips.npy").shape == (expected["ok"], 4, 16, 16, 3)


# -------------------------------------------------------------------------------------------- errors
def test_errors(tmp_path, ssv1):
    with pytest.raises(StfusionError, match="dataset folder not found"):
        read_annotations("ssv1", tmp_path / "nowhere")
    with pytest.raises(StfusionError, match="unknown dataset"):
        read_annotations("imagenet", tmp_path)
    with pytest.raises(StfusionError, match="something-something-v1-labels.csv not found"):
        read_annotations("ssv1", tmp_path)
    with pytest.raises(StfusionError, match="not found"):
        read_annotations("builtin", tmp_path)

    (tmp_path / "annotations.csv").write_text("")
    with pytest.raises(StfusionError, match="empty"):
        read_annotations("csv", tmp_path)
    (tmp_path / "annotations.csv").write_text("file,class\na.mp4,x\n")
    with pytest.raises(StfusionError, match="must have columns path,label"):
        read_annotations("csv", tmp_path)
    (tmp_path / "annotations.csv").write_text("path,label\na.mp4,x\nb.mp4,y\na.mp4,y\n")
    with pytest.raises(StfusionError, match="duplicated video id 'a'"):
        read_annotations("csv", tmp_path)
    (tmp_path / "annotations.csv").write_text("path,label,split\na.mp4,x,holdout\n")
    with pytest.raises(StfusionError, match="unknown split 'holdout'"):
        read_annotations("csv", tmp_path)

    k = tmp_path / "k"
    k.mkdir()
    (k / "train.csv").write_text("label,youtube_id,time_start,time_end\nx,abc,0,10\n")
    with pytest.raises(StfusionError, match="missing split"):
        read_annotations("kinetics400", k, k / "train.csv")
    with pytest.raises(StfusionError, match="no CSV with columns"):
        read_annotations("kinetics400", k)

    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "something-something-v1-labels.csv").write_text("A\nB\n")
    (v1 / "something-something-v1-train.csv").write_text("1;C\n2;D\n")
    (v1 / "something-something-v1-validation.csv").write_text("3;C\n")
    with pytest.raises(StfusionError, match="none of the 3 labels"):
        read_annotations("ssv1", v1)
    (v1 / "something-something-v1-train.csv").write_text("1;A\n1;B\n")
    with pytest.raises(StfusionError, match="duplicated video id '1'"):
        read_annotations("ssv1", v1)
    (v1 / "something-something-v1-validation.csv").write_text("\n\n")
    with pytest.raises(StfusionError, match="empty"):
        read_annotations("ssv1", v1)

    s2 = tmp_path / "s2"
    s2.mkdir()
    (s2 / "labels.json").write_text('{"A": "0", "B": "1"}')
    (s2 / "train.json").write_text('[{"id": "1", "template": "A"}]')
    with pytest.raises(StfusionError, match="validation.json not found"):
        read_annotations("ssv2", s2)
    (s2 / "validation.json").write_text("[{not json")
    with pytest.raises(StfusionError, match="not valid JSON"):
        read_annotations("ssv2", s2)
