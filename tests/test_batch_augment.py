"""`carspotter.data.batch_augment`: MixUp/CutMix targets and the batched RandomResizedCrop (a crop per image)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from recipe_support import RECOMMENDED

from carspotter.config import load_config
from carspotter.data.batch_augment import BatchPreprocess, build_batch_mixing
from carspotter.errors import UserError


def test_mixup_and_cutmix_targets_are_probabilities() -> None:
    cfg = load_config(RECOMMENDED, ["data.batch_augmentations=[{MixUp: {alpha: 0.4}}, {CutMix: {alpha: 1.0}}]"])
    mixing = build_batch_mixing(cfg.data, num_classes=7)
    torch.manual_seed(0)
    x, y = torch.rand(16, 3, 24, 24), torch.randint(0, 7, (16,))
    mixed_any = False
    for _ in range(6):
        mx, my = mixing(x, y)
        assert my.shape == (16, 7)
        torch.testing.assert_close(my.sum(1), torch.ones(16))
        assert (my >= 0).all() and (my.max(1).values >= 0.5 - 1e-6).all()  # the batch's own label keeps the most
        mixed_any |= not torch.equal(mx, x)
    assert mixed_any
    with pytest.raises(UserError, match="not a batch augmentation"):
        load_config(RECOMMENDED, ["data.batch_augmentations=[{RandomErasing: {}}]"])
    with pytest.raises(UserError, match="come from the data"):
        load_config(RECOMMENDED, ["data.batch_augmentations=[{MixUp: {alpha: 1, num_classes: 3}}]"])


def test_batched_random_resized_crop_draws_a_crop_per_image(four_classes: Path) -> None:
    scale = "data.image_augmentations.0.params.scale=[0.25, 1.0]"
    cfg = load_config(RECOMMENDED, [f"data.path={four_classes}", "data.image_size=40", scale]).data
    assert cfg.image_augmentations[0].name == "RandomResizedCrop" and "size" not in cfg.image_augmentations[0].params
    only_crop = cfg.model_copy(update={"image_augmentations": cfg.image_augmentations[:1], "normalize": False})
    preprocess = BatchPreprocess(only_crop)
    ramp = torch.linspace(0, 255, 40).to(torch.uint8)
    images = ramp.view(1, 1, 40, 1).expand(8, 40, 40, 3).contiguous()  # brightness grows to the right
    torch.manual_seed(0)
    out = preprocess(images, train=True)
    assert out.shape == (8, 3, 40, 40)  # back to data.image_size
    left_edges = out[:, 0, 20, 0]
    assert left_edges.unique().numel() > 4  # every image has its own crop
    torch.testing.assert_close(preprocess(images, train=False), images.permute(0, 3, 1, 2).float() / 255)
