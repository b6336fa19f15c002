"""`predict`: class names and calibrated probabilities for photos, from any model file `carspotter.inference` runs,
with the most likely make and model and whether the answer is sure (`carspotter.inference.answers`).

An unreadable image gets an error entry of its own and the other images are still predicted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from carspotter.errors import UserError
from carspotter.formats.calibration import check_min_confidence
from carspotter.inference import Classifier
from carspotter.inference.answers import answer
from carspotter.preprocessing import open_photo


def predict_images(
    classifier: Classifier,
    images: Sequence[str | Path],
    top_k: int = 5,
    batch_size: int = 32,
    tta_flip: bool = False,
    min_confidence: float | None = None,
) -> list[dict[str, Any]]:
    """One result per image, in order: ``{"image", "predictions": [...], "make", "model", "unsure", "answer"}`` or
    ``{"image", "error"}``.

    ``tta_flip``: each photo's probabilities are the mean of the photo's and its mirror image's.
    ``min_confidence``: below it an answer is unsure (None: the model's fitted threshold, 0 if it has none).
    """
    fitted = classifier.calibration.answer_threshold
    threshold = fitted if min_confidence is None else check_min_confidence(min_confidence)
    results: list[dict[str, Any]] = [{"image": str(p)} for p in images]
    ready: list[tuple[int, Image.Image]] = []
    for i, path in enumerate(images):
        try:
            ready.append((i, open_photo(path)))
        except UserError as exc:
            results[i]["error"] = str(exc)
    probs = classifier.predict([img for _, img in ready], tta_flip=tta_flip, batch_size=batch_size)
    for (i, _), p in zip(ready, probs, strict=True):
        results[i].update(answer(p, classifier.class_names, classifier.classes, top_k, threshold))
    return results

