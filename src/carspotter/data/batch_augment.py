"""Batched augmentation with per-sample random parameters, built from the same config entries as the PIL path.

``torchvision.transforms.v2`` draws one set of parameters per call: on a batch it would flip or warp every image the
same way. kornia.augmentation draws them per sample, on whatever device the batch is on, so the fast pipeline
augments whole batches on the GPU (or the CPU) with the same parameter semantics and ranges as the classic path:

=======================  ==============================  ==========================================================
``torchvision.v2``       kornia                          notes
=======================  ==============================  ==========================================================
RandomHorizontalFlip     RandomHorizontalFlip            ``p``
RandomVerticalFlip       RandomVerticalFlip              ``p``
RandomAffine             RandomAffine (p=1)              degrees, translate, scale, shear; interpolation
                                                         (torchvision's default, nearest, is kept); scalar fill
RandomRotation           RandomRotation (p=1)            degrees; interpolation; no ``expand``/``center``/fill
ColorJitter              ColorJitter                     brightness, contrast, saturation, hue (PIL semantics)
RandomGrayscale          RandomGrayscale                 ``p``
RandomResizedCrop        RandomResizedCrop (p=1)         size (default: data.image_size), scale, ratio; bilinear
RandomErasing            RandomErasing                   p, scale, ratio, scalar ``value`` (tensor augmentation)
=======================  ==============================  ==========================================================

MixUp and CutMix (``data.batch_augmentations``) mix whole batches and their labels; both pipelines run torchvision's
own v2 classes on the training device (`build_batch_mixing`).

A configured transform outside this table has no batched equivalent: `unsupported_transforms` names it, and the
fast pipeline refuses it (``data.pipeline: fast``) or falls back to the classic path (``auto``).
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Number
from typing import Any

import torch
import torch.nn as nn
from torchvision.transforms import v2

from carspotter.config import DataConfig, Transform
from carspotter.data.transforms import with_default_size
from carspotter.errors import UserError

IMAGE_TRANSFORMS = (
    "RandomResizedCrop",
    "RandomHorizontalFlip",
    "RandomVerticalFlip",
    "RandomAffine",
    "RandomRotation",
    "ColorJitter",
    "RandomGrayscale",
)
TENSOR_TRANSFORMS = ("RandomErasing",)


def unsupported_transforms(cfg: DataConfig) -> list[str]:
    """Configured augmentations the fast pipeline cannot run batched, as ``section: name (why)``."""
    problems = []
    for section, specs, allowed in (
        ("image_augmentations", cfg.image_augmentations, IMAGE_TRANSFORMS),
        ("tensor_augmentations", cfg.tensor_augmentations, TENSOR_TRANSFORMS),
    ):
        for spec in specs:
            if spec.name not in allowed:
                problems.append(f"data.{section}: {spec.name} (batched: {', '.join(allowed)})")
                continue
            try:
                _build(spec, channels=1 if cfg.grayscale else 3, image_size=cfg.image_size)
            except ValueError as exc:
                problems.append(f"data.{section}: {spec.name} ({exc})")
    return problems


def _interpolation(params: dict[str, Any]) -> str:
    value = params.get("interpolation", "nearest")  # torchvision's default for RandomAffine/RandomRotation
    name = str(getattr(value, "value", value)).lower()
    if name not in ("nearest", "bilinear"):
        raise ValueError(f"interpolation {name!r} has no batched equivalent (nearest, bilinear)")
    return name.upper()


def _scalar_fill(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, Number):
        return float(value)
    raise ValueError(f"fill/value {value!r}: only a single number has a batched equivalent")


def _build(spec: Transform, channels: int, image_size: tuple[int, int]) -> nn.Module:
    import kornia.augmentation as K

    p = with_default_size(spec, image_size)
    if spec.name == "RandomResizedCrop":
        size = p["size"]
        size = (size, size) if isinstance(size, int) else tuple(size) * (2 if len(size) == 1 else 1)
        return K.RandomResizedCrop(
            size=size,
            scale=_tuple(p.get("scale", (0.08, 1.0))),
            ratio=_tuple(p.get("ratio", (3 / 4, 4 / 3))),
            resample=_interpolation({"interpolation": "bilinear", **p}),  # torchvision's default here is bilinear
            p=1.0,
        )
    if spec.name == "RandomHorizontalFlip":
        return K.RandomHorizontalFlip(p=p.get("p", 0.5))
    if spec.name == "RandomVerticalFlip":
        return K.RandomVerticalFlip(p=p.get("p", 0.5))
    if spec.name == "RandomGrayscale":
        if channels != 3:
            raise ValueError("needs RGB images")
        return K.RandomGrayscale(p=p.get("p", 0.1))
    if spec.name == "RandomAffine":
        if p.get("center") is not None:
            raise ValueError("center has no batched equivalent")
        fill = _scalar_fill(p.get("fill", 0))
        kwargs: dict[str, Any] = {}
        if fill != 0.0:
            # The PIL path fills uint8 pixels; the batched path works on [0, 1] floats.
            kwargs = {"padding_mode": "fill", "fill_value": torch.full((channels,), fill / 255.0)}
        return K.RandomAffine(
            degrees=p["degrees"],
            translate=_tuple(p.get("translate")),
            scale=_tuple(p.get("scale")),
            shear=_shear(p.get("shear")),
            resample=_interpolation(p),
            p=1.0,
            **kwargs,
        )
    if spec.name == "RandomRotation":
        if p.get("expand") or p.get("center") is not None or _scalar_fill(p.get("fill", 0)) != 0.0:
            raise ValueError("expand, center and fill have no batched equivalent")
        # align_corners=False like RandomAffine: the rotation centre is the image centre, as in torchvision.
        return K.RandomRotation(degrees=p["degrees"], resample=_interpolation(p), align_corners=False, p=1.0)
    if spec.name == "ColorJitter":
        jitter = {k: p.get(k) or 0.0 for k in ("brightness", "contrast", "saturation", "hue")}
        if channels != 3:  # torchvision leaves saturation and hue of a grayscale (mode L) image unchanged
            jitter["saturation"] = jitter["hue"] = 0.0
        return K.ColorJitter(**{k: _tuple(v) for k, v in jitter.items()}, p=1.0)
    if spec.name == "RandomErasing":
        if p.get("inplace"):
            raise ValueError("inplace has no meaning here")
        value = p.get("value", 0.0)
        if isinstance(value, str):
            raise ValueError(f"value {value!r}: only a single number has a batched equivalent")
        return K.RandomErasing(
            scale=_tuple(p.get("scale", (0.02, 0.33))),
            ratio=_tuple(p.get("ratio", (0.3, 3.3))),
            value=_scalar_fill(value),
            p=p.get("p", 0.5),
        )
    raise ValueError("no batched equivalent")


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else value


def _shear(value: Any) -> Any:
    """torchvision: a number s → x-shear in (-s, s); (a, b) → x-shear in (a, b); 4 values → x and y ranges."""
    if value is None:
        return None
    if isinstance(value, Number):
        return (-float(value), float(value), 0.0, 0.0)
    value = [float(v) for v in value]
    if len(value) == 2:
        return (value[0], value[1], 0.0, 0.0)
    if len(value) == 4:
        return tuple(value)
    raise ValueError(f"shear {value!r}: expected a number, 2 or 4 values")


class BatchPreprocess(nn.Module):
    """uint8 N×H×W×C batch → normalised float N×C×H×W, augmented (per sample) when ``train`` is true.

    Order as in the classic path: image augmentations on [0, 1] pixels → normalisation → tensor augmentations.
    The N×H×W×C → N×C×H×W permute is a view, so the result is channels_last in memory without a copy.
    """

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__()
        problems = unsupported_transforms(cfg)
        if problems:
            raise UserError(
                "data.pipeline fast: these augmentations have no batched equivalent: "
                + "; ".join(problems)
                + ". Use data.pipeline: classic (or auto, which falls back to it)"
            )
        channels = 1 if cfg.grayscale else 3
        self.image_augs = nn.Sequential(*[_build(s, channels, cfg.image_size) for s in cfg.image_augmentations])
        self.tensor_augs = nn.Sequential(*[_build(s, channels, cfg.image_size) for s in cfg.tensor_augmentations])
        self.normalize = cfg.normalize
        self.register_buffer("mean", torch.tensor(cfg.resolved_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.resolved_std).view(1, -1, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError(f"expected a uint8 N×H×W×C batch, got {images.dtype} {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        if train and len(self.image_augs):
            x = self.image_augs(x)
        if self.normalize:
            x = (x - self.mean) / self.std
        if train and len(self.tensor_augs):
            x = self.tensor_augs(x)
        return x


def build_batch_mixing(cfg: DataConfig, num_classes: int) -> nn.Module | None:
    """MixUp / CutMix from ``data.batch_augmentations`` (torchvision v2); one drawn per batch when several."""
    mixers = [getattr(v2, s.name)(num_classes=num_classes, **s.params) for s in cfg.batch_augmentations]
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
