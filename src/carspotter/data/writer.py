"""Write a prepared dataset folder (`prepared.py`'s format) atomically and resumably, from any raw layout.

Everything is built in ``OUT/.partial/``; the finished pieces are then renamed into OUT and ``manifest.json`` comes
last, so `load_prepared` never accepts a half-written folder. A re-run keeps the images already copied into
``.partial`` (and the archives already extracted there) and finishes the job.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image
from tqdm import tqdm

import carspotter
from carspotter.data.prepared import (
    CACHE_DIR,
    COLUMNS,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    SPLITS,
)
from carspotter.data.raw import RawDataset, RawImage, clip_box, lies_inside, listed
from carspotter.errors import UserError
from carspotter.formats.car_names import car_names
from carspotter.formats.files import sha256_file
from carspotter.preprocessing import max_pixels

log = logging.getLogger(__name__)

PARTIAL = ".partial"
SCRATCH = "extract"  # under PARTIAL: archives extracted by the layout readers
_CSVS = ("classes.csv", "train.csv", "test.csv")
_OURS = frozenset({*SPLITS, *_CSVS, MANIFEST, PARTIAL, CACHE_DIR})  # an overwrite removes them all


@dataclass
class PrepareReport:
    out: Path
    layout: str
    counts: dict[str, int]
    num_classes: int
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    already_complete: bool = False  # OUT was complete before this call and was left as it was
    warnings: list[str] = field(default_factory=list)  # the layout reader's remarks (RawDataset.details["warnings"])


def scratch_dir(out: Path) -> Path:
    return Path(out) / PARTIAL / SCRATCH


def open_out(out: Path, *, overwrite: bool, source: dict[str, Any] | None = None) -> PrepareReport | None:
    """Get OUT ready for writing; return the existing report if OUT is already complete (and not ``overwrite``).

    OUT may be absent, empty, complete, or left over from an interrupted prepare; a folder holding anything else is
    refused rather than mixed with a dataset. A complete OUT is only "already done" for the RAW it was built from
    (``source``: what this prepare would build it from, `check_same_source`).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose a new OUT folder")
    if not out.exists():
        return None
    foreign = sorted(p.name for p in out.iterdir() if p.name not in _OURS)
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise UserError(
            f"{out}: folder is not empty and is not a carspotter prepared dataset (holds {shown}); "
            "choose an empty or new OUT folder"
        )
    if (out / MANIFEST).is_file():
        if not overwrite:
            if source is not None:
                check_same_source(out, source)
            if (out / PARTIAL).exists():  # a run killed during its final clean-up: OUT is complete, the rest is ours
                _remove(out / PARTIAL)
            report = report_from_manifest(out)
            log.debug("%s: already a complete prepared dataset; left as it is", out)  # the report says so
            return report
        log.info("%s: overwriting the existing prepared dataset", out)
        (out / MANIFEST).unlink()  # incomplete from now on
        for name in _OURS - {MANIFEST}:
            _remove(out / name)
    elif (out / PARTIAL).exists():
        if overwrite:
            _remove(out / PARTIAL)
        else:
            log.info("%s: resuming an interrupted prepare", out)
    return None


def check_same_source(out: Path, source: dict[str, Any]) -> None:
    """A `UserError` when the complete prepared folder OUT was built from another RAW (its fingerprint differs: other
    files, or RAW changed since), or with another layout or option than the ones given now."""
    manifest = json.loads((out / MANIFEST).read_text())
    recorded = manifest.get("source", {})
    was = recorded.get("raw", "?")
    then, now = recorded.get("fingerprint"), source["fingerprint"]
    same_files = then == now if then is not None else was == source["raw"]  # older folders: by path alone
    if not same_files:
        if was == source["raw"]:
            why = (f"RAW ({was}) has changed since OUT was prepared from it ({_files(then)} then, {_files(now)} now); "
                   "--overwrite rebuilds OUT from it as it is now")
        else:
            why = (f"OUT was prepared from {was}, not from {source['raw']} ({_files(now)}); choose a new OUT for it, "
                   "or --overwrite to replace OUT with a dataset prepared from it")
        raise UserError(f"{out}: {why}")
    asked, built = source.get("layout_asked", "auto"), manifest.get("source_layout", "?")
    if asked != "auto" and asked != built:
        raise UserError(f"{out}: was prepared as the {built} layout, not {asked}; --overwrite rebuilds it")
    before = recorded.get("options", {})
    differ = [k for k, v in source.get("options", {}).items() if v is not None and k in before and before[k] != v]
    if differ:
        shown = ", ".join(f"--{k.replace('_', '-')} {before[k]!r} then, {source['options'][k]!r} now" for k in differ)
        raise UserError(f"{out}: was prepared with other options ({shown}); --overwrite rebuilds it")


