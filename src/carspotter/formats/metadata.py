"""What every exported model carries about itself, as JSON values, so it can be used without its checkpoint.

ONNX files keep these keys in ``metadata_props``; an ExecuTorch program keeps them in a ``.json`` file beside it.
Torch-free: the ONNX serving path reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

from carspotter.errors import UserError
from carspotter.formats.calibration import Calibration
from carspotter.formats.car_names import CarName, car_names
from carspotter.preprocessing import Preprocessing

FORMAT_NAME = "carspotter-exported"
FORMAT_VERSION = 2  # 2: the ``input`` entry; a model may take uint8 pixels (older readers must refuse it)
# Keys written by `describe`; every value is a JSON document.
REQUIRED_KEYS = ("format", "format_version", "class_names", "preprocessing", "channels", "input_name", "output_name")
KEYS = (*REQUIRED_KEYS, "input", "model", "source_checkpoint", "runtime", "classes", "calibration")
PIXELS = "pixels"  # the input of a model that preprocesses itself (`carspotter.export.pixels`)
LAYOUT = "NHWC"  # N×height×width×3, uint8, RGB: what image decoders return (one photo: add a leading axis)


def describe(
    *,
    class_names: list[str],
    preprocessing: Preprocessing,
    model_name: str,
    model_args: dict[str, Any],
    source_checkpoint: dict[str, Any],
    runtime: dict[str, Any],
    classes: list[CarName] | None = None,
    calibration: Calibration | None = None,
    pixels_in_graph: bool = False,
    output_name: str = "logits",
) -> dict[str, str]:
    """The metadata of one exported model: key → JSON text.

    ``pixels_in_graph``: the model takes uint8 RGB pixels and preprocesses them itself (`carspotter.export.pixels`).
    """
    values: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "class_names": list(class_names),
        "preprocessing": preprocessing.to_dict(),  # image_size, grayscale, mean, std, normalize, resize, interpolation
        "channels": preprocessing.channels,
        "model": {"name": model_name, "args": model_args},
        "source_checkpoint": source_checkpoint,  # file name and sha256 of the .ckpt it came from; no local path
        "runtime": runtime,  # exporter, opset / backend, quantisation
        "input_name": PIXELS if pixels_in_graph else "input",
        "input": input_description(preprocessing, in_graph=pixels_in_graph),  # what a client feeds
        "output_name": output_name,
        "classes": [c.to_dict() for c in (classes or car_names(class_names))],  # make, model, year per class
        "calibration": (calibration or Calibration()).to_dict(),  # temperature and "not sure" threshold
    }
    return {k: json.dumps(v) for k, v in values.items()}


def parse(props: dict[str, str], source: str | Path) -> dict[str, Any]:
    """Key → JSON text (as stored) → key → value; a file without carspotter metadata is a `UserError`."""
    if props.get("format") is None:
        raise UserError(f"{source}: not a carspotter export (no carspotter metadata); use `carspotter export`")
    try:
        values = {k: json.loads(v) for k, v in props.items() if k in KEYS}  # other tools add keys of their own
    except json.JSONDecodeError as exc:
        raise UserError(f"{source}: corrupt carspotter metadata ({exc})") from None
    missing = [k for k in REQUIRED_KEYS if k not in values]
    if values["format"] != FORMAT_NAME or missing:
        raise UserError(f"{source}: incomplete carspotter metadata (missing {', '.join(missing) or 'format'})")
    if values["format_version"] > FORMAT_VERSION:
        raise UserError(f"{source}: exported by a newer carspotter (format {values['format_version']}); upgrade")
    return values


def preprocessing_of(values: dict[str, Any]) -> Preprocessing:
    return Preprocessing.from_dict(values["preprocessing"])


def classes_of(values: dict[str, Any]) -> list[CarName]:
    """Each class's make, model and year: stored by newer exports, parsed from the names for older ones."""
    return car_names(values["class_names"], values.get("classes"))


def calibration_of(values: dict[str, Any], source: str | Path) -> Calibration:
    """The stored temperature and threshold (temperature 1 for an export written before calibration)."""
    return Calibration.from_dict(values.get("calibration"), str(source))


def takes_pixels(values: dict[str, Any]) -> bool:
    """Whether the model takes decoded uint8 pixels (preprocessing in the graph) rather than normalised floats."""
    return bool(values.get("input", {}).get("preprocessing_in_graph", False))


