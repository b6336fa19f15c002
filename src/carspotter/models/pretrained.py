"""Initialise a model from another model's tensors (``model.pretrained``; the file is read by
`carspotter.models.weights.read_weights`, this module knows nothing of files).

Tensors are matched by name after stripping a common prefix. The classifier is left freshly initialised when the
source's classes are not the model's (another count: fine-tuning a Stanford Cars checkpoint on a user's own classes;
the same count under other names); a first conv saved for RGB is summed to grayscale (and back); any other shape
mismatch means the tensors belong to another architecture and is an error rather than a silent partial load.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from carspotter.errors import UserError

__all__ = ["PretrainedReport", "load_pretrained"]

log = logging.getLogger(__name__)

_PREFIXES = ("", "model.", "module.", "model.module.", "_orig_mod.", "model._orig_mod.")


@dataclass
class PretrainedReport:
    """What `load_pretrained` did, tensor by tensor (names are the model's ``state_dict`` keys)."""

    name: str  # the weights' file, for messages
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


def load_pretrained(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    *,
    name: str,
    source: str = "state dict",
    source_num_classes: int | None = None,
    source_class_names: list[str] | None = None,
    class_names: list[str] | None = None,
) -> PretrainedReport:
    """Load ``tensors`` into ``model`` (in place) and say which tensors loaded and which stayed new.

    With the same class count but other ``class_names`` than the source's, the loaded classifier is re-initialised
    (right for continuing on the same classes, wrong for a user's own ones).
    """
    target = model.state_dict()
    model_keys = set(target)
    tensors = _strip_prefix(tensors, model_keys)
    classifier_keys = _classifier_keys(model, model_keys)

    report = PretrainedReport(name=name, source=source, source_num_classes=source_num_classes)
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
            f"{name}: weights do not fit this model: {len(mismatched)} tensors have other shapes "
            f"(e.g. {'; '.join(mismatched[:3])}). Were they saved from another architecture or width?"
        )
    if not report.loaded:
        example = next(iter(tensors))
        raise UserError(
            f"{name}: no tensor name matches this model (the file has e.g. {example!r}, the model expects e.g. "
            f"{next(iter(target))!r}). Were the weights saved from another architecture?"
        )
    model.load_state_dict(to_load, strict=False)
    if (
        source_class_names is not None
        and class_names is not None
        and report.source_num_classes == len(class_names)
        and list(source_class_names) != list(class_names)
    ):
        model.reset_classifier(len(class_names))
        report.new += [k for k in report.loaded if k in classifier_keys]
        report.loaded = [k for k in report.loaded if k not in classifier_keys]
        log.info("%s: classifier re-initialised (the file's %d classes are not this dataset's)", name, len(class_names))
    backbone_new = [k for k in report.new if k not in classifier_keys]
    if backbone_new:
        log.warning("%s: %d model tensors are not in the file and keep their initialisation", name, len(backbone_new))
    return report