def _files(fp: dict[str, Any] | None) -> str:
    return "unknown files" if not fp else f"{fp['files']} files, {fp['bytes'] / 1e6:.1f} MB"


def commit_pending(out: Path) -> PrepareReport | None:
    """If an earlier run built everything but was interrupted while moving it into place, finish that move."""
    if (Path(out) / PARTIAL / MANIFEST).is_file():
        log.info("%s: finishing an interrupted prepare", out)
        _commit(Path(out))
        return report_from_manifest(Path(out))
    return None


def report_from_manifest(out: Path) -> PrepareReport:
    m = json.loads((Path(out) / MANIFEST).read_text())
    return PrepareReport(
        out=Path(out),
        layout=m.get("source_layout", "?"),
        counts=dict(m.get("counts", {})),
        num_classes=int(m.get("num_classes", 0)),
        missing=list(m.get("missing", [])),
        unreadable=list(m.get("unreadable", [])),
        already_complete=True,
        warnings=list(m.get("source", {}).get("warnings", [])),
    )


def write_prepared(
    out: Path, dataset: RawDataset, *, raw: Path, source: dict[str, Any] | None = None
) -> PrepareReport:
    """Copy (or move, for our own scratch copies) every readable image into place and write the CSVs and manifest."""
    out = Path(out)
    work = out / PARTIAL
    _refuse_outside(dataset.images, raw, scratch_dir(out))
    work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    missing: list[str] = []
    unreadable: list[str] = []
    wanted: set[str] = set()
    made_dirs: set[Path] = set()
    for img in tqdm(dataset.images, desc=f"prepare {dataset.layout}", unit="img", disable=None, leave=False):
        if img.split not in SPLITS:
            raise ValueError(f"unknown split {img.split!r} for {img.name or img.fname}")
        if not 0 <= img.class_id < len(dataset.classes):
            raise ValueError(f"class_id {img.class_id} out of range for {img.name or img.fname}")
        rel = f"{img.split}/{img.fname}"
        if rel in wanted:
            raise ValueError(f"two images map to {rel}")
        dest = work / rel
        size = image_size(dest) if dest.is_file() else None  # already placed by an earlier run
        if size is None:
            if not img.source.is_file():
                missing.append(img.name or img.fname)
                continue
            size = image_size(img.source)
            if size is None:
                unreadable.append(img.name or img.fname)
                continue
            if dest.parent not in made_dirs:
                dest.parent.mkdir(parents=True, exist_ok=True)
                made_dirs.add(dest.parent)
            _place(img.source, dest, move=_ours_to_move(img, scratch_dir(out)))
        wanted.add(rel)
        width, height = size
        x1, y1, x2, y2 = clip_box(img.bbox, width, height)
        rows[img.split].append(
            {
                "fname": rel,
                "class_id": img.class_id,
                "class_name": dataset.classes[img.class_id],
                "bbox_x1": x1,
                "bbox_y1": y1,
                "bbox_x2": x2,
                "bbox_y2": y2,
                "width": width,
                "height": height,
            }
        )
    total = len(dataset.images)
    if not any(rows.values()):
        raise UserError(
            f"{raw}: none of the {total} images listed in the annotations could be read "
            f"({len(missing)} missing, {len(unreadable)} unreadable, e.g. {(missing + unreadable)[:3]}); "
            "check that the image archive or folder is complete and belongs to these annotations"
        )
    for what, names in (("missing", missing), ("unreadable", unreadable)):
        if names:
            shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
            log.debug("%d of %d images %s and skipped: %s", len(names), total, what, shown)  # in the report
    _remove_strays(work, wanted)

    levels = dataset.class_info if dataset.class_info is not None else car_names(dataset.classes)
    pd.DataFrame(
        {
            "class_id": range(len(dataset.classes)),
            "class_name": dataset.classes,
            "make": [c.make for c in levels],
            "model": [c.model for c in levels],
            "year": ["" if c.year is None else c.year for c in levels],
        }
    ).to_csv(work / "classes.csv", index=False)
    for split in SPLITS:
        pd.DataFrame(rows[split], columns=COLUMNS).to_csv(work / f"{split}.csv", index=False)
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "source_layout": dataset.layout,
        "source": {"raw": str(Path(raw).resolve()), **(source or {}), **dataset.details},
        "counts": {s: len(rows[s]) for s in SPLITS},
        "num_classes": len(dataset.classes),
        "boxes": any(img.bbox is not None for img in dataset.images),  # False: every box is the whole image
        "checksums": {name: sha256_file(work / name) for name in _CSVS},
        "missing": missing,
        "unreadable": unreadable,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "carspotter_version": carspotter.__version__,
    }
    tmp = work / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, work / MANIFEST)  # from here on, the build is done: only the move into OUT is left
    _commit(out)
    report = report_from_manifest(out)
    report.already_complete = False
    return report


