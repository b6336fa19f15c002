"""`export(ckpt, out, calib=PREPARED)`: static int8 ONNX, calibrated on training images, checked against PyTorch.

ONNX Runtime's ``quantize_static`` in QDQ format with per-channel int8 weights and uint8 activations (MinMax
calibration): on x86 ONNX Runtime fuses the QDQ pairs into QLinearConv/QGemm kernels at load time, which measured
as fast as the QOperator format and keeps the graph readable by other runtimes. Calibration reads training images
through `carspotter.preprocessing`, so the activation ranges are those the deployed model sees.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from carspotter.errors import UserError
from carspotter.export import metadata
from carspotter.export.inputs import prepared_inputs
from carspotter.export.onnx import OPSET, ExportReport, compare, onnx_logits, set_metadata, to_onnx, torch_logits
from carspotter.training.checkpoint import load_checkpoint
from carspotter.writable import check_writable

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 256


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed images to the calibrator in small batches."""

    def __init__(self, images: np.ndarray, input_name: str = "input", batch_size: int = 8) -> None:
        self.batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        self.input_name = input_name
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.batches):
            return None
        self._next += 1
        return {self.input_name: self.batches[self._next - 1]}

    def rewind(self) -> None:
        self._next = 0


def quantize_file(
    fp32_path: Path,
    out: Path,
    calibration: np.ndarray,
    *,
    quant_format: QuantFormat = QuantFormat.QDQ,
    per_channel: bool = True,
) -> Path:
    """Statically quantise an exported fp32 carspotter ONNX file; its metadata is carried over and marked int8."""
    source = onnx.load(str(fp32_path))
    props = {p.key: p.value for p in source.metadata_props}
    values = metadata.parse(props, fp32_path)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            ImageCalibrationReader(calibration, values["input_name"]),
            quant_format=quant_format,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    quantized = onnx.load(str(out))
    runtime = dict(values["runtime"])
    runtime.update(
        precision="int8",
        quantization={
            "tool": "onnxruntime.quantization.quantize_static",
            "format": "QDQ" if quant_format == QuantFormat.QDQ else "QOperator",
            "weights": "int8 per-channel" if per_channel else "int8 per-tensor",
            "activations": "uint8",
            "calibration": f"MinMax over {len(calibration)} training images",
        },
    )
    props["runtime"] = json.dumps(runtime)
    set_metadata(quantized, props)
    onnx.save_model(quantized, str(out))
    return out


def export(
    ckpt: str | Path,
    out: str | Path,
    *,
    calib: str | Path,
    n_calib: int = CALIBRATION_IMAGES,
    opset: int = OPSET,
    quant_format: QuantFormat = QuantFormat.QDQ,
    per_channel: bool = True,
    fp32: str | Path | None = None,
) -> ExportReport:
    """Export ``ckpt`` as int8 ONNX to ``out``, calibrated on ``calib``'s training images, checked on its test split.

    ``fp32``: an fp32 export of the same checkpoint to quantise instead of exporting it again.
    """
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise UserError(f"{out}: an ONNX export's file name must end in .onnx")
    if not (Path(calib) / "manifest.json").is_file():
        raise UserError(f"{calib}: not a complete prepared dataset; --calib needs one (`carspotter prepare RAW OUT`)")
    check_writable(out.parent, "export folder")
    model, info = load_checkpoint(ckpt)
    calibration, _ = prepared_inputs(calib, "train", info.preprocessing, limit=n_calib)
    if not len(calibration):
        raise UserError(f"{calib}: no training images to calibrate on")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = Path(fp32) if fp32 is not None else to_onnx(model, info, Path(tmp) / "fp32.onnx", opset=opset)
        quantize_file(fp32_path, out, calibration, quant_format=quant_format, per_channel=per_channel)
    x, _ = prepared_inputs(calib, "test", info.preprocessing, limit=64)
    source = f"{len(x)} test images of {calib}"
    diff, agree = compare(torch_logits(model, x), onnx_logits(out, x))
    log.info("int8 ONNX Runtime vs PyTorch on %s: max |Δ logit| = %.3f, top-1 agreement %.1f%%", source, diff,
             100 * agree)
    return ExportReport(out, "onnx-int8", diff, agree, len(x), source, out.stat().st_size,
                        {"opset": opset, "calibration_images": len(calibration)})
