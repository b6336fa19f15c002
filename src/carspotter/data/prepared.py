"""The prepared-dataset format every `carspotter prepare` layout writes, and its reader.

A prepared folder holds::

    manifest.json        written last: its presence means the folder is complete
    classes.csv          class_id (0-based), class_name, make, model, year (`carspotter.formats.car_names`; a
                         folder prepared before these columns existed gets them parsed from the names)
    train.csv, test.csv  fname (relative to the folder), class_id, class_name,
                         bbox_x1, bbox_y1, bbox_x2, bbox_y2 (PIL box: 0-based, right/bottom exclusive), width, height
    train/..., test/...  the images
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from carspotter.errors import UserError
from carspotter.formats.car_names import COLUMNS as CAR_NAME_COLUMNS
from carspotter.formats.car_names import CarName, car_names

MANIFEST = "manifest.json"
CACHE_DIR = ".cache"  # the fast pipeline's decoded images (carspotter.data.cache), kept with the dataset
FORMAT_NAME = "carspotter-prepared"
FORMAT_VERSION = 1
SPLITS = ("train", "test")
BOX_COLUMNS = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]
COLUMNS = ["fname", "class_id", "class_name", *BOX_COLUMNS, "width", "height"]


@dataclass(frozen=True)
class PreparedDataset:
    root: Path
    classes: list[str]
    train: pd.DataFrame
    test: pd.DataFrame
    manifest: dict[str, Any]
    class_info: list[CarName] | None = None  # make, model, year per class, as classes.csv gives them

    @property
    def car_names(self) -> list[CarName]:
        return self.class_info if self.class_info is not None else car_names(self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> pd.DataFrame:
        if name not in SPLITS:
            raise UserError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return self.train if name == "train" else self.test


def load_prepared(root: str | Path) -> PreparedDataset:
    """Read a prepared folder; an incomplete or foreign folder is a `UserError` that says what to run."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such dataset folder; create one with `carspotter prepare RAW {root}`")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise UserError(
            f"{root}: not a complete prepared dataset (no {MANIFEST}); run `carspotter prepare RAW {root}` "
            "(re-running finishes an interrupted prepare)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{manifest_path}: corrupt manifest ({exc}); re-run `carspotter prepare`") from None
    if manifest.get("format") != FORMAT_NAME:
        raise UserError(f"{manifest_path}: not a carspotter prepared dataset")
    classes_df = _read_csv(root / "classes.csv", ["class_id", "class_name"])
    classes_df = classes_df.sort_values("class_id")
    classes = classes_df["class_name"].astype(str).tolist()
    class_info = None
    if all(c in classes_df.columns for c in CAR_NAME_COLUMNS):
        rows = classes_df[list(CAR_NAME_COLUMNS)].to_dict("records")
        class_info = car_names(classes, rows)
    if classes_df["class_id"].tolist() != list(range(len(classes))) and sorted(classes_df["class_id"]) != list(
        range(len(classes))
    ):
        raise UserError(f"{root / 'classes.csv'}: class ids must be 0..{len(classes) - 1}")
    frames = {s: _read_csv(root / f"{s}.csv", COLUMNS) for s in SPLITS}
    for split, df in frames.items():
        bad = df[(df["class_id"] < 0) | (df["class_id"] >= len(classes))]
        if len(bad):
            raise UserError(f"{root / (split + '.csv')}: class_id out of range in row(s) {list(bad.index[:5])}")
    return PreparedDataset(
        root=root, classes=classes, train=frames["train"], test=frames["test"], manifest=manifest, class_info=class_info
    )


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: missing; re-run `carspotter prepare`")
    df = pd.read_csv(path, keep_default_na=False)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): ``fraction`` of every class held out, seeded; a class of one image stays in keep.

    Used to carve the validation split from train, so model selection never sees the test split.
    """
    if not 0.0 < fraction < 1.0:
        raise UserError(f"validation fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    held: list[int] = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_held = int(round(fraction * len(idx)))
        n_held = min(max(n_held, 1 if len(idx) >= 2 else 0), len(idx) - 1)
        held.extend(idx[:n_held].tolist())
        keep.extend(idx[n_held:].tolist())
    return np.sort(np.asarray(keep, dtype=np.int64)), np.sort(np.asarray(held, dtype=np.int64))


def train_val_frames(train: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows training learns from and the validation rows it carves from ``train`` (`stratified_split`)."""
    keep, held = stratified_split(train["class_id"].to_numpy(), fraction, seed)
    return train.iloc[keep].reset_index(drop=True), train.iloc[held].reset_index(drop=True)


def split_boxes(frame: pd.DataFrame) -> np.ndarray:
    """A split's boxes as N×4 floats (PIL box: x1, y1, x2, y2); NaN where a row has none."""
    return frame[BOX_COLUMNS].replace("", np.nan).astype(float).to_numpy()