def _refuse_outside(images: list[RawImage], raw: Path, scratch: Path) -> None:
    """Every source must lie inside RAW or inside what prepare extracted, symlinks followed; checked before
    anything is copied or moved, so a refused dataset leaves every file outside OUT as it was."""
    outside = [
        img.name or str(img.source)
        for img in images
        if not (lies_inside(img.source, raw) or lies_inside(img.source, scratch))
    ]
    if outside:
        raise UserError(
            f"{raw}: refusing to prepare: {len(outside)} image(s) lead outside RAW through a symlink or a path: "
            f"{listed(outside, 5)}; copy those images into RAW or remove the links (nothing was copied or moved)"
        )


def _ours_to_move(img: RawImage, scratch: Path) -> bool:
    """Only a plain file that prepare itself extracted is moved; anything else is copied and stays where it is."""
    return img.movable and not img.source.is_symlink() and lies_inside(img.source, scratch)


def _commit(out: Path) -> None:
    """Move the built pieces from ``.partial`` into OUT, manifest last; safe to repeat after an interruption."""
    work = out / PARTIAL
    for name in (*SPLITS, *_CSVS):
        src = work / name
        if src.exists():
            _remove(out / name)
            os.replace(src, out / name)
    os.replace(work / MANIFEST, out / MANIFEST)
    shutil.rmtree(work, ignore_errors=True)


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of a fully decodable image, None if it cannot be decoded (a truncated file included) or has
    more pixels than the limit (`carspotter.preprocessing.max_pixels`: it is refused before decoding)."""
    limit = max_pixels()
    try:
        with Image.open(path) as im:
            size = im.size
            if size[0] * size[1] > limit:
                return None
            if im.format == "JPEG":  # decode at 1/8 scale: still reads every byte, 10x faster
                im.draft(im.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
            return size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def _place(source: Path, dest: Path, *, move: bool) -> None:
    if move:
        os.replace(source, dest)
        return
    tmp = dest.with_name(dest.name + ".part")
    shutil.copyfile(source, tmp)
    os.replace(tmp, dest)


def _remove_strays(work: Path, wanted: set[str]) -> None:
    """Drop files a previous, different run left in the split folders (and half-copied ``.part`` files)."""
    for split in SPLITS:
        root = work / split
        if not root.is_dir():
            continue
        for dirpath, _, files in os.walk(root):
            for f in files:
                p = Path(dirpath) / f
                if p.relative_to(work).as_posix() not in wanted:
                    p.unlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
