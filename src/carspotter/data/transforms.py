"""Per-image transforms for training and evaluation, built from the config.

Order for a training image: decode → bbox crop or background erase → resize → grayscale → image augmentations (PIL)
→ float tensor in [0, 1] → normalise → tensor augmentations (e.g. RandomErasing). Evaluation uses the same resize and
normalisation through `carspotter.preprocessing`, the code the exported models and the server run too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from carspotter.config import DataConfig, Transform
from carspotter.data.raw import clip_box
from carspotter.preprocessing import Preprocessing, image_to_array, normalize_array, resize_image

Box = tuple[float, float, float, float]


def preprocessing_from_config(cfg: DataConfig) -> Preprocessing:
    return Preprocessing(
        image_size=tuple(cfg.image_size),
        grayscale=cfg.grayscale,
        mean=cfg.resolved_mean,
        std=cfg.resolved_std,
        normalize=cfg.normalize,
    )


def crop_to_box(img: Image.Image, box: Box) -> Image.Image:
    """Crop to the car's box (PIL box: 0-based, right/bottom exclusive), clipped to the image as `prepare` clips it
    (`carspotter.data.raw.clip_box`: an empty box is the whole image)."""
    return img.crop(clip_box(box, *img.size))


def erase_background(img: Image.Image, box: Box) -> Image.Image:
    """Paint everything outside the box white, keeping the frame and the car where it was.

    This is what the thesis meant by background erasing; its code instead pasted the crop centred on a white canvas.
    """
    x1, y1, x2, y2 = clip_box(box, *img.size)
    canvas = Image.new(img.mode, img.size, "white")
    canvas.paste(img.crop((x1, y1, x2, y2)), (x1, y1))
    return canvas


def build_augmentations(specs: Sequence[Transform], image_size: tuple[int, int]) -> v2.Compose | None:
    """Instantiate ``torchvision.transforms.v2`` classes by name, in the configured order.

    ``RandomResizedCrop`` without ``size`` crops back to ``data.image_size``, so a recipe keeps working when only the
    image size is changed.
    """
    if not specs:
        return None
    return v2.Compose([getattr(v2, s.name)(**with_default_size(s, image_size)) for s in specs])


def with_default_size(spec: Transform, image_size: tuple[int, int]) -> dict:
    """The transform's params, with ``size`` = the training image size for the resized crops that need one."""
    if spec.name in SIZED_TRANSFORMS and "size" not in spec.params:
        return {**spec.params, "size": list(image_size)}
    return dict(spec.params)


SIZED_TRANSFORMS = ("RandomResizedCrop",)


class TrainTransform:
    """Callable ``(image, box) -> tensor`` for the training split; built once, not per sample."""

    def __init__(self, cfg: DataConfig) -> None:
        self.prep = preprocessing_from_config(cfg)
        self.crop = cfg.crop_to_bbox
        self.erase = cfg.erase_background
        self.image_augs = build_augmentations(cfg.image_augmentations, cfg.image_size)
        self.tensor_augs = build_augmentations(cfg.tensor_augmentations, cfg.image_size)

    def __call__(self, img: Image.Image, box: Box | None) -> torch.Tensor:
        if box is not None and self.crop:
            img = crop_to_box(img, box)
        elif box is not None and self.erase:
            img = erase_background(img, box)
        img = resize_image(img, self.prep)
        if self.image_augs is not None:
            img = self.image_augs(img)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        chw = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        tensor = torch.from_numpy(np.ascontiguousarray(normalize_array(chw, self.prep)))
        if self.tensor_augs is not None:
            tensor = self.tensor_augs(tensor)
        return tensor


class EvalTransform:
    """Callable ``(image, box) -> tensor`` for validation/test/prediction: exactly the deployed preprocessing."""

    def __init__(self, prep: Preprocessing) -> None:
        self.prep = prep

    def __call__(self, img: Image.Image, box: Box | None = None) -> torch.Tensor:
        return torch.from_numpy(image_to_array(img, self.prep))


ImageTransform = Callable[[Image.Image, Box | None], torch.Tensor]
