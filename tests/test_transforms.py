"""Per-image transforms: the box comes from the image's own row (the thesis's bug used row order), background
erasing keeps the frame, and the validation split is stratified and never touches test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from carspotter.config import DataConfig
from carspotter.data.dataset import CarImages
from carspotter.data.prepared import stratified_split
from carspotter.data.raw import clip_box
from carspotter.data.transforms import (
    EvalTransform,
    TrainTransform,
    crop_to_box,
    erase_background,
    preprocessing_from_config,
)


def _box_images(root: Path, n: int) -> pd.DataFrame:
    """Image i is black with a white rectangle at a box unique to it; the frame lists rows in reverse file order."""
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = 120, 90
        x1, y1 = int(rng.integers(0, 60)), int(rng.integers(0, 40))
        x2, y2 = x1 + int(rng.integers(20, 55)), y1 + int(rng.integers(20, 45))
        arr = np.zeros((h, w, 3), np.uint8)
        arr[y1:y2, x1:x2] = 255
        name = f"{i:05d}.png"
        Image.fromarray(arr).save(root / name)
        rows.append(dict(fname=name, class_id=0, class_name="c", bbox_x1=x1, bbox_y1=y1, bbox_x2=x2, bbox_y2=y2,
                         width=w, height=h))
    return pd.DataFrame(rows[::-1])


def test_bbox_crop_uses_the_box_of_the_same_file(tmp_path: Path) -> None:
    frame = _box_images(tmp_path, 6)
    cfg = DataConfig(path=tmp_path, image_size=(32, 32), crop_to_bbox=True, normalize=False)
    dataset = CarImages(tmp_path, frame, TrainTransform(cfg))
    for i in range(len(dataset)):
        x, _ = dataset[i]
        assert x.min() > 0.99, f"sample {i} ({frame.fname.iloc[i]}) was cropped with another image's box"


def test_erase_background_keeps_the_car_in_place() -> None:
    arr = np.full((50, 80, 3), 40, np.uint8)
    img = Image.fromarray(arr)
    out = np.asarray(erase_background(img, (10, 5, 30, 25)))
    assert out.shape == arr.shape
    assert (out[5:25, 10:30] == 40).all()
    assert (out[:5] == 255).all() and (out[:, 30:] == 255).all()


@pytest.mark.parametrize(
    "box, clipped",
    [
        ((10, 5, 30, 25), (10, 5, 30, 25)),  # inside: as it is
        ((-3, -1, 90, 60), (0, 0, 80, 50)),  # overshooting (real annotations do): clipped to the image
        ((9.6, 4.4, 30.2, 25.5), (10, 4, 30, 26)),  # rounded to whole pixels
        ((20, 5, 20, 25), (0, 0, 80, 50)),  # empty: the whole image
        ((85, 5, 99, 25), (0, 0, 80, 50)),  # nothing of it inside the image: the whole image
        (None, (0, 0, 80, 50)),  # no box (folders, parquet): the whole image
    ],
)
def test_one_box_rule_for_prepare_crop_and_erase(box: tuple | None, clipped: tuple[int, int, int, int]) -> None:
    """`prepare` writes boxes through `clip_box`, and crop and erase clip through it too: the same pixels either way."""
    img = Image.fromarray(np.arange(50 * 80 * 3, dtype=np.uint32).reshape(50, 80, 3).astype(np.uint8))
    assert clip_box(box, 80, 50) == clipped
    if box is None:
        return
    x1, y1, x2, y2 = clipped
    assert np.array_equal(np.asarray(crop_to_box(img, box)), np.asarray(img)[y1:y2, x1:x2])
    erased = np.asarray(erase_background(img, box))
    assert np.array_equal(erased[y1:y2, x1:x2], np.asarray(img)[y1:y2, x1:x2])
    assert (erased == 255).sum() >= (erased.size - 3 * (x2 - x1) * (y2 - y1))


def test_a_row_without_a_box_is_not_cropped(tmp_path: Path) -> None:
    frame = _box_images(tmp_path, 2)
    frame.loc[frame.index[0], ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]] = np.nan
    cfg = DataConfig(path=tmp_path, image_size=(90, 120), crop_to_bbox=True, normalize=False)
    x, _ = CarImages(tmp_path, frame, TrainTransform(cfg))[0]
    assert x.min() < 0.01 and x.max() > 0.99  # the whole image: black around the white box


def test_validation_split_is_stratified_seeded_and_disjoint() -> None:
    labels = np.repeat(np.arange(5), [10, 20, 1, 2, 30])
    keep, held = stratified_split(labels, 0.1, seed=3)
    assert not set(keep) & set(held) and len(keep) + len(held) == len(labels)
    counts = np.bincount(labels[held], minlength=5)
    assert counts.tolist() == [1, 2, 0, 1, 3]
    again = stratified_split(labels, 0.1, seed=3)
    assert (again[1] == held).all()
    assert not (stratified_split(labels, 0.1, seed=4)[1] == held).all()


@pytest.mark.parametrize("grayscale", [False, True])
def test_train_transform_applies_each_augmentation(tmp_path: Path, grayscale: bool) -> None:
    """Each configured augmentation does what its name says, on top of exactly the deployed preprocessing: a
    certain flip mirrors the evaluation input, a certain erase blanks one rectangle and keeps the rest, and a colour
    jitter moves the pixels."""
    frame = _box_images(tmp_path, 2)
    base = {"path": str(tmp_path), "image_size": [40, 56], "grayscale": grayscale}
    images = CarImages(tmp_path, frame, EvalTransform(preprocessing_from_config(DataConfig.model_validate(base))))
    plain, _ = images[0]
    assert tuple(plain.shape) == ((1 if grayscale else 3), 40, 56)

    def train(**augs: list) -> torch.Tensor:
        return CarImages(tmp_path, frame, TrainTransform(DataConfig.model_validate({**base, **augs})))[0][0]

    flipped = train(image_augmentations=[{"RandomHorizontalFlip": {"p": 1.0}}])
    torch.testing.assert_close(flipped, plain.flip(2), atol=1e-6, rtol=0)
    erased = train(tensor_augmentations=[{"RandomErasing": {"p": 1.0, "value": 0, "scale": [0.1, 0.2]}}])
    blank = (erased == 0).all(0) & (plain != 0).any(0)
    rows, cols = blank.nonzero(as_tuple=True)
    box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
    assert 0.05 <= blank.float().mean() <= 0.2 and (erased[:, box[0], box[1]] == 0).all()  # one rectangle
    outside = torch.ones_like(blank)
    outside[box] = False
    assert torch.equal(erased[:, outside], plain[:, outside])
    jittered = train(image_augmentations=[{"ColorJitter": {"brightness": [1.5, 1.5]}}])
    assert not torch.allclose(jittered, plain) and jittered.mean() > plain.mean()
