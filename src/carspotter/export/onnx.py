"""`export(ckpt, out)`: a checkpoint → a self-describing fp32 ONNX file, dynamic batch axis, checked against PyTorch.

The dynamo-based ``torch.onnx.export`` folds every BatchNorm into the preceding convolution (its optimiser constant-
folds the eval-mode graph); the file then gets the carspotter metadata (`carspotter.export.metadata`) and is checked:
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

from carspotter.data.prepared import sha256_file
from carspotter.errors import UserError
from carspotter.export import metadata
from carspotter.training.checkpoint import CheckpointInfo, load_checkpoint
from carspotter.writable import check_writable

log = logging.getLogger(__name__)

OPSET = 18
FP32_TOLERANCE = 1e-3  # max |ONNX Runtime − PyTorch| logit difference an fp32 export must stay under
CHECK_IMAGES = 32


@dataclass(frozen=True)
class ExportReport:
    path: Path
    format: str  # onnx-fp32, onnx-int8, executorch-xnnpack
    max_abs_diff: float  # against PyTorch on the check inputs
    top1_agreement: float  # fraction of check inputs where both give the same class
    n_check: int
    check_source: str  # where the check inputs came from
    size_bytes: int
    extra: dict[str, Any] | None = None


def describe_export(info: CheckpointInfo, runtime: dict[str, Any]) -> dict[str, str]:
    """The metadata an exported file carries: what the checkpoint knew, its origin, and how it was exported."""
    return metadata.describe(
        class_names=info.class_names,
        preprocessing=info.preprocessing,
        model_name=info.model_name,
        model_args=info.model_args,
        source_checkpoint={"path": str(info.path.resolve()), "name": info.path.name, "sha256": sha256_file(info.path)},
        runtime=runtime,
    )


def check_inputs(info: CheckpointInfo, data: str | Path | None, n: int = CHECK_IMAGES) -> tuple[np.ndarray, str]:
    """Real images to compare runtimes on: ``data``'s test split, else the dataset the checkpoint was trained on.

    Only when neither is there do random inputs stand in (logged), so an export never fails for want of data.
    """
    from carspotter.export.inputs import prepared_inputs

    candidates = [data] if data is not None else []
    trained_on = info.config.get("data", {}).get("path") if isinstance(info.config, dict) else None
    if data is None and trained_on:
        candidates.append(trained_on)
    for candidate in candidates:
        if candidate is not None and (Path(candidate) / "manifest.json").is_file():
            x, _ = prepared_inputs(candidate, "test", info.preprocessing, limit=n)
            if len(x):
                return x, f"{len(x)} test images of {candidate}"
    if data is not None:
        raise UserError(f"{data}: not a complete prepared dataset; cannot check the export on its images")
    log.warning("no prepared dataset found for the parity check; using random inputs")
    h, w = info.preprocessing.image_size
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, info.preprocessing.channels, h, w)).astype(np.float32), f"{n} random inputs"


def torch_logits(model: torch.nn.Module, x: np.ndarray, batch_size: int = 16) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate(
            [model(torch.from_numpy(x[i : i + batch_size])).float().numpy() for i in range(0, len(x), batch_size)]
        )


def onnx_logits(path: Path, x: np.ndarray, batch_size: int = 16) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)])


def compare(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(max abs difference, top-1 agreement) of two N×classes logit arrays."""
    diff = float(np.abs(reference - other).max()) if reference.size else 0.0
    agree = float((reference.argmax(1) == other.argmax(1)).mean()) if len(reference) else 1.0
    return diff, agree


def export(ckpt: str | Path, out: str | Path, *, data: str | Path | None = None, opset: int = OPSET) -> ExportReport:
    """Export ``ckpt`` to ``out`` (fp32 ONNX) and check it; parity worse than `FP32_TOLERANCE` raises."""
    out = Path(out)
    check_writable(out.parent, "export folder")
    model, info = load_checkpoint(ckpt)
    to_onnx(model, info, out, opset=opset)
    x, source = check_inputs(info, data)
    diff, agree = compare(torch_logits(model, x), onnx_logits(out, x))
    log.info("ONNX Runtime vs PyTorch on %s: max |Δ logit| = %.2e, top-1 agreement %.1f%%", source, diff, 100 * agree)
    if not diff < FP32_TOLERANCE:
        raise RuntimeError(f"{out}: ONNX Runtime differs from PyTorch by {diff:.3g} (tolerance {FP32_TOLERANCE})")
    return ExportReport(out, "onnx-fp32", diff, agree, len(x), source, out.stat().st_size, {"opset": opset})


def to_onnx(model: torch.nn.Module, info: CheckpointInfo, out: Path, *, opset: int = OPSET) -> Path:
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
    )
    set_metadata(proto, props)
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(out))
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


def set_metadata(proto: onnx.ModelProto, props: dict[str, str]) -> None:
    """Replace carspotter's keys in ``metadata_props`` (others are kept)."""
    keep = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
