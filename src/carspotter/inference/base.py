"""`Classifier`: what every backend offers, and the batching and test-time flip they share (torch-free)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
from PIL import Image

from carspotter.formats.calibration import UNCALIBRATED, Calibration
from carspotter.formats.car_names import CarName, car_names
from carspotter.preprocessing import Preprocessing, image_to_array, log_softmax, softmax


class Classifier(ABC):
    """A model that says which of ``class_names`` a photo shows.

    ``takes_pixels``: the model preprocesses itself and takes N×H×W×3 uint8 pixels of any size (an ONNX export with
    ``--embed-preprocessing``); otherwise it takes N×C×H×W float32 arrays preprocessed as in training. ``label``
    names the runtime and format (``pytorch-eager``, ``onnx-fp32``, ``executorch-xnnpack``). ``calibration``: the
    temperature `predict` divides the logits by and the default "not sure" threshold (`carspotter.formats.calibration`);
    ``classes``: each class's make, model and year.
    """

    class_names: list[str]
    preprocessing: Preprocessing
    takes_pixels: bool = False
    label: str
    calibration: Calibration = UNCALIBRATED
    _classes: list[CarName] | None = None

    @property
    def classes(self) -> list[CarName]:
        if self._classes is None:
            self._classes = car_names(self.class_names)
        return self._classes

    @classes.setter
    def classes(self, value: list[CarName] | None) -> None:
        self._classes = value

    @abstractmethod
    def logits(self, batch: np.ndarray) -> np.ndarray:
        """A batch of `model_input` arrays → N×classes logits."""

    def model_input(self, img: Image.Image) -> np.ndarray:
        """One decoded RGB photo as this model takes it: its pixels, or preprocessed as in training."""
        return np.asarray(img, dtype=np.uint8) if self.takes_pixels else image_to_array(img, self.preprocessing)

    def mirror(self, x: np.ndarray) -> np.ndarray:
        """The `model_input` of the photo's mirror image: pixels are H×W×C, preprocessed arrays C×H×W."""
        return np.ascontiguousarray(x[:, ::-1] if self.takes_pixels else x[..., ::-1])

    def batched_logits(self, inputs: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Logits of `model_input` arrays, batching neighbours of equal shape (photos of any size go one by one)."""
        out: list[np.ndarray] = []
        start = 0
        while start < len(inputs):
            end = start + 1
            while end < len(inputs) and end - start < batch_size and inputs[end].shape == inputs[start].shape:
                end += 1
            out.append(self.logits(np.stack(inputs[start:end])))
            start = end
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)

    def image_logits(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        return self.batched_logits([self.model_input(img) for img in images], batch_size)

    def scores(self, batch: np.ndarray, *, tta_flip: bool = False) -> np.ndarray:
        """A batch of `model_input` arrays of one shape → N×classes scores whose softmax is the answer: the logits,
        or with ``tta_flip`` `flip_averaged` over the batch and its mirror images (what `evaluate` scores)."""
        logits = self.logits(batch)
        if not tta_flip:
            return logits
        return flip_averaged(logits, self.logits(np.stack([self.mirror(x) for x in batch])))

    def predict(self, images: Sequence[Image.Image], *, tta_flip: bool = False, batch_size: int = 32) -> np.ndarray:
        """Decoded RGB photos → N×classes calibrated probabilities: softmax(logits / temperature). ``tta_flip``: each
        photo's probabilities are the mean of the photo's and its mirror image's calibrated ones (`flip_averaged`)."""
        t = self.calibration.temperature
        inputs = [self.model_input(img) for img in images]
        logits = self.batched_logits(inputs, batch_size) / t
        if tta_flip:
            logits = flip_averaged(logits, self.batched_logits([self.mirror(x) for x in inputs], batch_size) / t)
        return softmax(logits)


def flip_averaged(logits: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """Test-time flip: the log of the mean of a photo's and its mirror image's probabilities (its softmax is that
    mean; as a logit its cross-entropy is the loss of the averaged prediction). The one implementation, for
    `predict`, `evaluate`, serve and bench-infer alike."""
    return np.logaddexp(log_softmax(logits), log_softmax(mirrored)) - np.log(2.0)
