"""Checkpoints and weight files: the one place that reads what training writes, and the weights users bring.

A carspotter checkpoint is Lightning's ``.ckpt``: ``ckpt["state_dict"]`` holds the weights under the ``model.``
prefix (the Lightning module's attribute) and ``ckpt["carspotter"]`` what `CheckpointInfo.describe` writes (model
name and arguments, class names, preprocessing, the resolved config), so evaluate, predict and export rebuild the
model from the file alone. `read_weights` reads any weights file ``model.pretrained`` may name: a plain timm or
torchvision state dict, one wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``, or a carspotter checkpoint.
Every file is read with ``weights_only=True``.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from carspotter.config import Config, parse_config
from carspotter.errors import UserError
from carspotter.models import create_model
from carspotter.models.pretrained import PretrainedReport, load_pretrained
from carspotter.preprocessing import Preprocessing
from carspotter.weights_hub import fetch_weights, is_hub_name

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
STATE_PREFIX = "model."
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")

# Lightning stores MultiStepLR's milestones as a Counter; allow it so checkpoints load with weights_only=True.
torch.serialization.add_safe_globals([collections.Counter])


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says about its model. ``config`` is None when the run's config no longer validates (a
    checkpoint from an older carspotter): the model, classes and preprocessing are all that inference needs."""

    model_name: str
    model_args: dict[str, Any]
    num_classes: int
    in_chans: int
    class_names: list[str]
    preprocessing: Preprocessing
    config: Config | None
    path: Path

    def describe(self) -> dict[str, Any]:
        """``ckpt["carspotter"]``, as training writes it."""
        return {
            "format_version": FORMAT_VERSION,
            "model": {
                "name": self.model_name,
                "args": self.model_args,
                "num_classes": self.num_classes,
                "in_chans": self.in_chans,
            },
            "class_names": list(self.class_names),
            "preprocessing": self.preprocessing.to_dict(),
            "config": {} if self.config is None else self.config.to_dict(),
        }


def _torch_load(path: Path, what: str) -> Any:
    """``torch.load(weights_only=True)``; a missing file or one that is not a safe torch file is a `UserError`."""
    if not path.is_file():
        raise UserError(f"{path}: no such {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a file we can read"
        first_line = str(exc).strip().splitlines()[0].split(". ")[0][:160] if str(exc).strip() else ""
        raise UserError(f"{path}: not a readable PyTorch {what} ({exc.__class__.__name__}: {first_line})") from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A carspotter checkpoint as a dict, read safely; a missing, foreign or hostile file is a `UserError`."""
    path = Path(path)
    ckpt = _torch_load(path, "checkpoint")
    if not isinstance(ckpt, dict) or "carspotter" not in ckpt or "state_dict" not in ckpt:
        raise UserError(f"{path}: not a carspotter checkpoint (no model description inside)")
    return ckpt


def checkpoint_info(ckpt: dict[str, Any], path: str | Path) -> CheckpointInfo:
    meta = ckpt["carspotter"]
    model = meta["model"]
    config = None
    if meta.get("config"):
        try:
            config = parse_config(meta["config"], f"{path} (its run's config)")
        except UserError as exc:
            log.warning("%s; the checkpoint is used without it", exc)
    return CheckpointInfo(
        model_name=model["name"],
        model_args=dict(model["args"]),
        num_classes=int(model["num_classes"]),
        in_chans=int(model["in_chans"]),
        class_names=list(meta["class_names"]),
        preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
        config=config,
        path=Path(path),
    )


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    return checkpoint_info(read_checkpoint(path), path)


def model_state_dict(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's own weights, without the Lightning module's ``model.`` prefix."""
    return {k.removeprefix(STATE_PREFIX): v for k, v in ckpt["state_dict"].items() if k.startswith(STATE_PREFIX)}


def load_checkpoint(path: str | Path) -> tuple[nn.Module, CheckpointInfo]:
    """Rebuild the network from the checkpoint alone, in eval mode, on CPU."""
    ckpt = read_checkpoint(path)
    info = checkpoint_info(ckpt, path)
    model = create_model(info.model_name, num_classes=info.num_classes, in_chans=info.in_chans, **info.model_args)
    model.load_state_dict(model_state_dict(ckpt), strict=True)
    return model.eval(), info


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
    ``.safetensors``, or a carspotter checkpoint) or ``hf-hub:OWNER/NAME`` (`carspotter.weights_hub`)."""
    if is_hub_name(path):
        path = fetch_weights(str(path))
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"{path}: pretrained weights file not found (model.pretrained): give a local timm/torchvision state "
            "dict, a carspotter checkpoint, or hf-hub:OWNER/NAME (e.g. hf-hub:timm/ghostnet_100.in1k)"
        )
    obj = _read_safetensors(path) if path.suffix == ".safetensors" else _torch_load(path, "weights file")
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
