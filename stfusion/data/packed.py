"""Packed frame folders: the frames of one video (Something-Something V1 ships folders of JPEG frames) in one file.

A ``.jpgpack`` file is an uncompressed ZIP archive (``ZIP_STORED``) holding the folder's image files, byte for
byte (nothing is re-encoded), in frame order; any ZIP tool lists or extracts it (``unzip -l clip.jpgpack``).
Frame ``i`` is the archive's ``i``-th member.  One file a video instead of one a frame: the millions of small
files of a frame dataset are what file systems and copies pay for.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from stfusion.io.files import atomic_write

__all__ = ["PACK_SUFFIX", "PackedFrames", "pack_frames"]

PACK_SUFFIX = ".jpgpack"


def pack_frames(files, out_path) -> Path:
    """Write the image ``files`` (in frame order) into the archive ``out_path``, atomically (tmp + rename)."""

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for f in files:
                archive.write(f, arcname=Path(f).name)

    return atomic_write(out_path, write)


class PackedFrames:
    """Frames of a ``.jpgpack`` archive: ``len(pack)`` frames, ``pack[i]`` a binary file object of frame ``i``
    (what ``PIL.Image.open`` takes), ``pack.names[i]`` its original file name.  Raises :class:`zipfile.BadZipFile` or :class:`OSError` for a damaged file."""

    def __init__(self, path):
        self.path = Path(path)
        self._archive = zipfile.ZipFile(self.path)
        self._members = self._archive.infolist()
        self.names = [m.filename for m in self._members]

    def __len__(self) -> int:
        return len(self._members)

    def __getitem__(self, i: int) -> io.BytesIO:
        return io.BytesIO(self._archive.read(self._members[i]))

    def close(self) -> None:
        self._archive.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
