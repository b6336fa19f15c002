"""Running a trained model: one loader for every format, one interface.

`load_classifier(path)` picks the backend by file type: a carspotter checkpoint (``.ckpt``) runs in PyTorch, an
exported ``.onnx`` in ONNX Runtime, an ExecuTorch ``.pte`` in ExecuTorch's runtime. Each is a `Classifier`:
``class_names``, ``classes`` (make, model, year), ``calibration``, ``logits(batch)`` and ``predict(images) ->
probabilities``. `predict`, `serve`,
`bench-infer`, `evaluate` and the export parity checks all run models through here (`predict`, `bench_infer` and
the photos they read, `inputs`, live beside the backends). This module and the ONNX backend import no torch, so
serving an ``.onnx`` needs no PyTorch.
"""

from __future__ import annotations

from pathlib import Path

from carspotter.errors import UserError
from carspotter.formats.calibration import say_if_uncalibrated
from carspotter.inference.base import Classifier

__all__ = ["CHECKPOINT_SUFFIXES", "Classifier", "load_classifier"]

CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")


def load_classifier(path: str | Path, *, threads: int | None = None, device: str | None = None) -> Classifier:
    """The model file → its `Classifier`; ``threads``: CPU threads for its runtime (None: the runtime's default);
    ``device``: where a checkpoint runs (None: the GPU if there is one, `carspotter.runtime.inference_runtime`;
    exports run in their own runtime on the CPU). Its probabilities use the file's stored temperature (1, said
    once, for a model without one)."""
    classifier = _open(Path(path), threads, device)
    say_if_uncalibrated(classifier.calibration, str(path))
    return classifier


def _open(path: Path, threads: int | None, device: str | None) -> Classifier:
    if not path.is_file():
        raise UserError(f"{path}: no such model file")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from carspotter.inference.onnx_backend import OnnxClassifier

        return OnnxClassifier(path, threads=threads)
    if suffix == ".pte":
        from carspotter.inference.executorch_backend import ExecuTorchClassifier

        return ExecuTorchClassifier(path, threads=threads)
    if suffix in CHECKPOINT_SUFFIXES:
        from carspotter.inference.torch_backend import TorchClassifier

        return TorchClassifier.from_checkpoint(path, threads=threads, device=device)
    raise UserError(
        f"{path}: unknown model type {suffix!r}; expected a .ckpt checkpoint, an exported .onnx or an ExecuTorch .pte"
    )