def doc_string(values: dict[str, Any]) -> str:
    """A short README for the model file (ONNX ``doc_string``): what it is and how to feed it, for any stack."""
    prep = values["preprocessing"]
    h, w = prep["image_size"]
    names = values["class_names"]
    if takes_pixels(values):
        feed = (
            f"Input '{values['input_name']}': uint8 RGB pixels, layout NHWC (batch, height, width, 3), any height "
            f"and width (one photo: add a leading batch axis). The graph resizes to {h}x{w} (bilinear with "
            f"antialias, as PIL), scales to [0, 1] and normalises itself: feed decoded pixels and nothing else."
        )
    else:
        norm = f"subtract mean {prep['mean']} and divide by std {prep['std']}" if prep["normalize"] else "no mean/std"
        feed = (
            f"Input '{values['input_name']}': float32 NCHW (batch, {values['channels']}, {h}, {w}), "
            f"{'grayscale' if prep['grayscale'] else 'RGB'}. Resize the photo to {h}x{w} (stretch, bilinear with "
            f"antialias as PIL's Image.resize), scale pixels to [0, 1], then {norm}."
        )
    return (
        f"carspotter car make/model/year classifier ({values['model']['name']}, {len(names)} classes). {feed} "
        f"Output '{values['output_name']}': logits (batch, {len(names)}); softmax(logits / temperature) gives "
        f"probabilities (temperature {values.get('calibration', {}).get('temperature', 1.0):.4g}, metadata entry "
        f"'calibration', with the 'not sure' threshold min_confidence); class "
        f"names in the metadata entry 'class_names' (JSON), in output order. Metadata key 'input' says all this "
        f"as JSON."
    )


def sidecar_path(model_path: str | Path) -> Path:
    """Where a format without metadata fields (ExecuTorch) keeps it: ``model.pte`` → ``model.pte.json``."""
    path = Path(model_path)
    return path.with_name(path.name + ".json")


def write_sidecar(model_path: str | Path, props: dict[str, str]) -> Path:
    path = sidecar_path(model_path)
    path.write_text(json.dumps({k: json.loads(v) for k, v in props.items()}, indent=2) + "\n")
    return path


def read_sidecar(model_path: str | Path) -> dict[str, Any]:
    path = sidecar_path(model_path)
    if not path.is_file():
        raise UserError(f"{path}: missing; an exported .pte needs the .json written beside it by `carspotter export`")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: corrupt metadata ({exc})") from None
    return parse({k: json.dumps(v) for k, v in raw.items()}, path)


def set_metadata(proto: onnx.ModelProto, props: dict[str, str]) -> None:
    """Replace carspotter's keys in ``metadata_props`` (others are kept) and describe the model in ``doc_string``."""
    keep = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = doc_string(parse(props, "export"))


def input_description(prep: Preprocessing, *, in_graph: bool) -> dict:
    """What a client must feed the model: the ``input`` metadata entry, readable without carspotter."""
    h, w = prep.image_size
    resize = {
        "to": [h, w],
        "aspect": "stretched, aspect ratio not kept",
        "filter": prep.interpolation,
        "antialias": True,
        "coordinates": "half_pixel",
        "reference": "PIL Image.resize on the uint8 image",
    }
    if in_graph:
        return {
            "layout": LAYOUT,
            "dtype": "uint8",
            "channel_order": "RGB",
            "pixel_range": [0, 255],
            "shape": ["batch", "height", "width", 3],
            "preprocessing_in_graph": True,
            "graph_does": {
                "resize": resize,
                "round_to": "uint8 values",
                "scale": "x / 255",
                "grayscale": prep.grayscale,
                "normalize": _normalisation(prep),
            },
        }
    return {
        "layout": "NCHW",
        "dtype": "float32",
        "channel_order": "L" if prep.grayscale else "RGB",
        "shape": ["batch", prep.channels, h, w],
        "preprocessing_in_graph": False,
        "client_must": {
            "resize": resize,
            "round_to": "uint8 values",
            "scale": "x / 255 (to [0, 1])",
            "grayscale": prep.grayscale,
            "normalize": _normalisation(prep),
        },
    }


def _normalisation(prep: Preprocessing) -> str | dict:
    return {"formula": "(x - mean) / std", "mean": list(prep.mean), "std": list(prep.std)} if prep.normalize else "none"
