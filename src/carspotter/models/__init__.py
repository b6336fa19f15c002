"""Architectures (one file per family) behind one registry. Models know nothing of files, data or training."""

# Importing a family's module registers its variants.
from carspotter.models import (  # noqa: F401
    ghostnet,
    hardnet,
    shufflenetv2,
    squeezenet,
    squeezenext,
    timm_aliases,
)
from carspotter.models._registry import create_model, get_model_builder, list_models, model_arg_names, register_model

__all__ = ["create_model", "get_model_builder", "list_models", "model_arg_names", "register_model"]
