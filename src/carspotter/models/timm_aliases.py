"""The architectures carspotter takes from timm under its own names, as one table: name → (timm name, default
arguments, description). Each becomes a registered builder that accepts exactly those arguments.

- EfficientNet-B0 ... B7 (Tan & Le, ICML 2019, https://arxiv.org/abs/1905.11946): the thesis's ``eff_b0`` ...
  ``eff_b7``. Each variant's default ``drop_rate`` is the paper's; its native resolution is in its description but,
  as in the thesis, carspotter feeds every model the same image size.
- MobileNetV2 (Sandler et al., 2018): the thesis's ``mob_v2`` (torchvision's there; timm's ``mobilenetv2_100`` is the
  same network, 3.5M parameters at 1000 classes, and comes with the head API). MobileNetV3 large/small (Howard et
  al., 2019) go beyond the thesis.
- GhostNetV2 (Tang et al., NeurIPS 2022, https://arxiv.org/abs/2211.12905): GhostNet with DFC attention, for
  comparison with our own GhostNet (`carspotter.models.ghostnet`).

Any other timm architecture is available as ``timm/<name>`` with timm's own defaults (`carspotter.models._registry`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch.nn as nn

from carspotter.models._adapters import create_timm_model
from carspotter.models._registry import register_model

TIMM_ALIASES: dict[str, tuple[str, dict[str, Any], str]] = {
    "efficientnet_b0": (
        "efficientnet_b0",
        {"drop_rate": 0.2, "drop_path_rate": 0.0},
        "EfficientNet-B0 (native resolution 224)",
    ),
    "efficientnet_b1": (
        "efficientnet_b1",
        {"drop_rate": 0.2, "drop_path_rate": 0.0},
        "EfficientNet-B1 (native resolution 240)",
    ),
    "efficientnet_b2": (
        "efficientnet_b2",
        {"drop_rate": 0.3, "drop_path_rate": 0.0},
        "EfficientNet-B2 (native resolution 260)",
    ),
    "efficientnet_b3": (
        "efficientnet_b3",
        {"drop_rate": 0.3, "drop_path_rate": 0.0},
        "EfficientNet-B3 (native resolution 300)",
    ),
    "efficientnet_b4": (
        "efficientnet_b4",
        {"drop_rate": 0.4, "drop_path_rate": 0.0},
        "EfficientNet-B4 (native resolution 380)",
    ),
    "efficientnet_b5": (
        "efficientnet_b5",
        {"drop_rate": 0.4, "drop_path_rate": 0.0},
        "EfficientNet-B5 (native resolution 456)",
    ),
    "efficientnet_b6": (
        "efficientnet_b6",
        {"drop_rate": 0.5, "drop_path_rate": 0.0},
        "EfficientNet-B6 (native resolution 528)",
    ),
    "efficientnet_b7": (
        "efficientnet_b7",
        {"drop_rate": 0.5, "drop_path_rate": 0.0},
        "EfficientNet-B7 (native resolution 600)",
    ),
    "mobilenetv2_100": ("mobilenetv2_100", {"drop_rate": 0.2}, "MobileNetV2 1.0x"),
    "mobilenetv3_large_100": ("mobilenetv3_large_100", {"drop_rate": 0.2}, "MobileNetV3-Large 1.0x"),
    "mobilenetv3_small_100": ("mobilenetv3_small_100", {"drop_rate": 0.2}, "MobileNetV3-Small 1.0x"),
    "ghostnetv2_100": ("ghostnetv2_100", {"drop_rate": 0.2}, "GhostNetV2 1.0x"),
    "ghostnetv2_130": ("ghostnetv2_130", {"drop_rate": 0.2}, "GhostNetV2 1.3x"),
    "ghostnetv2_160": ("ghostnetv2_160", {"drop_rate": 0.2}, "GhostNetV2 1.6x"),
}


def _alias_builder(timm_name: str, defaults: dict[str, Any], description: str) -> Any:
    def build(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> nn.Module:
        args = {**defaults, **kwargs}
        return create_timm_model(timm_name, num_classes, in_chans, **args)

    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d, annotation=int)
              for n, d in (("num_classes", 1000), ("in_chans", 3))]  # fmt: skip
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=type(d))
               for n, d in defaults.items()]  # fmt: skip
    build.__signature__ = inspect.Signature(params)  # what `create_model` checks unknown arguments against
    build.__doc__ = f"{description}."
    return build


for _name, (_timm_name, _defaults, _description) in TIMM_ALIASES.items():
    register_model(_alias_builder(_timm_name, _defaults, _description), name=_name)
