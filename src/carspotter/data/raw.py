"""What a raw-dataset layout reader hands to the prepared-folder writer, and the box rule every step shares.

Every layout (`updated` and `original` Stanford Cars in `stanford.py`, the Hugging Face parquet release in
`parquet.py`, one folder per class in `folders.py`) is a `RawLayout`: ``detect`` says what it is missing in a RAW
folder, ``read`` lists the images with their labels, ``expects`` describes its files for error messages, ``options``
names the `prepare` options it takes and ``detected`` whether ``layout="auto"`` tries it. Nothing here or in
`prepare` knows about a particular layout, so a new one plugs in by adding its `RawLayout` to `prepare.LAYOUTS`.

`StanfordImage` goes the other way: an image and its labels for the writers that make a raw dataset
(`stanford.write_stanford_raw`, `parquet.write_parquet_raw`), which `synth` and the tests use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from carspotter.formats.car_names import CarName


@dataclass(frozen=True)
class RawImage:
    """One annotated image as the raw dataset has it."""

    split: str  # "train" or "test"
    fname: str  # path inside the split folder of the prepared dataset, e.g. "00001.jpg"
    source: Path  # where the image file is now
    class_id: int  # 0-based
    bbox: tuple[int, int, int, int] | None = None  # PIL box (0-based, right/bottom exclusive); None: whole image
    name: str = ""  # how the raw dataset names it, for reports (e.g. "car_ims/000123.jpg")
    movable: bool = False  # the source is our own scratch copy (extracted archive): move it instead of copying
    # (the writer still checks that it lies inside that scratch folder before moving anything)


@dataclass
class RawDataset:
    layout: str
    classes: list[str]
    images: list[RawImage]
    details: dict[str, Any] = field(default_factory=dict)  # which raw files were used; goes into the manifest
    class_info: list[CarName] | None = None  # make, model, year per class when the user gave them (else parsed)


@dataclass(frozen=True)
class RawLayout:
    name: str
    expects: str  # one line: the files this layout needs, for error messages
    detect: Callable[[Path], list[str]]  # RAW -> what is missing (empty: RAW has this layout)
    # (RAW, scratch folder for extracted archives, **options) -> the images; every option in ``options`` is passed,
    # None when the user did not give it (the layout's default applies)
    read: Callable[..., RawDataset]
    options: tuple[str, ...] = ()  # the `prepare` options only this layout takes, e.g. ("test_fraction", "seed")
    detected: bool = True  # tried by layout="auto"; False: only when named (e.g. almost any folder has class folders)


@dataclass(frozen=True)
class StanfordImage:
    """One image to write into a raw layout (`stanford.write_stanford_raw`, `parquet.write_parquet_raw`)."""

    data: bytes  # the encoded image file (JPEG)
    class_id: int  # 0-based
    test: bool
    bbox: tuple[int, int, int, int]  # MATLAB 1-based inclusive (x1, y1, x2, y2), as in the .mat files
    name: str | None = None  # file name to use (e.g. "00063.jpg"); default: numbered like the real release


def clip_box(box: Sequence[float] | None, width: int, height: int) -> tuple[int, int, int, int]:
    """The one box rule, used by `prepare` and by the crop and erase transforms: a PIL box (0-based, right/bottom
    exclusive; rounded to whole pixels) clipped to the image; a missing box, or one with nothing left inside the image
    after clipping, is the whole image (a box that misses the car entirely says nothing about where it is)."""
    if box is None:
        return 0, 0, width, height
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, x2 = max(0, min(x1, width)), max(0, min(x2, width))
    y1, y2 = max(0, min(y1, height)), max(0, min(y2, height))
    if x2 <= x1 or y2 <= y1:
        return 0, 0, width, height
    return x1, y1, x2, y2


def lies_inside(path: Path, root: Path) -> bool:
    """Whether ``path``, every symlink followed, is ``root`` or below it (``root`` resolved too)."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())


def escapes(name: str) -> bool:
    """Whether a path written in an annotation file is absolute or climbs out with ``..`` (either slash)."""
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":")


def listed(names: list[str], limit: int = 10) -> str:
    """The first ``limit`` names, comma-separated, and how many more there are: for one-line reports."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def fingerprint(raw: Path) -> dict[str, Any]:
    """What RAW holds, cheaply: the number of files, their total size and a SHA-256 of the sorted (path, size)
    list (hidden files left out; contents are not read, so it takes seconds for the whole Stanford Cars release).
    Two folders with the same fingerprint hold the same files; a moved or copied RAW keeps its fingerprint."""
    import hashlib
    import os

    entries = []
    for dirpath, dirnames, files in os.walk(raw, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            try:
                size = path.stat().st_size
            except OSError:
                size = -1
            entries.append((path.relative_to(raw).as_posix(), size))
    digest = hashlib.sha256()
    for rel, size in sorted(entries):
        digest.update(f"{rel}\0{size}\n".encode())
    return {"files": len(entries), "bytes": sum(max(s, 0) for _, s in entries), "sha256": digest.hexdigest()}
