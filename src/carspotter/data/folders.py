"""The ``folders`` raw layout: a user's own photos, one folder per car model.

RAW holds ``<class name>/<images>`` (any nesting inside a class folder), or ``train/<class name>/...`` and
``test/<class name>/...`` when the user has split already. Class names are the folder names, sorted (ids 0..n-1);
there are no boxes, so each image's box is the whole image. Without a given split, the test split is drawn per class
(stratified, seeded). Identical files (same bytes) always end up on one side of the split: they are kept together
when carspotter splits, and a test file identical to a training file is left out when the user split.

What was skipped and why (non-image files, duplicates, classes too small to split) goes into the manifest through
``RawDataset.details``: as data under ``folders`` and as readable lines under ``warnings``. Images that do not
decode are handed to the writer, which leaves them out and lists them as for every layout.

Each class's make, model and year are parsed from its name (`carspotter.formats.car_names`) unless RAW holds a
``classes.csv`` beside the class folders (columns ``class_name, make, model, year``; one row per class).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from carspotter.data.prepared import stratified_split
from carspotter.data.raw import RawDataset, RawImage, RawLayout, lies_inside, listed
from carspotter.data.writer import image_size
from carspotter.errors import UserError
from carspotter.formats.car_names import read_classes_csv
from carspotter.formats.files import sha256_file

log = logging.getLogger(__name__)

NAME = "folders"
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm"}
)
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_SEED = 0
_SPLIT_DIRS = ("train", "test")
CLASSES_FILE = "classes.csv"  # optional, beside the class folders: class_name, make, model, year


@dataclass
class FoldersReport:
    """What happened to every file under RAW that did not become a plain prepared image."""

    presplit: bool  # RAW had train/ and test/
    test_fraction: float | None  # None when the user split
    seed: int | None
    skipped: list[str] = field(default_factory=list)  # not images (by extension) or outside any class folder
    outside: list[str] = field(default_factory=list)  # symlinked files or class folders that lead outside RAW
    unreadable: list[str] = field(default_factory=list)  # image extension, but does not decode
    duplicate_groups: list[list[str]] = field(default_factory=list)  # identical files, each group on one side
    dropped_duplicates: list[str] = field(default_factory=list)  # test files identical to a training file
    too_few: dict[str, int] = field(default_factory=dict)  # class -> readable images, when fewer than 2
    empty_classes: list[str] = field(default_factory=list)  # class folders without a readable image (left out)
    without_train: list[str] = field(default_factory=list)  # user split: classes with no training image
    without_test: list[str] = field(default_factory=list)  # classes with no test image

    def lines(self) -> list[str]:
        """One readable line per kind of problem (empty when there is none).

        Unreadable images are not among them: the prepared-folder writer lists those, as for every layout.
        """
        out = []
        if self.skipped:
            out.append(
                f"skipped {len(self.skipped)} file(s) that are not images in a class folder: {listed(self.skipped)}"
            )
        if self.outside:
            out.append(
                f"skipped {len(self.outside)} symlinked file(s) or class folder(s) leading outside RAW (nothing is "
                f"read from outside RAW; copy them in to use them): {listed(self.outside)}"
            )
        if self.empty_classes:
            out.append(
                f"left out {len(self.empty_classes)} class folder(s) without a readable image (empty, or only "
                f"unreadable or non-image files): {listed(self.empty_classes)}"
            )
        if self.duplicate_groups:
            where = "the same split" if not self.presplit else "one split"
            groups = ["=".join(g) for g in self.duplicate_groups]
            out.append(f"{len(groups)} group(s) of identical files, each kept in {where}: {listed(groups, 5)}")
        if self.dropped_duplicates:
            out.append(
                f"left out {len(self.dropped_duplicates)} test image(s) identical to a training image: "
                f"{listed(self.dropped_duplicates)}"
            )
        if self.too_few:
            shown = ", ".join(f"{name!r} ({n})" for name, n in list(self.too_few.items())[:10])
            out.append(
                f"{len(self.too_few)} class(es) have too few images to split (a class needs at least 2, one for "
                f"train and one for test); all of their images are in train and the test split has none of them: "
                f"{shown}{' ...' if len(self.too_few) > 10 else ''}"
            )
        if self.without_train:
            out.append(
                f"{len(self.without_train)} class(es) have test images but no training image (the model cannot "
                f"learn them): {listed(self.without_train)}"
            )
        others = [c for c in self.without_test if c not in self.too_few]
        if others:
            out.append(f"{len(others)} class(es) have no test image: {listed(others)}")
        return out


@dataclass(frozen=True)
class _File:
    class_name: str
    rel: str  # path inside the class folder, posix
    source: Path
    name: str  # path relative to RAW, for reports
    split: str | None = None  # given by the user's train/ and test/ folders


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in ("Thumbs.db", "desktop.ini", "__MACOSX")


def _walk(folder: Path) -> list[Path]:
    """Every non-hidden file below ``folder``, in a stable order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if not _is_hidden(f))
    return found


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p.name))


