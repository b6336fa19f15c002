"""`predict`: class names and probabilities for photos, from a checkpoint (PyTorch) or an exported model.

Every model format is wrapped as a `Classifier`; an unreadable image gets an error entry of its own and the other
images are still predicted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from carspotter.errors import UserError
from carspotter.preprocessing import Preprocessing, image_to_array, open_image, softmax, top_k_predictions


class Classifier(Protocol):
    class_names: list[str]
    preprocessing: Preprocessing

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """N×C×H×W float32 preprocessed images → N×classes logits."""


class TorchClassifier:
    """A carspotter checkpoint run by PyTorch on the CPU."""

    def __init__(self, ckpt: str | Path) -> None:
        from carspotter.training.checkpoint import load_checkpoint

        self.model, info = load_checkpoint(ckpt)
        self.class_names = info.class_names
        self.preprocessing = info.preprocessing

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
    classifier: Classifier, images: Sequence[str | Path], top_k: int = 5, batch_size: int = 32
) -> list[dict[str, Any]]:
    """One result per image, in order: ``{"image", "predictions": [...]}`` or ``{"image", "error"}``."""
    results: list[dict[str, Any]] = [{"image": str(p)} for p in images]
    ready: list[tuple[int, np.ndarray]] = []
    for i, path in enumerate(images):
        try:
            ready.append((i, image_to_array(open_image(path), classifier.preprocessing)))
        except UserError as exc:
            results[i]["error"] = str(exc)
    for start in range(0, len(ready), batch_size):
        chunk = ready[start : start + batch_size]
        probs = softmax(classifier.logits(np.stack([arr for _, arr in chunk])))
        for (i, _), p in zip(chunk, probs, strict=True):
            results[i]["predictions"] = top_k_predictions(p, classifier.class_names, top_k)
    return results
