"""Prepared folders made of a part of a real dataset, for benchmarks: some of its classes, some of each class's
training photos. No photo is copied: a subset folder holds filtered CSVs (classes renumbered 0..n-1) and links to the
original images; the test split keeps every photo of the kept classes."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from carspotter.data.prepared import MANIFEST, load_prepared
from carspotter.formats.files import sha256_file


def subset(
    src: Path,
    out: Path,
    *,
    classes: list[int] | None = None,
    photo_fraction: float | dict[int, float] | None = None,
    seed: int = 0,
) -> Path:
    """A prepared folder of ``classes`` of ``src`` (default all), each keeping ``photo_fraction`` of its training
    photos (one fraction for all, or per class id; at least 2 each, drawn with ``seed``). Kept when it exists."""
    if (out / MANIFEST).is_file():
        return out
    ds = load_prepared(src)
    kept = list(range(ds.num_classes)) if classes is None else sorted(classes)
    new_id = {old: new for new, old in enumerate(kept)}
    train = ds.train[ds.train["class_id"].isin(kept)]
    if photo_fraction is not None:
        rng = np.random.default_rng(seed)
        parts = []
        for class_id, rows in train.groupby("class_id", sort=True):
            fraction = photo_fraction if isinstance(photo_fraction, float) else photo_fraction.get(class_id, 1.0)
            n = max(2, math.ceil(fraction * len(rows)))
            parts.append(rows.iloc[np.sort(rng.permutation(len(rows))[:n])])
        train = pd.concat(parts)
    test = ds.test[ds.test["class_id"].isin(kept)]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for split in ("train", "test"):
        (out / split).symlink_to((src / split).resolve(), target_is_directory=True)
    classes_csv = pd.read_csv(src / "classes.csv", keep_default_na=False)
    classes_csv = classes_csv[classes_csv["class_id"].isin(kept)].sort_values("class_id")
    classes_csv.assign(class_id=classes_csv["class_id"].map(new_id)).to_csv(out / "classes.csv", index=False)
    for split, frame in (("train", train), ("test", test)):
        frame.assign(class_id=frame["class_id"].map(new_id)).to_csv(out / f"{split}.csv", index=False)
    manifest = {
        **ds.manifest,
        "counts": {"train": len(train), "test": len(test)},
        "num_classes": len(kept),
        "checksums": {name: sha256_file(out / name) for name in ("classes.csv", "train.csv", "test.csv")},
        "subset_of": str(src.resolve()),
        "subset": {
            "classes": None if classes is None else [ds.classes[i] for i in kept],
            "photo_fraction": photo_fraction if not isinstance(photo_fraction, dict)
            else {ds.classes[k]: v for k, v in sorted(photo_fraction.items())},
            "seed": seed,
        },
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out