def _is_presplit(raw: Path) -> bool:
    present = [(raw / d).is_dir() for d in _SPLIT_DIRS]
    if all(present):
        others = [p.name for p in _subdirs(raw) if p.name not in _SPLIT_DIRS]
        if others:
            raise UserError(
                f"{raw}: has train/ and test/ (a split you made) and also the folder(s) {listed(others, 5)}; put every "
                "class folder inside train/ and test/, or remove train/ and test/ to let carspotter split"
            )
        return True
    if any(present):
        which = _SPLIT_DIRS[present.index(True)]
        log.warning("%s: %s/ without its counterpart is read as a class named %r", raw, which, which)
    return False


def detect(raw: Path) -> list[str]:
    """What RAW lacks to be a folder-per-class dataset (empty: it is one)."""
    raw = Path(raw)
    roots = [raw / d for d in _SPLIT_DIRS] if _is_presplit(raw) else [raw]
    for root in roots:
        if not any(f.suffix.lower() in IMAGE_EXTENSIONS for cls in _subdirs(root) for f in _walk(cls)):
            return [f"class folders with images ({root}/<class name>/*.jpg)"]
    return []


def _list_files(raw: Path, presplit: bool, report: FoldersReport) -> list[_File]:
    files: list[_File] = []
    splits: list[tuple[str | None, Path]] = [(s, raw / s) for s in _SPLIT_DIRS] if presplit else [(None, raw)]
    for split, root in splits:
        for p in sorted(root.iterdir()):
            if p.is_file() and not _is_hidden(p.name) and not (p.name == CLASSES_FILE and root == raw):
                report.skipped.append(p.relative_to(raw).as_posix())  # not inside any class folder
        for cls_dir in _subdirs(root):
            if not lies_inside(cls_dir, raw):
                report.outside.append(cls_dir.relative_to(raw).as_posix())
                continue
            for path in _walk(cls_dir):
                name = path.relative_to(raw).as_posix()
                if not lies_inside(path, raw):
                    report.outside.append(name)
                    continue
                if path.suffix.lower() not in IMAGE_EXTENSIONS:
                    report.skipped.append(name)
                    continue
                rel = path.relative_to(cls_dir).as_posix()
                files.append(_File(cls_dir.name, rel, path, name, split))
    return files


def read_folders(
    raw: Path, scratch: Path | None = None, *, test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = DEFAULT_SEED
) -> RawDataset:
    """List RAW's images with their classes and splits. ``scratch`` is unused (nothing to extract)."""
    raw = Path(raw)
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"--test-fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    presplit = _is_presplit(raw)
    report = FoldersReport(
        presplit=presplit, test_fraction=None if presplit else test_fraction, seed=None if presplit else seed
    )
    candidates = _list_files(raw, presplit, report)

    readable: list[_File] = []
    for f in candidates:
        if image_size(f.source) is None:
            report.unreadable.append(f.name)
        else:
            readable.append(f)
    all_classes = sorted({f.class_name for f in candidates} | _class_dirs(raw, presplit))
    classes = sorted({f.class_name for f in readable})
    report.empty_classes = [c for c in all_classes if c not in set(classes)]
    if not classes:
        raise UserError(
            f"{raw}: no readable images in class folders ({len(candidates)} image file(s) failed to decode, "
            f"{len(report.skipped)} other file(s) skipped); expected RAW/<class name>/<images>"
        )
    hashes = {f.name: sha256_file(f.source) for f in readable}
    if presplit:
        placed = _place_presplit(readable, hashes, report)
    else:
        placed = _place_split(readable, classes, hashes, test_fraction, seed, report)

    class_id = {c: i for i, c in enumerate(classes)}
    counts: dict[str, dict[str, int]] = {s: defaultdict(int) for s in _SPLIT_DIRS}
    for split, f in placed:
        counts[split][f.class_name] += 1
    if presplit:
        report.without_train = [c for c in classes if counts["train"][c] == 0]
        too_few = {c: counts["train"][c] + counts["test"][c] for c in classes}
        report.too_few = {c: n for c, n in too_few.items() if n < 2}
    report.without_test = [c for c in classes if counts["test"][c] == 0]

    images = [
        RawImage(
            split=split,
            fname=f"{f.class_name}/{f.rel}",
            source=f.source,
            class_id=class_id[f.class_name],
            bbox=None,
            name=f.name,
        )
        for split, f in placed
    ]
    # Unreadable files go to the writer too, which leaves them out and lists them like any layout's unreadable images.
    unreadable = set(report.unreadable)
    images += [
        RawImage(
            split="train",
            fname=f"{f.class_name}/{f.rel}",
            source=f.source,
            class_id=class_id[f.class_name],
            name=f.name,
        )
        for f in candidates
        if f.name in unreadable and f.class_name in class_id
    ]
    for line in report.lines():
        log.debug("%s: %s", raw, line)  # the report carries them; the CLI prints them once
    details: dict[str, Any] = {"folders": asdict(report), "warnings": report.lines()}
    given = raw / CLASSES_FILE
    class_info = read_classes_csv(given, classes) if given.is_file() else None
    if class_info is not None:
        details["class_columns"] = CLASSES_FILE
    return RawDataset(layout=NAME, classes=classes, images=images, details=details, class_info=class_info)


