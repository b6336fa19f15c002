"""The two Stanford Cars releases as users have them, read into a `RawDataset`.

- ``updated`` (the thesis's): ``car_ims.tgz`` or ``car_ims/``, ``cars_annos.mat`` (struct ``annotations`` with
  ``relative_im_path, bbox_x1..bbox_y2, class, test``), class names from ``cars_meta.mat`` (``car_devkit.tgz`` or
  ``devkit/``), falling back on ``cars_annos.mat['class_names']``.
- ``original`` (torchvision, Kaggle mirrors): ``cars_train/`` and ``cars_test/`` (or ``.tgz``, or mirror-nested as
  ``cars_train/cars_train/``), ``devkit/`` or ``car_devkit.tgz`` with ``cars_meta.mat`` and
  ``cars_train_annos.mat``, and ``cars_test_annos_withlabels.mat`` at the top or in ``devkit/``.

Boxes in the ``.mat`` files are MATLAB's 1-based inclusive pixel coordinates; they become PIL boxes here.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import scipy.io

from carspotter.data.extract import archive_names, extract_archive
from carspotter.data.raw import RawDataset, RawImage, RawLayout, escapes, listed
from carspotter.data.writer import PrepareReport
from carspotter.errors import UserError

log = logging.getLogger(__name__)

# The dataset's root is the folder holding its anchor (cars_annos.mat; cars_train/), found at most this deep below RAW
# (e.g. RAW/stanford_cars/); its other files are searched for at most _SEARCH_DEPTH below that root (e.g.
# ROOT/car_devkit/devkit/cars_meta.mat), so files of two datasets side by side never get mixed.
_ROOT_DEPTH = 1
_SEARCH_DEPTH = 2
_TEST_LABELS = "cars_test_annos_withlabels*.mat"  # Kaggle ships "cars_test_annos_withlabels (1).mat"
_BOX_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")
_IMAGE_DIRS = frozenset({"car_ims", "cars_train", "cars_test"})


# ---------------------------------------------------------------------------------------------------------- .mat


def load_mat(path: Path) -> dict[str, Any]:
    try:
        return scipy.io.loadmat(str(path))
    except (ValueError, OSError, TypeError, NotImplementedError, KeyError) as exc:
        raise UserError(f"{path}: not a readable MATLAB .mat file ({exc}); download it again") from None


def _scalar(value: Any) -> Any:
    """A loadmat struct field (a 1×1 number array or a 1-element string array) as a Python int or str."""
    arr = np.asarray(value)
    while arr.dtype == object and arr.size == 1:
        arr = np.asarray(arr.ravel()[0])
    if arr.dtype.kind in "US":
        return str(arr.ravel()[0]).strip() if arr.size else ""
    if arr.size != 1:
        raise ValueError(f"expected one value, got shape {arr.shape}")
    return arr.ravel()[0].item()


def read_struct(path: Path, key: str, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """The rows of the struct array ``key`` in a .mat file, each a dict of Python ints/strs."""
    mat = load_mat(path)
    if key not in mat:
        found = ", ".join(k for k in mat if not k.startswith("__")) or "nothing"
        raise UserError(f"{path}: no '{key}' in this .mat file (it holds {found}); is this the right file?")
    arr = mat[key]
    names = arr.dtype.names or ()
    lacking = [f for f in required if f not in names]
    if lacking:
        raise UserError(
            f"{path}: '{key}' lacks the field(s) {', '.join(lacking)} (has {', '.join(names) or 'none'}); "
            "is this the right file?"
        )
    rows = []
    for i, item in enumerate(arr.ravel()):
        try:
            rows.append({f: _scalar(item[f]) for f in names})
        except (ValueError, IndexError) as exc:
            raise UserError(f"{path}: '{key}' entry {i + 1} is malformed ({exc})") from None
    return rows


def read_class_names(path: Path) -> list[str]:
    """The ``class_names`` cell of ``cars_meta.mat`` (or ``cars_annos.mat``): class id i (1-based) is entry i-1."""
    mat = load_mat(path)
    if "class_names" not in mat:
        raise UserError(f"{path}: no 'class_names' in this .mat file; is this the devkit's cars_meta.mat?")
    names = [str(_scalar(v)) for v in np.asarray(mat["class_names"]).ravel()]
    if not names:
        raise UserError(f"{path}: 'class_names' is empty")
    return names


def _box(row: dict[str, Any]) -> tuple[int, int, int, int]:
    """MATLAB 1-based inclusive (x1, y1, x2, y2) -> PIL box (0-based, right/bottom exclusive)."""
    x1, y1, x2, y2 = (int(row[f]) for f in _BOX_FIELDS)
    return x1 - 1, y1 - 1, x2, y2


def _refuse_escaping(path: Path, field: str, rows: list[dict[str, Any]]) -> None:
    """Refuse annotations whose image path is absolute or climbs out with ``..``: nothing outside the image folder
    may be read, copied or moved, so the whole file is refused before any image is touched."""
    bad = [str(row[field]) for row in rows if escapes(str(row[field]))]
    if bad:
        raise UserError(
            f"{path}: refusing to prepare: {len(bad)} annotation(s) have a {field} leading outside the image folder "
            f"(absolute or with '..'): {listed(bad, 5)}; the file is damaged or hostile, download it again "
            "(nothing was copied or moved)"
        )


def _class_index(row: dict[str, Any], num_classes: int, path: Path, what: str) -> int:
    cls = int(row["class"])
    if not 1 <= cls <= num_classes:
        raise UserError(f"{path}: {what} has class {cls}, outside 1..{num_classes}; annotations and class names differ")
    return cls - 1


# ------------------------------------------------------------------------------------------------ finding files


@dataclass(frozen=True)
class _Entry:
    depth: int
    path: Path
    is_dir: bool


def _index(raw: Path, max_depth: int) -> tuple[_Entry, ...]:
    """Every file and folder down to ``max_depth`` below RAW, shallowest first; hidden and image folders are
    listed but not searched into."""
    entries: list[_Entry] = []
    level = [raw]
    for depth in range(max_depth + 1):
        nxt: list[Path] = []
        for folder in level:
            try:
                with os.scandir(folder) as it:
                    items = sorted(it, key=lambda e: e.name)
            except OSError:
                continue
            for e in items:
                if e.name.startswith("."):
                    continue
                is_dir = e.is_dir()
                entries.append(_Entry(depth, Path(e.path), is_dir))
                if is_dir and e.name not in _IMAGE_DIRS:
                    nxt.append(Path(e.path))
        level = nxt
    return tuple(entries)


class _RawFolder:
    def __init__(self, raw: Path, max_depth: int = _SEARCH_DEPTH) -> None:
        self.raw = raw
        self.entries = _index(raw, max_depth)

    def find(self, pattern: str, *, is_dir: bool | None = False) -> Path | None:
        """The shallowest file (or folder; None: either) under RAW whose name matches ``pattern``."""
        for e in self.entries:
            if (is_dir is None or e.is_dir == is_dir) and fnmatch.fnmatchcase(e.path.name, pattern):
                return e.path
        return None

    def find_any(self, *patterns: str, is_dir: bool | None = False) -> Path | None:
        for p in patterns:
            hit = self.find(p, is_dir=is_dir)
            if hit is not None:
                return hit
        return None


def _dataset_root(raw: Path, *anchors: str) -> _RawFolder | None:
    """RAW, or the folder below it holding the first anchor found (a file or folder name), ready to search."""
    hit = _RawFolder(raw, _ROOT_DEPTH).find_any(*anchors, is_dir=None)
    return None if hit is None else _RawFolder(hit.parent)


def _descend_nested(folder: Path) -> Path:
    """``cars_train/cars_train/`` (mirror nesting) -> the innermost folder of that name."""
    while (folder / folder.name).is_dir():
        folder = folder / folder.name
    return folder


def _images_folder(raw: _RawFolder, name: str, scratch: Path) -> tuple[Path, bool, str]:
    """The folder holding ``name``'s images: RAW's extracted one, else its ``.tgz`` extracted into scratch.

    Returns (folder, movable, what was used).
    """
    folder = raw.find(name, is_dir=True)
    if folder is not None:
        return _descend_nested(folder), False, str(folder)
    archive = raw.find_any(f"{name}.tgz", f"{name}.tar.gz", f"{name}.tar")
    if archive is None:
        raise UserError(f"{raw.raw}: neither {name}/ nor {name}.tgz found")
    root = extract_archive(archive, scratch / name)
    inner = root / name if (root / name).is_dir() else root
    return _descend_nested(inner), True, str(archive)


def _devkit_file(raw: _RawFolder, pattern: str, scratch: Path) -> tuple[Path, str] | None:
    """A devkit file found under RAW (``devkit/`` or top), else inside ``car_devkit.tgz``.

    Returns (where it is now, how the manifest names it: the RAW path, or ``ARCHIVE:member`` for an extracted file,
    whose scratch copy is deleted once the dataset is written).
    """
    hit = raw.find(pattern)
    if hit is not None:
        return hit, str(hit)
    archive = raw.find_any("car_devkit.tgz", "car_devkit.tar.gz", "car_devkit.tar")
    if archive is None:
        return None
    root = extract_archive(archive, scratch / "car_devkit")
    matches = sorted(p for p in root.rglob("*") if p.is_file() and fnmatch.fnmatchcase(p.name, pattern))
    return (matches[0], f"{archive}:{matches[0].relative_to(root).as_posix()}") if matches else None


def _devkit_has(raw: _RawFolder, pattern: str) -> bool:
    if raw.find(pattern) is not None:
        return True
    archive = raw.find_any("car_devkit.tgz", "car_devkit.tar.gz", "car_devkit.tar")
    if archive is None:
        return False
    return any(fnmatch.fnmatchcase(PurePosixPath(n).name, pattern) for n in archive_names(archive))


def _has_images(raw: _RawFolder, name: str) -> bool:
    return raw.find(name, is_dir=True) is not None or raw.find_any(f"{name}.tgz", f"{name}.tar.gz", f"{name}.tar")


# ------------------------------------------------------------------------------------------------------ updated


def detect_updated(raw: Path) -> list[str]:
    folder = _dataset_root(raw, "cars_annos.mat")
    if folder is None:
        return ["cars_annos.mat"]
    missing = []
    if not _has_images(folder, "car_ims"):
        missing.append("car_ims.tgz or car_ims/")
    return missing


def read_updated(raw: Path, scratch: Path) -> RawDataset:
    folder = _dataset_root(raw, "cars_annos.mat")
    annos_path = None if folder is None else folder.find("cars_annos.mat")
    if folder is None or annos_path is None:
        raise UserError(f"{raw}: no cars_annos.mat; the updated release needs it next to car_ims.tgz")
    rows = read_struct(annos_path, "annotations", ("relative_im_path", *_BOX_FIELDS, "class", "test"))
    _refuse_escaping(annos_path, "relative_im_path", rows)
    meta = _devkit_file(folder, "cars_meta.mat", scratch)
    if meta is not None:
        classes = read_class_names(meta[0])
        names_from = meta[1]
    else:
        classes = read_class_names(annos_path)
        names_from = f"{annos_path} (class_names; no cars_meta.mat found)"
        log.info("no cars_meta.mat (car_devkit.tgz or devkit/) found; using the class names in %s", annos_path)
    images_dir, movable, images_from = _images_folder(folder, "car_ims", scratch)
    images = []
    for i, row in enumerate(rows):
        rel = PurePosixPath(str(row["relative_im_path"]).replace("\\", "/"))
        inside = PurePosixPath(*rel.parts[1:]) if len(rel.parts) > 1 and rel.parts[0] == "car_ims" else rel
        split = "test" if int(row["test"]) else "train"
        images.append(
            RawImage(
                split=split,
                fname=rel.name,
                source=images_dir / inside,
                class_id=_class_index(row, len(classes), annos_path, f"annotation {i + 1} ({rel})"),
                bbox=_box(row),
                name=str(rel),
                movable=movable,
            )
        )
    details = {"annotations": str(annos_path), "class_names": names_from, "images": images_from}
    return RawDataset(layout="updated", classes=classes, images=images, details=details)


# ----------------------------------------------------------------------------------------------------- original


_TRAIN_ANCHORS = ("cars_train", "cars_train.tgz", "cars_train.tar.gz", "cars_train.tar")


def detect_original(raw: Path) -> list[str]:
    folder = _dataset_root(raw, *_TRAIN_ANCHORS) or _dataset_root(raw, "cars_test", "cars_test.tgz")
    if folder is None:  # no image folder or archive: name the devkit only when it is missing too
        devkit = _dataset_root(raw, "devkit", "car_devkit.tgz", "car_devkit.tar.gz", "car_devkit.tar")
        lacks = ["cars_train.tgz or cars_train/", "cars_test.tgz or cars_test/"]
        if devkit is None:
            lacks.append("devkit/ or car_devkit.tgz")
        if devkit is None or not _devkit_has(devkit, _TEST_LABELS):
            lacks.append("cars_test_annos_withlabels.mat")
        return lacks
    missing = [f"{n}.tgz or {n}/" for n in ("cars_train", "cars_test") if not _has_images(folder, n)]
    for name in ("cars_meta.mat", "cars_train_annos.mat"):
        if not _devkit_has(folder, name):
            missing.append(f"{name} (devkit/ or car_devkit.tgz)")
    if not _devkit_has(folder, _TEST_LABELS):
        missing.append("cars_test_annos_withlabels.mat (at the top or in devkit/)")
    return missing


def read_original(raw: Path, scratch: Path) -> RawDataset:
    folder = _dataset_root(raw, *_TRAIN_ANCHORS)
    if folder is None:
        raise UserError(f"{raw}: neither cars_train/ nor cars_train.tgz found")
    found: dict[str, Path] = {}
    named: dict[str, str] = {}
    for key, pattern in (("meta", "cars_meta.mat"), ("train", "cars_train_annos.mat"), ("test", _TEST_LABELS)):
        path = _devkit_file(folder, pattern, scratch)
        if path is None:
            hint = (
                " (the test labels were published separately from the devkit: get cars_test_annos_withlabels.mat "
                "and put it next to devkit/)"
                if key == "test"
                else ""
            )
            raise UserError(f"{raw}: no {pattern} found{hint}")
        found[key], named[key] = path
    classes = read_class_names(found["meta"])
    images: list[RawImage] = []
    used = {"class_names": named["meta"]}
    for split, annos_key in (("train", "train"), ("test", "test")):
        annos = found[annos_key]
        rows = read_struct(annos, "annotations", (*_BOX_FIELDS, "class", "fname"))
        _refuse_escaping(annos, "fname", rows)
        images_dir, movable, images_from = _images_folder(folder, f"cars_{split}", scratch)
        used[f"{split}_annotations"] = named[annos_key]
        used[f"{split}_images"] = images_from
        for i, row in enumerate(rows):
            fname = PurePosixPath(str(row["fname"]).replace("\\", "/")).name
            images.append(
                RawImage(
                    split=split,
                    fname=fname,
                    source=images_dir / fname,
                    class_id=_class_index(row, len(classes), annos, f"annotation {i + 1} ({fname})"),
                    bbox=_box(row),
                    name=f"cars_{split}/{fname}",
                    movable=movable,
                )
            )
    return RawDataset(layout="original", classes=classes, images=images, details=used)


UPDATED = RawLayout(
    name="updated",
    expects="car_ims.tgz (or car_ims/), cars_annos.mat, car_devkit.tgz (or devkit/cars_meta.mat)",
    detect=detect_updated,
    read=read_updated,
)
ORIGINAL = RawLayout(
    name="original",
    expects=(
        "cars_train/ and cars_test/ (or .tgz), devkit/ (or car_devkit.tgz) with cars_meta.mat and "
        "cars_train_annos.mat, cars_test_annos_withlabels.mat"
    ),
    detect=detect_original,
    read=read_original,
)


def prepare(raw: str | Path, out: str | Path, *, layout: str = "auto", overwrite: bool = False) -> PrepareReport:
    """`carspotter.data.prepare.prepare`, reachable from here too (the layouts' dispatcher imports this module)."""
    from carspotter.data.prepare import prepare as _prepare

    return _prepare(raw, out, layout=layout, overwrite=overwrite)
