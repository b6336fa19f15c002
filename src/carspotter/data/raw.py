"""What a raw-dataset layout reader hands to the prepared-folder writer.

Every layout (`updated` and `original` Stanford Cars in `stanford.py`; one folder per class later) is a `RawLayout`:
``detect`` says what it is missing in a RAW folder, ``read`` lists the images with their labels. Nothing here knows
about a particular layout, so a new one plugs in by adding its `RawLayout` to `prepare.LAYOUTS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any


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


@dataclass(frozen=True)
class RawLayout:
    name: str
    expects: str  # one line: the files this layout needs, for error messages
    detect: Callable[[Path], list[str]]  # RAW -> what is missing (empty: RAW has this layout)
    read: Callable[[Path, Path], RawDataset]  # (RAW, scratch folder for extracted archives) -> the images


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
