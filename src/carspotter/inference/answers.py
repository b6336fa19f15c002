"""One photo's answer in the words a person reads: the top classes, the most likely make and model (probabilities
summed over their classes), and whether the answer is sure.

An answer is ``unsure`` when its top class's probability is below ``min_confidence``. Then it names the coarser level
that is sure: the model ("BMW M3 Coupe — year not sure"), else the make ("an Audi — model not sure"), else nothing
("not sure") with the three most likely classes. Torch-free: `predict`, the API and the tests share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from carspotter.formats.car_names import CarName
from carspotter.preprocessing import top_k_predictions


def grouped(probs: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """The probabilities of the classes summed per label (a make, a model), most likely first."""
    sums: dict[str, float] = {}
    for p, label in zip(probs.tolist(), labels, strict=True):
        sums[label] = sums.get(label, 0.0) + p
    return dict(sorted(sums.items(), key=lambda kv: -kv[1]))


def _top(probs: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    name, p = next(iter(grouped(probs, labels).items()))
    return {"name": name, "probability": p}


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def answer(
    probs: np.ndarray, class_names: list[str], classes: list[CarName], top_k: int, min_confidence: float
) -> dict[str, Any]:
    """``{"predictions", "make", "model", "unsure", "answer"}`` for one photo's class probabilities."""
    predictions = top_k_predictions(probs, class_names, top_k)
    make = _top(probs, [c.make for c in classes])
    model = _top(probs, [c.model for c in classes])
    unsure = predictions[0]["probability"] < min_confidence
    if not unsure:
        text = predictions[0]["class_name"]
    elif model["probability"] >= min_confidence and model["name"] != predictions[0]["class_name"]:
        text = f"{model['name']} — year not sure"
    elif make["probability"] >= min_confidence:
        text = f"{article(make['name'])} {make['name']} — model not sure"
    else:
        likely = top_k_predictions(probs, class_names, 3)
        top3 = ", ".join(f"{p['class_name']} ({p['probability']:.0%})" for p in likely)
        text = f"not sure; most likely {top3}"
    return {"predictions": predictions, "make": make, "model": model, "unsure": bool(unsure), "answer": text}
