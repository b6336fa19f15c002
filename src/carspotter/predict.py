"""`predict`: class names and probabilities for photos, from a checkpoint (PyTorch) or an exported model.

Every model format is wrapped as a `Classifier`; an unreadable image gets an error entry of its own and the other
images are still predicted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from carspotter.errors import UserError
from carspotter.preprocessing import Preprocessing, image_to_array, open_photo, softmax, top_k_predictions


class Classifier(Protocol):
    class_names: list[str]
    preprocessing: Preprocessing
    takes_pixels: bool  # True: the model preprocesses itself and takes N×H×W×3 uint8 pixels of any size

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """N×C×H×W float32 preprocessed images (or N×H×W×3 uint8 pixels) → N×classes logits."""


def model_input(classifier: Classifier, img: Image.Image) -> np.ndarray:
    """One decoded RGB photo as ``classifier`` takes it: its pixels, or preprocessed as in training."""
    return np.asarray(img, dtype=np.uint8) if classifier.takes_pixels else image_to_array(img, classifier.preprocessing)


def mirror(classifier: Classifier, x: np.ndarray) -> np.ndarray:
    """The `model_input` of the photo's mirror image: pixels are H×W×C, preprocessed arrays C×H×W."""
    return np.ascontiguousarray(x[:, ::-1] if classifier.takes_pixels else x[..., ::-1])


def batched_logits(classifier: Classifier, inputs: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """Logits of `model_input` arrays, batching neighbours of equal shape (photos of any size go one by one)."""
    out: list[np.ndarray] = []
    start = 0
    while start < len(inputs):
        end = start + 1
        while end < len(inputs) and end - start < batch_size and inputs[end].shape == inputs[start].shape:
            end += 1
        out.append(classifier.logits(np.stack(inputs[start:end])))
        start = end
    return np.concatenate(out) if out else np.zeros((0, len(classifier.class_names)), np.float32)


class TorchClassifier:
    """A carspotter checkpoint run by PyTorch on the CPU."""

    def __init__(self, ckpt: str | Path) -> None:
        from carspotter.training.checkpoint import load_checkpoint

        self.model, info = load_checkpoint(ckpt)
        self.class_names = info.class_names
        self.preprocessing = info.preprocessing
        self.takes_pixels = False

    def logits(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(batch)).float().numpy()


def load_classifier(model_path: str | Path) -> Classifier:
    """Pick the runtime by file type: ``.ckpt`` → PyTorch; exported formats → their own runtime (no torch import)."""
    path = Path(model_path)
    if not path.is_file():
        raise UserError(f"{path}: no such model file")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from carspotter.serve.onnx_model import OnnxClassifier

        return OnnxClassifier(path)
    if suffix in (".ckpt", ".pt", ".pth"):
        return TorchClassifier(path)
    raise UserError(f"{path}: unknown model type {suffix!r}; expected a .ckpt checkpoint or an exported .onnx file")


def predict_images(
    classifier: Classifier,
    images: Sequence[str | Path],
    top_k: int = 5,
    batch_size: int = 32,
    tta_flip: bool = False,
) -> list[dict[str, Any]]:
    """One result per image, in order: ``{"image", "predictions": [...]}`` or ``{"image", "error"}``.

    ``tta_flip``: each photo's probabilities are the mean of the photo's and its mirror image's.
    """
    results: list[dict[str, Any]] = [{"image": str(p)} for p in images]
    ready: list[tuple[int, np.ndarray]] = []
    for i, path in enumerate(images):
        try:
            ready.append((i, model_input(classifier, open_photo(path))))
        except UserError as exc:
            results[i]["error"] = str(exc)
    inputs = [arr for _, arr in ready]
    probs = softmax(batched_logits(classifier, inputs, batch_size))
    if tta_flip:
        probs = (probs + softmax(batched_logits(classifier, [mirror(classifier, a) for a in inputs], batch_size))) / 2
    for (i, _), p in zip(ready, probs, strict=True):
        results[i]["predictions"] = top_k_predictions(p, classifier.class_names, top_k)
    return results
