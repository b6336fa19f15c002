"""`OnnxClassifier`: an exported carspotter ONNX file run by ONNX Runtime, rebuilt from its own metadata.

Imports no torch, so `predict` on a `.onnx` and the web server run where PyTorch is not installed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from carspotter.errors import UserError
from carspotter.formats import metadata
from carspotter.inference.base import Classifier
from carspotter.preprocessing import Preprocessing

log = logging.getLogger(__name__)


class OnnxClassifier(Classifier):
    """``class_names``, ``preprocessing`` and whether the model takes pixels, from the file's metadata."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such model file")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: ORT's warnings about unused initialisers are not the user's
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types for any unreadable model
            raise UserError(f"{self.path}: not a readable ONNX model ({exc.__class__.__name__}: {exc})") from None
        self.metadata: dict[str, Any] = metadata.parse(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.class_names: list[str] = list(self.metadata["class_names"])
        self.classes = metadata.classes_of(self.metadata)
        self.calibration = metadata.calibration_of(self.metadata, self.path)
        self.preprocessing: Preprocessing = metadata.preprocessing_of(self.metadata)
        self.input_name: str = self.metadata["input_name"]
        self.output_name: str = self.metadata["output_name"]
        self.takes_pixels: bool = metadata.takes_pixels(self.metadata)
        self.label = f"onnx-{self.precision}" + ("-pixels" if self.takes_pixels else "")

    @property
    def precision(self) -> str:
        return str(self.metadata.get("runtime", {}).get("precision", "fp32"))

    def logits(self, batch: np.ndarray) -> np.ndarray:
        if self.takes_pixels:
            if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[3] != 3:
                raise ValueError(f"expected N×H×W×3 uint8 pixels, got {batch.dtype} {batch.shape}")
        else:
            batch = np.ascontiguousarray(batch, dtype=np.float32)
            h, w = self.preprocessing.image_size
            if batch.ndim != 4 or batch.shape[1:] != (self.preprocessing.channels, h, w):
                raise ValueError(f"expected N×{self.preprocessing.channels}×{h}×{w} input, got {batch.shape}")
        (out,) = self.session.run([self.output_name], {self.input_name: batch})
        return out