def _class_dirs(raw: Path, presplit: bool) -> set[str]:
    roots = [raw / s for s in _SPLIT_DIRS] if presplit else [raw]
    return {d.name for root in roots for d in _subdirs(root) if lies_inside(d, raw)}


def _place_split(
    files: list[_File],
    classes: list[str],
    hashes: dict[str, str],
    test_fraction: float,
    seed: int,
    report: FoldersReport,
) -> list[tuple[str, _File]]:
    """Stratified, seeded split of identical-file groups, so no image is in both train and test."""
    units: dict[tuple[str, str], list[_File]] = defaultdict(list)  # (class, sha256) -> identical files
    for f in files:
        units[(f.class_name, hashes[f.name])].append(f)
    keys = sorted(units)
    labels = np.array([classes.index(cls) for cls, _ in keys])
    keep, held = stratified_split(labels, test_fraction, seed)
    side = {keys[i]: "train" for i in keep} | {keys[i]: "test" for i in held}
    # The same bytes under two class folders: the copies must still share a side; train wins.
    by_hash: dict[str, set[str]] = defaultdict(set)
    for key, s in side.items():
        by_hash[key[1]].add(s)
    for key in keys:
        if len(by_hash[key[1]]) > 1:
            side[key] = "train"
    groups: dict[str, list[str]] = defaultdict(list)
    for f in files:
        groups[hashes[f.name]].append(f.name)
    report.duplicate_groups = [g for g in groups.values() if len(g) > 1]
    counts: dict[str, int] = defaultdict(int)
    for f in files:
        counts[f.class_name] += 1
    report.too_few = {c: counts[c] for c in classes if counts[c] < 2}
    return [(side[(f.class_name, hashes[f.name])], f) for f in files]


def _place_presplit(files: list[_File], hashes: dict[str, str], report: FoldersReport) -> list[tuple[str, _File]]:
    """The user's split as it is, less test files whose bytes are also in train."""
    in_train = {hashes[f.name]: f.name for f in files if f.split == "train"}
    placed = []
    groups: dict[str, list[str]] = defaultdict(list)
    for f in files:
        h = hashes[f.name]
        groups[h].append(f.name)
        if f.split == "test" and h in in_train:
            report.dropped_duplicates.append(f"{f.name} (= {in_train[h]})")
            continue
        placed.append((str(f.split), f))
    report.duplicate_groups = [g for g in groups.values() if len(g) > 1]
    return placed


def read_folders_with_defaults(
    raw: Path, scratch: Path, *, test_fraction: float | None = None, seed: int | None = None
) -> RawDataset:
    """`read_folders` as `prepare` calls it: an option not given (None) takes its default, and a user's own split is
    kept, with a warning when split options were given anyway."""
    dataset = read_folders(
        raw,
        scratch,
        test_fraction=DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction,
        seed=DEFAULT_SEED if seed is None else seed,
    )
    if dataset.details["folders"]["presplit"] and (test_fraction is not None or seed is not None):
        dataset.details["warnings"].append(
            "--test-fraction and --seed were not used: RAW has its own train/ and test/ split, which is kept"
        )
    return dataset


FOLDERS = RawLayout(
    name=NAME,
    expects=(
        "your own photos, one folder per class: RAW/<class name>/<images> "
        "(or RAW/train/<class name>/ and RAW/test/<class name>/)"
    ),
    detect=detect,
    read=read_folders_with_defaults,
    options=("test_fraction", "seed"),
    detected=False,  # almost any folder of images passes for one folder per class: only when asked for by name
)
