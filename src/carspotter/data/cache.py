"""Decoded-image cache: every image of a prepared split, decoded, box-handled and resized once, as uint8 on disk.

Decoding JPEGs and resizing them with PIL is the classic pipeline's bottleneck, and it is the same work every epoch.
The cache does it once: an ``N×H×W×C`` uint8 ``.npy`` (memory-mapped when read) in the prepared split's row order,
plus a JSON sidecar. Its key hashes everything the pixels depend on (the prepared dataset's manifest checksums and
creation time, the file list, image size, grayscale, the box handling, the resize rule), so any change of those
builds a new cache instead of reading a stale one. Writes go to a temporary file renamed into place, sidecar last:
an interrupted build leaves nothing that could be mistaken for a finished cache.

Pixels are exactly those of the classic path: `open_image` → crop or erase (training only) → `resize_image`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from carspotter.data.prepared import CACHE_DIR, PreparedDataset, split_boxes
from carspotter.data.transforms import crop_to_box, erase_background
from carspotter.errors import UserError
from carspotter.preprocessing import Preprocessing, open_image, resize_image

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: one box rule (`raw.clip_box`): a box empty after clipping is the whole image
BoxMode = Literal["none", "crop", "erase"]


@dataclass(frozen=True)
class CachedSplit:
    """One prepared split, decoded: ``images[i]`` is row ``i`` of the split's CSV, ``labels[i]`` its class."""

    images: np.ndarray  # N×H×W×C uint8, read-only memory map
    labels: np.ndarray  # N int64
    fnames: list[str]
    path: Path

    def __len__(self) -> int:
        return len(self.labels)


def box_mode(crop_to_bbox: bool, erase_background: bool) -> BoxMode:
    return "crop" if crop_to_bbox else "erase" if erase_background else "none"


def cache_key(dataset: PreparedDataset, split: str, prep: Preprocessing, mode: BoxMode) -> str:
    """A hash of everything the cached pixels depend on; any change gives a new key (and a rebuild)."""
    frame = dataset.split(split)
    payload = {
        "version": CACHE_VERSION,
        "split": split,
        "checksums": dataset.manifest.get("checksums"),
        "created": dataset.manifest.get("created"),
        "files": hashlib.sha256("\n".join(frame["fname"].astype(str)).encode()).hexdigest(),
        "image_size": list(prep.image_size),
        "grayscale": prep.grayscale,
        "resize": prep.resize,
        "interpolation": prep.interpolation,
        "box": mode,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _stem(split: str, prep: Preprocessing, mode: BoxMode) -> str:
    h, w = prep.image_size
    return f"{split}-{mode}-{h}x{w}-{'gray' if prep.grayscale else 'rgb'}"


def load_or_build_cache(
    dataset: PreparedDataset,
    split: str,
    prep: Preprocessing,
    mode: BoxMode = "none",
    cache_dir: str | Path | None = None,
    *,
    workers: int = 2,
    progress: bool = True,
) -> CachedSplit:
    """The split's cache under ``cache_dir`` (default ``<prepared>/.cache``): read if valid, else built once."""
    folder = Path(cache_dir) if cache_dir is not None else dataset.root / CACHE_DIR
    stem = _stem(split, prep, mode)
    key = cache_key(dataset, split, prep, mode)
    npy, sidecar = folder / f"{stem}-{key}.npy", folder / f"{stem}-{key}.json"
    frame = dataset.split(split)
    labels = frame["class_id"].to_numpy(dtype=np.int64)
    fnames = frame["fname"].astype(str).tolist()
    shape = (len(frame), *prep.image_size, prep.channels)
    cached = _read(npy, sidecar, shape)
    if cached is None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"{folder}: cannot create the image cache ({exc}); set data.cache_dir to a writable folder"
            ) from None
        _remove_stale(folder, stem, keep=key)
        _build(dataset, frame, prep, mode, npy, sidecar, shape, key, workers=workers, progress=progress)
        cached = _read(npy, sidecar, shape)
        if cached is None:
            raise RuntimeError(f"{npy}: image cache unreadable right after it was written")
    return CachedSplit(images=cached, labels=labels, fnames=fnames, path=npy)


def _read(npy: Path, sidecar: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    if not (npy.is_file() and sidecar.is_file()):
        return None
    try:
        meta = json.loads(sidecar.read_text())
        arr = np.load(npy, mmap_mode="r")
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        log.warning("%s: ignoring an unreadable image cache (%s); rebuilding it", npy, exc)
        return None
    if tuple(arr.shape) != shape or arr.dtype != np.uint8 or meta.get("shape") != list(shape):
        log.warning("%s: image cache has shape %s, expected %s; rebuilding it", npy, arr.shape, shape)
        return None
    return arr


def _remove_stale(folder: Path, stem: str, keep: str) -> None:
    """Caches of the same split and settings but an older dataset can never be valid again: free their space."""
    for old in folder.glob(f"{stem}-*"):
        if keep not in old.name:
            try:
                old.unlink()
                log.info("removed stale image cache %s", old)
            except OSError:
                pass


def _build(
    dataset: PreparedDataset,
    frame,
    prep: Preprocessing,
    mode: BoxMode,
    npy: Path,
    sidecar: Path,
    shape: tuple[int, ...],
    key: str,
    *,
    workers: int,
    progress: bool,
) -> None:
    boxes = split_boxes(frame)
    fnames = frame["fname"].astype(str).tolist()
    tmp = npy.with_name(f".{npy.name}.{os.getpid()}.tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)

    def decode(i: int) -> None:
        out[i] = decode_for_cache(dataset.root / fnames[i], prep, mode, boxes[i])

    log.info("building the image cache %s (%d images, once)", npy, shape[0])
    try:
        # PIL releases the GIL while decoding and resizing, so threads scale without pickling anything.
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            done = pool.map(decode, range(shape[0]))
            for _ in tqdm(done, total=shape[0], desc=f"cache {npy.stem[:40]}", disable=not progress, leave=False):
                pass
        out.flush()
        os.replace(tmp, npy)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    meta = {"version": CACHE_VERSION, "key": key, "shape": list(shape), "box": mode, "root": str(dataset.root)}
    tmp_meta = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
    tmp_meta.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp_meta, sidecar)  # the sidecar last: its presence means the cache is complete


def decode_for_cache(path: Path, prep: Preprocessing, mode: BoxMode, box: np.ndarray | None) -> np.ndarray:
    """One image as the classic path sees it before augmentation: decode → box handling → resize → H×W×C uint8."""
    img = open_image(path)
    if box is not None and not np.isnan(box).any():
        if mode == "crop":
            img = crop_to_box(img, tuple(box))
        elif mode == "erase":
            img = erase_background(img, tuple(box))
    arr = np.asarray(resize_image(img, prep), dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr
