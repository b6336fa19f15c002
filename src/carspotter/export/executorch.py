"""`export(ckpt, out)`: an ExecuTorch `.pte` program lowered to XNNPACK, checked with ExecuTorch's Python runtime.

ExecuTorch is PyTorch's on-device runtime for Android and iOS (TorchScript and PyTorch Mobile are deprecated). The
program takes a batch of one image (what a phone feeds it); its metadata goes to ``FILE.pte.json`` beside it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from carspotter.errors import UserError
from carspotter.export import metadata
from carspotter.export.inputs import images_to_batch
from carspotter.export.onnx import CHECK_IMAGES, ExportReport, check_images, compare, describe_export, torch_logits
from carspotter.training.checkpoint import load_checkpoint
from carspotter.writable import check_writable

log = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-3


def _require_executorch() -> None:
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


class ExecuTorchModel:
    """A `.pte` program run by ExecuTorch's Python runtime, one image at a time (its batch axis is fixed at 1)."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        _require_executorch()
        from executorch.runtime import Runtime

        if threads is not None:
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(threads)  # XNNPACK's thread pool; the only knob ExecuTorch's Python API offers

        self.path = Path(path)
        self.metadata = metadata.read_sidecar(self.path)
        self.class_names = list(self.metadata["class_names"])
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


def export(ckpt: str | Path, out: str | Path, *, data: str | Path | None = None) -> ExportReport:
    """Lower ``ckpt`` to an XNNPACK ExecuTorch program at ``out`` and compare it with PyTorch on real images."""
    _require_executorch()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    out = Path(out)
    if out.suffix.lower() != ".pte":
        raise UserError(f"{out}: an ExecuTorch export's file name must end in .pte")
    check_writable(out.parent, "export folder")
    model, info = load_checkpoint(ckpt)
    h, w = info.preprocessing.image_size
    example = (torch.randn(1, info.preprocessing.channels, h, w),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(model, example)
        program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(program.buffer)
    props = describe_export(
        info,
        {
            "format": "executorch",
            "precision": "fp32",
            "backend": "XNNPACK",
            "batch": 1,
            "exporter": f"torch.export + executorch, torch {torch.__version__}",
        },
    )
    metadata.write_sidecar(out, props)
    log.debug("wrote %s (%.1f MB) and %s", out, out.stat().st_size / 1e6, metadata.sidecar_path(out).name)
    images, source = check_images(info, data, n=CHECK_IMAGES // 2)
    x = images_to_batch(images, info.preprocessing)
    report = compare(torch_logits(model, x), ExecuTorchModel(out).logits(x))
    log.info(
        "ExecuTorch vs PyTorch on %s: max |Δ logit| = %.2e, top-1 agreement %.1f%%",
        source,
        report.max_abs_diff,
        100 * report.top1_agreement,
    )
    if not report.max_abs_diff < FP32_TOLERANCE:
        raise RuntimeError(
            f"{out}: ExecuTorch differs from PyTorch by {report.max_abs_diff:.3g} (tolerance {FP32_TOLERANCE})"
        )
    return ExportReport(out, "executorch-xnnpack", report, len(x), source, out.stat().st_size, {"batch": 1})
