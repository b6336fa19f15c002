"""How a photo becomes the network's input, in NumPy and PIL only.

Training, evaluation, `predict` on a checkpoint, ONNX export and the web server all call these functions, so a model
sees exactly the same pixels wherever it runs. No torch import here: the ONNX serving path must not need PyTorch.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from carspotter.defaults import DEFAULT_IMAGE_SIZE
from carspotter.errors import UserError

# One limit for every command that decodes images (prepare, stats, train, evaluate, predict, export, serve):
# a larger image is refused from its header, before any pixel is decoded (decompression bombs). PIL's own limit
# only warns below 179 Mpx; its warning is silenced because this check comes first and is an error.
MAX_PIXELS_ENV = "CARSPOTTER_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 40_000_000
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# The thesis's statistics of the Stanford Cars training images at 227x227, as its code's config held them.
THESIS_MEAN_RGB = (0.4707, 0.4602, 0.4550)
THESIS_STD_RGB = (0.2594, 0.2585, 0.2635)


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to turn an image into a model input; stored in every checkpoint and exported model."""

    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE  # (height, width)
    grayscale: bool = False
    mean: tuple[float, ...] = THESIS_MEAN_RGB
    std: tuple[float, ...] = THESIS_STD_RGB
    normalize: bool = True
    resize: str = "stretch"  # resize to exactly image_size, ignoring the aspect ratio (the thesis's rule)
    interpolation: str = "bilinear"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        d = dict(d)
        d["image_size"] = tuple(d["image_size"])
        d["mean"] = tuple(d["mean"])
        d["std"] = tuple(d["std"])
        return cls(**d)


def max_pixels() -> int:
    """The pixel limit: ``CARSPOTTER_MAX_PIXELS`` from the environment (so DataLoader workers share it), else 40 M."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{MAX_PIXELS_ENV}={text!r}: must be a positive whole number of pixels (e.g. 40000000)")
    return value


def check_pixels(size: tuple[int, int], name: str, limit: int | None = None) -> None:
    """Refuse an image whose header announces more pixels than the limit, before it is decoded."""
    limit = max_pixels() if limit is None else limit
    width, height = size
    if width * height > limit:
        raise UserError(
            f"{name}: image has too many pixels ({width}×{height} = {width * height:,}; limit {limit:,}); "
            f"shrink it, or raise the limit with {MAX_PIXELS_ENV}"
        )


def open_image(source: str | Path | bytes, limit: int | None = None) -> Image.Image:
    """Decode an image fully and convert it to RGB, pixels as stored (a dataset's boxes refer to them); a missing,
    non-image, truncated or oversized (`max_pixels`) file is a `UserError`."""
    return _decode(source, orient=False, limit=limit)


def open_photo(source: str | Path | bytes, limit: int | None = None) -> Image.Image:
    """A user's photo as it is seen: `open_image` with its EXIF orientation applied, as browsers and phones do (a
    phone stores a portrait photo sideways and says so in EXIF). `predict`, `serve` and the app agree on this."""
    return _decode(source, orient=True, limit=limit)


def _decode(source: str | Path | bytes, *, orient: bool, limit: int | None) -> Image.Image:
    name = "upload" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            check_pixels(img.size, name, limit)
            img.load()
            return (ImageOps.exif_transpose(img) if orient else img).convert("RGB")
    except FileNotFoundError:
        raise UserError(f"{name}: no such file") from None
    except Image.DecompressionBombError:
        raise UserError(
            f"{name}: image has too many pixels (limit {max_pixels() if limit is None else limit:,}; "
            f"raise it with {MAX_PIXELS_ENV})"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{name}: not a readable image ({exc})") from None


def resize_image(img: Image.Image, prep: Preprocessing) -> Image.Image:
    """Resize (and convert to grayscale if configured) as the model was trained."""
    if prep.resize != "stretch":
        raise ValueError(f"unknown resize rule {prep.resize!r}")
    height, width = prep.image_size
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[prep.interpolation]
    img = img.resize((width, height), resample)
    return img.convert("L") if prep.grayscale else img


def normalize_array(chw: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """Scale a C×H×W float32 array in [0, 1] by the model's mean and std."""
    if not prep.normalize:
        return chw
    mean = np.asarray(prep.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(prep.std, dtype=np.float32).reshape(-1, 1, 1)
    return (chw - mean) / std


def image_to_array(img: Image.Image, prep: Preprocessing) -> np.ndarray:
    """A decoded RGB image → the model's C×H×W float32 input (resized, scaled to [0, 1], normalised)."""
    arr = np.asarray(resize_image(img, prep), dtype=np.float32) / 255.0
    chw = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(normalize_array(chw, prep), dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def top_k_predictions(probs: np.ndarray, class_names: list[str], k: int) -> list[dict[str, Any]]:
    """One image's probabilities → ``[{"class_id", "class_name", "probability"}, ...]``, most likely first."""
    order = np.argsort(-probs)[: max(1, min(k, len(class_names)))]
    return [{"class_id": int(i), "class_name": class_names[i], "probability": float(probs[i])} for i in order]
