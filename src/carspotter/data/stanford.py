"""The two Stanford Cars releases as users have them, read into a `RawDataset`.

- ``updated`` (the thesis's): ``car_ims.tgz`` or ``car_ims/``, ``cars_annos.mat`` (struct ``annotations`` with
  ``relative_im_path, bbox_x1..bbox_y2, class, test``), class names from ``cars_meta.mat`` (``car_devkit.tgz`` or
  ``devkit/``), falling back on ``cars_annos.mat['class_names']``.
- ``original`` (torchvision, Kaggle mirrors): ``cars_train/`` and ``cars_test/`` (or ``.tgz``, or mirror-nested as
  ``cars_train/cars_train/``), ``devkit/`` or ``car_devkit.tgz`` with ``cars_meta.mat`` and
  ``cars_train_annos.mat``, and ``cars_test_annos_withlabels.mat`` at the top or in ``devkit/``.

The ``.mat`` files are read (and, for `write_stanford_raw`, written) through `carspotter.data.stanford_mat`; their
boxes, MATLAB's 1-based inclusive pixel coordinates, become PIL boxes here. `write_stanford_raw` writes either release
file for file (names, archives, nesting) from images and labels: `synth` and the tests make raw datasets with it.
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import logging
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from carspotter.data.extract import archive_names, extract_archive
from carspotter.data.raw import RawDataset, RawImage, RawLayout, StanfordImage, escapes, listed
from carspotter.data.stanford_mat import (
    LABELLED_FIELDS,
    UNLABELLED_FIELDS,
    UPDATED_FIELDS,
    Annotation,
    mat_bytes,
    pil_box,
    read_annotations,
    read_class_names,
)
from carspotter.errors import UserError

log = logging.getLogger(__name__)

# The dataset's root is the folder holding its anchor (cars_annos.mat; cars_train/), found at most this deep below RAW
# (e.g. RAW/stanford_cars/); its other files are searched for at most _SEARCH_DEPTH below that root (e.g.
# ROOT/car_devkit/devkit/cars_meta.mat), so files of two datasets side by side never get mixed.
_ROOT_DEPTH = 1
_SEARCH_DEPTH = 2
_TEST_LABELS = "cars_test_annos_withlabels*.mat"  # Kaggle ships "cars_test_annos_withlabels (1).mat"
_IMAGE_DIRS = frozenset({"car_ims", "cars_train", "cars_test"})


# ------------------------------------------------------------------------------------------------- annotations


def _refuse_escaping(path: Path, field: str, annotations: list[Annotation]) -> None:
    """Refuse annotations whose image path is absolute or climbs out with ``..``: nothing outside the image folder
    may be read, copied or moved, so the whole file is refused before any image is touched."""
    bad = [str(getattr(a, field)) for a in annotations if escapes(str(getattr(a, field)))]
    if bad:
        raise UserError(
            f"{path}: refusing to prepare: {len(bad)} annotation(s) have a {field} leading outside the image folder "
            f"(absolute or with '..'): {listed(bad, 5)}; the file is damaged or hostile, download it again "
            "(nothing was copied or moved)"
        )


def _class_index(annotation: Annotation, num_classes: int, path: Path, what: str) -> int:
    cls = annotation.cls
    if cls is None or not 1 <= cls <= num_classes:
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
    annotations = read_annotations(annos_path, UPDATED_FIELDS)
    _refuse_escaping(annos_path, "relative_im_path", annotations)
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
    for i, ann in enumerate(annotations):
        rel = PurePosixPath(str(ann.relative_im_path).replace("\\", "/"))
        inside = PurePosixPath(*rel.parts[1:]) if len(rel.parts) > 1 and rel.parts[0] == "car_ims" else rel
        split = "test" if ann.test else "train"
        images.append(
            RawImage(
                split=split,
                fname=rel.name,
                source=images_dir / inside,
                class_id=_class_index(ann, len(classes), annos_path, f"annotation {i + 1} ({rel})"),
                bbox=pil_box(ann.bbox),
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
        annotations = read_annotations(annos, LABELLED_FIELDS)
        _refuse_escaping(annos, "fname", annotations)
        images_dir, movable, images_from = _images_folder(folder, f"cars_{split}", scratch)
        used[f"{split}_annotations"] = named[annos_key]
        used[f"{split}_images"] = images_from
        for i, ann in enumerate(annotations):
            fname = PurePosixPath(str(ann.fname).replace("\\", "/")).name
            images.append(
                RawImage(
                    split=split,
                    fname=fname,
                    source=images_dir / fname,
                    class_id=_class_index(ann, len(classes), annos, f"annotation {i + 1} ({fname})"),
                    bbox=pil_box(ann.bbox),
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


# ------------------------------------------------------------------------------------------- writing (synth, tests)


LAYOUT_NAMES = (UPDATED.name, ORIGINAL.name)
_ARCHIVE_MTIME = 1356998400  # 2013-01-01, fixed: the same images give the same archive bytes


class _Sink:
    """Writes files either into folders or into ``.tgz`` archives (deterministic bytes: fixed mtimes)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.archives: dict[str, list[tuple[str, bytes]]] = {}

    def add(self, rel: str, data: bytes, archive: str | None = None) -> None:
        if archive is None:
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        else:
            self.archives.setdefault(archive, []).append((rel, data))

    def close(self) -> None:
        for name, members in self.archives.items():
            with open(self.root / name, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
                with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                    dirs: set[str] = set()
                    for rel, data in members:
                        parts = rel.split("/")
                        for depth in range(1, len(parts)):
                            d = "/".join(parts[:depth])
                            if d not in dirs:
                                dirs.add(d)
                                info = tarfile.TarInfo(d)
                                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, _ARCHIVE_MTIME
                                tar.addfile(info)
                        info = tarfile.TarInfo(rel)
                        info.size, info.mode, info.mtime = len(data), 0o644, _ARCHIVE_MTIME
                        tar.addfile(info, io.BytesIO(data))


def write_stanford_raw(
    out: Path,
    *,
    layout: str,
    class_names: list[str],
    images: Iterable[StanfordImage],
    archives: bool = True,
    nested: bool = False,
    test_labels_in_devkit: bool = False,
) -> dict[str, int]:
    """Write a raw Stanford Cars dataset (``updated`` or ``original`` release) into the existing folder ``out``.

    ``nested`` mimics the Kaggle mirrors' ``cars_train/cars_train/`` (original layout); ``test_labels_in_devkit``
    puts ``cars_test_annos_withlabels.mat`` into ``devkit/`` instead of next to it. Returns the split counts.
    """
    if layout not in LAYOUT_NAMES:
        raise UserError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUT_NAMES)}")
    out = Path(out)
    sink = _Sink(out)
    devkit = "car_devkit.tgz" if archives else None
    counts = {"train": 0, "test": 0}
    if layout == "updated":
        annotations = []
        for i, img in enumerate(images, start=1):
            rel = f"car_ims/{img.name or f'{i:06d}.jpg'}"
            sink.add(rel, img.data, "car_ims.tgz" if archives else None)
            annotations.append(Annotation(img.bbox, img.class_id + 1, relative_im_path=rel, test=img.test))
            counts["test" if img.test else "train"] += 1
        annos = mat_bytes(annotations=annotations, fields=UPDATED_FIELDS, class_names=class_names)
        (out / "cars_annos.mat").write_bytes(annos)
        sink.add("devkit/cars_meta.mat", mat_bytes(class_names=class_names), devkit)
    else:
        split_annotations: dict[str, list[Annotation]] = {"train": [], "test": []}
        for img in images:
            split = "test" if img.test else "train"
            counts[split] += 1
            fname = img.name or f"{counts[split]:05d}.jpg"
            folder = f"cars_{split}/cars_{split}" if nested else f"cars_{split}"
            sink.add(f"{folder}/{fname}", img.data, f"cars_{split}.tgz" if archives else None)
            split_annotations[split].append(Annotation(img.bbox, img.class_id + 1, fname=fname))
        train, test = split_annotations["train"], split_annotations["test"]
        sink.add("devkit/cars_meta.mat", mat_bytes(class_names=class_names), devkit)
        sink.add("devkit/cars_train_annos.mat", mat_bytes(annotations=train, fields=LABELLED_FIELDS), devkit)
        sink.add("devkit/cars_test_annos.mat", mat_bytes(annotations=test, fields=UNLABELLED_FIELDS), devkit)
        labels = mat_bytes(annotations=test, fields=LABELLED_FIELDS)
        if test_labels_in_devkit:
            sink.add("devkit/cars_test_annos_withlabels.mat", labels, devkit)
        else:
            (out / "cars_test_annos_withlabels.mat").write_bytes(labels)
    sink.close()
    return counts
