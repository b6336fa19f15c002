"""Architectures (one file per family) behind one registry. Models know nothing of files, data or training."""

from carspotter.models import ghostnet  # noqa: F401  (registers the GhostNet variants)
from carspotter.models._registry import create_model, get_model_builder, list_models, model_arg_names, register_model

__all__ = ["create_model", "get_model_builder", "list_models", "model_arg_names", "register_model"]
