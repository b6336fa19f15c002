"""`export(ckpt, out)`: a checkpoint → a self-describing fp32 ONNX file, dynamic batch axis, checked against PyTorch.

The dynamo-based ``torch.onnx.export`` folds every BatchNorm into the preceding convolution (its optimiser constant-
folds the eval-mode graph); the file then gets the carspotter metadata (`carspotter.formats.metadata`) and is checked:
ONNX Runtime and PyTorch must give the same logits on real images.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from PIL import Image

from carspotter.errors import UserError
from carspotter.export.pixels import embed_preprocessing as embed_pixels
from carspotter.formats import metadata
from carspotter.formats.checkpoint import CheckpointInfo
from carspotter.formats.files import sha256_file
from carspotter.inference.onnx_backend import OnnxClassifier
from carspotter.inference.torch_backend import TorchClassifier, load_checkpoint
from carspotter.preprocessing import softmax
from carspotter.writable import check_output_file, replacing

log = logging.getLogger(__name__)

OPSET = 18
FP32_TOLERANCE = 1e-3  # max |ONNX Runtime − PyTorch| logit difference an fp32 export must stay under
PIXELS_TOLERANCE = 1e-2  # max |Δ probability| when the graph resizes the photo itself (pixels may round apart)
CHECK_IMAGES = 32


@dataclass(frozen=True)
class Agreement:
    """How far an exported model's outputs are from PyTorch's on the same photos."""

    max_abs_diff: float  # logits
    max_prob_diff: float  # softmax probabilities
    top1_agreement: float  # fraction of photos where both give the same class


@dataclass(frozen=True)
class ExportReport:
    path: Path
    format: str  # onnx-fp32, onnx-int8, executorch-xnnpack
    agreement: Agreement  # against PyTorch on the check inputs
    n_check: int
    check_source: str  # where the check inputs came from
    size_bytes: int
    extra: dict[str, Any] | None = None


def describe_export(info: CheckpointInfo, runtime: dict[str, Any], *, pixels_in_graph: bool = False) -> dict[str, str]:
    """The metadata an exported file carries: what the checkpoint knew, its origin, and how it was exported."""
    return metadata.describe(
        class_names=info.class_names,
        preprocessing=info.preprocessing,
        model_name=info.model_name,
        model_args=info.model_args,
        source_checkpoint={"name": info.path.name, "sha256": sha256_file(info.path)},
        runtime=runtime,
        classes=info.car_names,
        calibration=info.calibration,
        pixels_in_graph=pixels_in_graph,
    )


def check_images(
    info: CheckpointInfo, data: str | Path | None, n: int = CHECK_IMAGES, *, random_check: bool = False
) -> tuple[list[Image.Image], str]:
    """Real photos to compare runtimes on: ``data``'s test split, else the dataset the checkpoint was trained on.

    Random images stand in only when asked (``random_check``): an export checked on noise agrees on noise, so a
    missing dataset is an error that says how to name one.
    """
    from carspotter.inference.inputs import prepared_images

    if random_check:
        if data is not None:
            raise UserError("--data and --check-random are alternatives: the check runs on one set of images")
        rng = np.random.default_rng(0)
        sizes = rng.integers(32, 400, size=(n, 2))
        images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
        return images, f"{n} random images"
    trained_on = info.config.data.path if info.config is not None else None
    candidate = data if data is not None else trained_on
    if candidate is not None and (Path(candidate) / "manifest.json").is_file():
        images, _ = prepared_images(candidate, "test", limit=n)
        if images:
            return images, f"{len(images)} test images of {candidate}"
    if data is not None:
        raise UserError(f"{data}: not a complete prepared dataset; cannot check the export on its images")
    where = f"the dataset it was trained on ({trained_on}) is not there" if trained_on else "it names no dataset"
    raise UserError(
        f"{info.path}: {where} to check the export on; pass --data PREPARED (a prepared dataset whose test photos "
        "the check runs on), or --check-random to check on random images"
    )


def compare(reference: np.ndarray, other: np.ndarray) -> Agreement:
    """How close two N×classes logit arrays are."""
    if not len(reference):
        return Agreement(0.0, 0.0, 1.0)
    return Agreement(
        float(np.abs(reference - other).max()),
        float(np.abs(softmax(reference) - softmax(other)).max()),
        float((reference.argmax(1) == other.argmax(1)).mean()),
    )


def check_parity(report: Agreement, out: Path, *, pixels_in_graph: bool) -> None:
    """An fp32 export must match PyTorch: its logits to `FP32_TOLERANCE`, or, when it resizes the photos itself
    (PIL rounds the resized pixels to integers, ONNX's Resize may land one level away), its probabilities to
    `PIXELS_TOLERANCE`."""
    if pixels_in_graph:
        if not report.max_prob_diff <= PIXELS_TOLERANCE:
            raise RuntimeError(f"{out}: with preprocessing in the graph, ONNX Runtime differs from PyTorch by "
                               f"{report.max_prob_diff:.3g} in probability (tolerance {PIXELS_TOLERANCE})")
    elif not report.max_abs_diff < FP32_TOLERANCE:
        raise RuntimeError(f"{out}: ONNX Runtime differs from PyTorch by {report.max_abs_diff:.3g} "
                           f"(tolerance {FP32_TOLERANCE})")


def export(
    ckpt: str | Path,
    out: str | Path,
    *,
    data: str | Path | None = None,
    opset: int = OPSET,
    embed_preprocessing: bool = False,
    overwrite: bool = False,
    random_check: bool = False,
) -> ExportReport:
    """Export ``ckpt`` to ``out`` (fp32 ONNX) and check it against PyTorch on real photos.

    ``embed_preprocessing``: the model takes uint8 RGB pixels of any size (`carspotter.export.pixels`). ``out`` is
    written only when the check passes, replacing an existing file only with ``overwrite`` (a link, not its target).
    """
    out = check_output_file(out, "export", overwrite=overwrite)
    model, info = load_checkpoint(ckpt)
    images, source = check_images(info, data, random_check=random_check)
    with replacing(out) as staged:
        to_onnx(model, info, staged, opset=opset, embed_preprocessing=embed_preprocessing)
        report = compare(TorchClassifier(model, info.class_names, info.preprocessing).image_logits(images),
                         OnnxClassifier(staged).image_logits(images))
        log.info("ONNX Runtime vs PyTorch on %s: max |Δ logit| = %.2e, max |Δ probability| = %.2e, top-1 agreement "
                 "%.1f%%", source, report.max_abs_diff, report.max_prob_diff, 100 * report.top1_agreement)
        check_parity(report, out, pixels_in_graph=embed_preprocessing)
    return ExportReport(out, "onnx-fp32", report, len(images), source, out.stat().st_size,
                        {"opset": opset, "preprocessing_in_graph": embed_preprocessing})


def to_onnx(
    model: torch.nn.Module, info: CheckpointInfo, out: Path, *, opset: int = OPSET, embed_preprocessing: bool = False
) -> Path:
    """Write the eval-mode ``model`` as ONNX with a dynamic batch axis and BN folded, plus its metadata."""
    if out.suffix.lower() != ".onnx":
        raise UserError(f"{out}: an ONNX export's file name must end in .onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    h, w = info.preprocessing.image_size
    example = torch.randn(2, info.preprocessing.channels, h, w)  # batch 2: a batch of 1 would be specialised away
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model.eval(),
            (example,),
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            input_names=["input"],
            output_names=["logits"],
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    left = [n.name for n in proto.graph.node if n.op_type == "BatchNormalization"]
    if left:
        raise RuntimeError(f"BatchNormalization left unfolded in the ONNX graph: {left[:5]}")
    props = describe_export(
        info,
        {
            "format": "onnx",
            "precision": "fp32",
            "opset": opset,
            "exporter": f"torch.onnx dynamo, torch {torch.__version__}",
            "bn_folded": True,
            "dynamic_batch": True,
        },
        pixels_in_graph=embed_preprocessing,
    )
    if embed_preprocessing:
        proto = embed_pixels(proto, info.preprocessing, "input")
    metadata.set_metadata(proto, props)
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(out))
    log.debug("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out
