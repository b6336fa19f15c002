"""Weight files a user brings (``model.pretrained``): read, unwrapped to their tensors, and loaded into a model.

A plain timm or torchvision state dict (pickled or ``.safetensors``), one wrapped as ``{"state_dict": ...}`` /
``{"model": ...}``, a carspotter checkpoint, or ``hf-hub:OWNER/NAME`` (`carspotter.models.hub`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from carspotter.errors import UserError
from carspotter.formats.checkpoint import torch_load
from carspotter.models.hub import fetch_weights, is_hub_name
from carspotter.models.pretrained import PretrainedReport, load_pretrained

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")


@dataclass(frozen=True)
class WeightsFile:
    """The tensors of a weights file, and what it says about them (a carspotter checkpoint names its classes)."""

    path: Path
    tensors: dict[str, torch.Tensor]
    source: str  # a description for messages: "state dict", "carspotter checkpoint (ghostnet_100, 196 classes)"
    num_classes: int | None = None
    class_names: list[str] | None = None


def read_weights(path: str | Path) -> WeightsFile:
    """Any weights ``model.pretrained`` may name, unwrapped to its tensors: a local file (a state dict, pickled or
    ``.safetensors``, or a carspotter checkpoint) or ``hf-hub:OWNER/NAME`` (`carspotter.models.hub`)."""
    if is_hub_name(path):
        path = fetch_weights(str(path))
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"{path}: pretrained weights file not found (model.pretrained): give a local timm/torchvision state "
            "dict, a carspotter checkpoint, or hf-hub:OWNER/NAME (e.g. hf-hub:timm/ghostnet_100.in1k)"
        )
    obj = _read_safetensors(path) if path.suffix == ".safetensors" else torch_load(path, "weights file")
    source, num_classes, class_names = "state dict", None, None
    if isinstance(obj, Mapping) and isinstance(obj.get("carspotter"), Mapping):
        meta = obj["carspotter"]
        model = meta.get("model", {}) if isinstance(meta.get("model"), Mapping) else {}
        num_classes = model.get("num_classes")
        names = meta.get("class_names")
        class_names = [str(n) for n in names] if isinstance(names, list) else None
        source = f"carspotter checkpoint ({model.get('name', '?')}, {num_classes} classes)"
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: expected a state dict (name -> tensor), found a {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError(f"{path}: holds no tensors; expected a state dict or a carspotter checkpoint")
    return WeightsFile(path, tensors, source, num_classes, class_names)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({exc})") from None


def init_from_weights(model: nn.Module, path: str | Path, class_names: list[str] | None = None) -> PretrainedReport:
    """``model.pretrained``: load the file's weights into ``model`` (in place); its classifier stays fresh when the
    file's classes are not ``class_names``."""
    weights = read_weights(path)
    return load_pretrained(
        model,
        weights.tensors,
        name=str(path) if is_hub_name(path) else str(weights.path),
        source=weights.source,
        source_num_classes=weights.num_classes,
        source_class_names=weights.class_names,
        class_names=class_names,
    )
