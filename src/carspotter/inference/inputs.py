"""Real, preprocessed images from a prepared dataset: export parity checks, int8 calibration, benchmarks.

Torch-free, through `carspotter.preprocessing`, so every runtime is fed exactly the pixels the model was trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from carspotter.data.prepared import load_prepared
from carspotter.preprocessing import Preprocessing, image_to_array, open_image


def prepared_images(
    data: str | Path, split: str, limit: int | None = None, seed: int = 0
) -> tuple[list[Image.Image], np.ndarray]:
    """``(decoded RGB photos, class ids)`` of a prepared split; ``limit`` draws a seeded, class-balanced subset."""
    dataset = load_prepared(data)
    frame = dataset.split(split)
    if limit is not None and limit < len(frame):
        # Round-robin over classes in a seeded order, so a small calibration set still sees every class.
        rng = np.random.default_rng(seed)
        shuffled = frame.iloc[rng.permutation(len(frame))]
        shuffled = shuffled.assign(_rank=shuffled.groupby("class_id").cumcount())
        frame = shuffled.sort_values("_rank", kind="stable").iloc[:limit]
    images = [open_image(dataset.root / fname) for fname in frame["fname"].astype(str)]
    return images, frame["class_id"].to_numpy(dtype=np.int64)


def prepared_inputs(
    data: str | Path, split: str, prep: Preprocessing, limit: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(N×C×H×W float32 images, class ids)`` of a prepared split, preprocessed for a model taking ``prep``."""
    images, labels = prepared_images(data, split, limit, seed)
    return images_to_batch(images, prep), labels


def images_to_batch(images: list[Image.Image], prep: Preprocessing) -> np.ndarray:
    arrays = [image_to_array(img, prep) for img in images]
    if not arrays:
        channels, (h, w) = prep.channels, prep.image_size
        return np.zeros((0, channels, h, w), dtype=np.float32)
    return np.stack(arrays)
