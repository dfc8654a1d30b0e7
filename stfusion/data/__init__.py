"""Data layer: built-in benchmark, published annotation formats, video decoding, the uint8 cache, the prepared
videos (``prepare_videos``, ``manifest``, ``packed``) and the Dataset that training reads (METHOD.md §8-§10)."""

from .builtin import APPEARANCE_CLASSES, CLASSES, MOTION_PAIRS, class_kinds, footage_files, generate
from .cache import MANIFEST_COLUMNS, STATUSES, preprocess, resize_crop
from .dataset import MEAN, STD, ClipDataset, SplitClips, load_classes, load_manifest
from .formats import DATASETS, read_annotations
from .sampling import (
    TorchRNG,
    centre_indices,
    segment_indices,
    spatial_crops,
    test_clips,
    train_indices,
    uniform_indices,
)
from .transforms import ViewSpec, normalize, view_from_params
from .video_dataset import VideoDataset, open_clips
from .video import (
    BACKENDS,
    DECORD_BAD_WIDTHS,
    DecoderFallbackWarning,
    VideoReadError,
    count_frames,
    read_frames,
    read_uniform,
    write_video,
)

__all__ = [
    "APPEARANCE_CLASSES",
    "BACKENDS",
    "CLASSES",
    "DATASETS",
    "DECORD_BAD_WIDTHS",
    "MANIFEST_COLUMNS",
    "MEAN",
    "MOTION_PAIRS",
    "STATUSES",
    "STD",
    "ClipDataset",
    "SplitClips",
    "VideoDataset",
    "ViewSpec",
    "DecoderFallbackWarning",
    "TorchRNG",
    "VideoReadError",
    "centre_indices",
    "class_kinds",
    "count_frames",
    "footage_files",
    "generate",
    "load_classes",
    "load_manifest",
    "normalize",
    "open_clips",
    "preprocess",
    "read_annotations",
    "read_frames",
    "read_uniform",
    "resize_crop",
    "segment_indices",
    "spatial_crops",
    "test_clips",
    "train_indices",
    "uniform_indices",
    "view_from_params",
    "write_video",
]
