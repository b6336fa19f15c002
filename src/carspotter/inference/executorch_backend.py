"""`ExecuTorchClassifier`: an ExecuTorch `.pte` program run by ExecuTorch's Python runtime, described by its
``FILE.pte.json`` sidecar (what a phone app ships beside it)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from carspotter.errors import UserError
from carspotter.formats import metadata
from carspotter.inference.base import Classifier


def require_executorch() -> None:
    # Importing ExecuTorch registers torchao's KernelPreference enum with torch's pytree, which logs a deprecation
    # warning meant for torchao's authors, not for our users.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        import executorch.exir  # noqa: F401
    except ImportError:
        raise UserError("ExecuTorch is not installed; run `pip install executorch==1.5.1`") from None


@contextlib.contextmanager
def _native_stderr_only_on_failure() -> Iterator[None]:
    """Hold back what native code writes to stderr (the runtime's cpuinfo probe prints five "Failed to open midr
    file" lines on every x86 machine) and replay it only if the block raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class ExecuTorchClassifier(Classifier):
    """One image at a time: the program's batch axis is fixed at 1."""

    label = "executorch-xnnpack"

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        require_executorch()
        from executorch.runtime import Runtime

        if threads is not None:
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(threads)  # XNNPACK's thread pool; the only knob ExecuTorch's Python API offers

        self.path = Path(path)
        self.metadata = metadata.read_sidecar(self.path)
        self.class_names = list(self.metadata["class_names"])
        self.classes = metadata.classes_of(self.metadata)
        self.calibration = metadata.calibration_of(self.metadata, self.path)
        self.preprocessing = metadata.preprocessing_of(self.metadata)
        self.takes_pixels = False
        try:
            with _native_stderr_only_on_failure():
                self.method = Runtime.get().load_program(self.path).load_method("forward")
        except RuntimeError as e:
            raise UserError(f"{self.path}: ExecuTorch cannot load this program ({e})") from None

    def logits(self, batch: np.ndarray) -> np.ndarray:
        outs = [self.method.execute([torch.from_numpy(np.ascontiguousarray(x[None]))])[0] for x in batch]
        return torch.cat(outs).float().numpy()
