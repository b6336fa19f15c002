"""`export(ckpt, out)`: an ExecuTorch `.pte` program lowered to XNNPACK, checked with ExecuTorch's Python runtime.

ExecuTorch is PyTorch's on-device runtime for Android and iOS (TorchScript and PyTorch Mobile are deprecated). The
program takes a batch of one image (what a phone feeds it); its metadata goes to ``FILE.pte.json`` beside it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from carspotter.errors import UserError
from carspotter.export.onnx import CHECK_IMAGES, ExportReport, check_images, compare, describe_export
from carspotter.formats import metadata
from carspotter.inference.executorch_backend import ExecuTorchClassifier, require_executorch
from carspotter.inference.torch_backend import TorchClassifier, load_checkpoint
from carspotter.writable import check_output_file, replacing

log = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-3


def export(
    ckpt: str | Path,
    out: str | Path,
    *,
    data: str | Path | None = None,
    overwrite: bool = False,
    random_check: bool = False,
) -> ExportReport:
    """Lower ``ckpt`` to an XNNPACK ExecuTorch program at ``out`` and compare it with PyTorch on real images; ``out``
    (and its ``.json``) are written only when the check passes, over an existing file only with ``overwrite``."""
    require_executorch()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    out = Path(out)
    if out.suffix.lower() != ".pte":
        raise UserError(f"{out}: an ExecuTorch export's file name must end in .pte")
    check_output_file(out, "export", overwrite=overwrite)
    model, info = load_checkpoint(ckpt)
    images, source = check_images(info, data, n=CHECK_IMAGES // 2, random_check=random_check)
    h, w = info.preprocessing.image_size
    example = (torch.randn(1, info.preprocessing.channels, h, w),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(model, example)
        program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
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
    with replacing(out) as staged:
        staged.write_bytes(program.buffer)
        metadata.write_sidecar(staged, props)
        reference = TorchClassifier(model, info.class_names, info.preprocessing)
        report = compare(reference.image_logits(images), ExecuTorchClassifier(staged).image_logits(images))
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
    log.debug("wrote %s (%.1f MB) and %s", out, out.stat().st_size / 1e6, metadata.sidecar_path(out).name)
    return ExportReport(out, ExecuTorchClassifier.label, report, len(images), source, out.stat().st_size, {"batch": 1})
