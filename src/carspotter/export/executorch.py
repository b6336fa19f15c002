"""`export(ckpt, out)`: an ExecuTorch `.pte` program lowered to XNNPACK, checked with ExecuTorch's Python runtime.

ExecuTorch is PyTorch's on-device runtime for Android and iOS (TorchScript and PyTorch Mobile are deprecated). The
program takes a batch of one image (what a phone feeds it); its metadata goes to ``FILE.pte.json`` beside it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from carspotter.checkpoint import load_checkpoint
from carspotter.errors import UserError
from carspotter.export import metadata
from carspotter.export.onnx import CHECK_IMAGES, ExportReport, check_images, compare, describe_export
from carspotter.inference.executorch_backend import ExecuTorchClassifier, require_executorch
from carspotter.inference.torch_backend import TorchClassifier
from carspotter.writable import check_writable

log = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-3


def export(ckpt: str | Path, out: str | Path, *, data: str | Path | None = None) -> ExportReport:
    """Lower ``ckpt`` to an XNNPACK ExecuTorch program at ``out`` and compare it with PyTorch on real images."""
    require_executorch()
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
    reference = TorchClassifier(model, info.class_names, info.preprocessing)
    report = compare(reference.image_logits(images), ExecuTorchClassifier(out).image_logits(images))
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
    return ExportReport(out, ExecuTorchClassifier.label, report, len(images), source, out.stat().st_size, {"batch": 1})
