"""Initialise a model from a local weights file (``model.pretrained: PATH``); carspotter never downloads weights.

Accepted files: a plain timm or torchvision state dict, one wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``,
or a carspotter checkpoint (Lightning ``.ckpt``: weights under ``state_dict`` with the ``model.`` prefix, metadata
under ``carspotter``). Tensors are matched by name after stripping a common prefix. The classifier is left freshly
initialised when the file's class count differs (fine-tuning a Stanford Cars checkpoint on a user's own classes);
a first conv saved for RGB is summed to grayscale (and back); any other shape mismatch means the file belongs to
another architecture and is an error rather than a silent partial load.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from carspotter.errors import UserError

__all__ = ["PretrainedReport", "load_pretrained"]

log = logging.getLogger(__name__)

_PREFIXES = ("", "model.", "module.", "model.module.", "_orig_mod.", "model._orig_mod.")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")


@dataclass
class PretrainedReport:
    """What `load_pretrained` did, tensor by tensor (names are the model's ``state_dict`` keys)."""

    path: Path
    source: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    source_num_classes: int | None = None

    def __str__(self) -> str:
        parts = [f"{self.source}: loaded {len(self.loaded)} tensors"]
        if self.adapted:
            parts.append(f"adapted to the input channels: {', '.join(self.adapted)}")
        if self.new:
            why = f" (file has {self.source_num_classes} classes)" if self.skipped else ""
            parts.append(f"new{why}: {_short_list(self.new)}")
        if self.unused:
            parts.append(f"unused from the file: {_short_list(self.unused)}")
        return "; ".join(parts)


def _short_list(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def _read(path: Path) -> Any:
    if not path.is_file():
        raise UserError(
            f"{path}: pretrained weights file not found (model.pretrained). carspotter never downloads weights: "
            "give a local timm/torchvision state dict or a carspotter checkpoint."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with arbitrary objects, not a torch file at all
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: cannot read as PyTorch weights ({first_line[:200]})") from exc


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], str, int | None]:
    """The file's tensors, a description of the file, and the class count it states (carspotter checkpoints)."""
    source = "state dict"
    num_classes = None
    if isinstance(obj, Mapping) and isinstance(obj.get("carspotter"), Mapping):
        meta = obj["carspotter"].get("model", {})
        num_classes = meta.get("num_classes")
        source = f"carspotter checkpoint ({meta.get('name', '?')}, {num_classes} classes)"
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: expected a state dict (name -> tensor), found a {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError(f"{path}: holds no tensors; expected a state dict or a carspotter checkpoint")
    return tensors, source, num_classes


def _strip_prefix(tensors: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Remove the prefix (``model.``, ``module.``...) under which most file names become model names."""
    best = max(_PREFIXES, key=lambda p: sum(k.startswith(p) and k[len(p) :] in model_keys for k in tensors))
    return {k[len(best) :]: v for k, v in tensors.items() if k.startswith(best)}


def _classifier_keys(model: nn.Module, model_keys: set[str]) -> set[str]:
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is None:
        return set()
    classifier = get_classifier()
    for name, module in model.named_modules():
        if module is classifier and name:
            return {k for k in model_keys if k.startswith(name + ".")}
    return set()


def _adapt_input_channels(weight: torch.Tensor, target: torch.Size) -> torch.Tensor | None:
    """A first-conv weight saved for 3 (or 1) input channels, made to fit 1 (or 3); None if it is not that case."""
    if weight.ndim != 4 or len(target) != 4 or weight.shape[0] != target[0] or weight.shape[2:] != target[2:]:
        return None
    if weight.shape[1] == 3 and target[1] == 1:
        return weight.sum(dim=1, keepdim=True)
    if weight.shape[1] == 1 and target[1] == 3:
        return weight.repeat(1, 3, 1, 1) / 3
    return None


def load_pretrained(model: nn.Module, path: str | Path) -> PretrainedReport:
    """Load the weights in ``path`` into ``model`` (in place) and say which tensors loaded and which stayed new."""
    path = Path(path).expanduser()
    tensors, source, source_classes = _unwrap(_read(path), path)
    target = model.state_dict()
    model_keys = set(target)
    tensors = _strip_prefix(tensors, model_keys)
    classifier_keys = _classifier_keys(model, model_keys)

    report = PretrainedReport(path=path, source=source, source_num_classes=source_classes)
    to_load: dict[str, torch.Tensor] = {}
    mismatched: list[str] = []
    for key, value in target.items():
        if key not in tensors:
            report.new.append(key)
            continue
        found = tensors[key]
        if found.shape == value.shape:
            to_load[key] = found
            report.loaded.append(key)
        elif key in classifier_keys:
            report.skipped.append(key)
            report.new.append(key)
            if found.ndim >= 1 and report.source_num_classes is None:
                report.source_num_classes = int(found.shape[0])
        elif (adapted := _adapt_input_channels(found, value.shape)) is not None:
            to_load[key] = adapted
            report.adapted.append(key)
        else:
            mismatched.append(f"{key}: file {tuple(found.shape)} vs model {tuple(value.shape)}")
    report.unused = sorted(set(tensors) - model_keys)

    if mismatched:
        raise UserError(
            f"{path}: weights do not fit this model: {len(mismatched)} tensors have other shapes "
            f"(e.g. {'; '.join(mismatched[:3])}). Were they saved from another architecture or width?"
        )
    if not report.loaded:
        example = next(iter(tensors))
        raise UserError(
            f"{path}: no tensor name matches this model (the file has e.g. {example!r}, the model expects e.g. "
            f"{next(iter(target))!r}). Were the weights saved from another architecture?"
        )
    model.load_state_dict(to_load, strict=False)
    backbone_new = [k for k in report.new if k not in classifier_keys]
    if backbone_new:
        log.warning("%s: %d model tensors are not in the file and keep their initialisation", path, len(backbone_new))
    return report
