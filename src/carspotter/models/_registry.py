"""Model registry: every architecture registers its public builders here by name.

Builders share one signature convention: ``builder(num_classes=..., in_chans=..., **family_args)``, so training,
fine-tuning and export never special-case a family.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch.nn as nn

from carspotter.errors import UserError

_MODELS: dict[str, Callable[..., nn.Module]] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(fn: F | None = None, *, name: str | None = None) -> Any:
    """Register ``fn`` under ``name`` (default: the function's name). A duplicate name is a programming error."""

    def wrap(f: F) -> F:
        key = name or f.__name__
        if key in _MODELS:
            raise ValueError(f"model {key!r} is already registered")
        _MODELS[key] = f
        return f

    return wrap(fn) if fn is not None else wrap


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` is a shell-style wildcard such as ``ghostnet*``."""
    names = sorted(_MODELS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name``; an unknown name is a `UserError` listing close matches."""
    if name in _MODELS:
        return _MODELS[name]
    if name.startswith("timm/"):
        return _timm_builder(name.removeprefix("timm/"))
    close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UserError(
        f"unknown model {name!r}.{hint} Run `carspotter models` for the full list "
        "(any timm architecture is available as 'timm/<name>')."
    )


def model_arg_names(name: str) -> list[str] | None:
    """Keyword arguments a builder accepts, or None when it takes arbitrary ``**kwargs``."""
    sig = inspect.signature(get_model_builder(name))
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return [p for p in sig.parameters if p not in ("num_classes", "in_chans")]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model: ``create_model('ghostnet_thesis', num_classes=196, hidden_channels=320)``."""
    builder = get_model_builder(name)
    allowed = model_arg_names(name)
    if allowed is not None:
        unknown = sorted(set(kwargs) - set(allowed) - {"num_classes", "in_chans"})
        if unknown:
            raise UserError(f"model {name!r} has no argument(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    return builder(**kwargs)


def _timm_builder(timm_name: str) -> Callable[..., nn.Module]:
    import timm

    if timm_name not in timm.list_models():
        close = difflib.get_close_matches(timm_name, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join('timm/' + c for c in close)}?" if close else ""
        raise UserError(f"timm has no model {timm_name!r}.{hint}")

    def build(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> nn.Module:
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)

    return build
