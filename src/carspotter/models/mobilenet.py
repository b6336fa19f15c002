"""MobileNetV2 (Sandler et al., 2018) and MobileNetV3 large/small (Howard et al., 2019), timm's implementations.

MobileNetV2 is the thesis's ``mob_v2`` (torchvision's there; timm's ``mobilenetv2_100`` is the same network, 3.5M
parameters at 1000 classes, and comes with the head API). MobileNetV3 goes beyond the thesis.
"""

from __future__ import annotations

import torch.nn as nn

from carspotter.models._adapters import create_timm_model
from carspotter.models._registry import register_model

__all__ = ["mobilenetv2_100", "mobilenetv3_large_100", "mobilenetv3_small_100"]


@register_model
def mobilenetv2_100(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2) -> nn.Module:
    """MobileNetV2 1.0x."""
    return create_timm_model("mobilenetv2_100", num_classes, in_chans, drop_rate)


@register_model
def mobilenetv3_large_100(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2) -> nn.Module:
    """MobileNetV3-Large 1.0x."""
    return create_timm_model("mobilenetv3_large_100", num_classes, in_chans, drop_rate)


@register_model
def mobilenetv3_small_100(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2) -> nn.Module:
    """MobileNetV3-Small 1.0x."""
    return create_timm_model("mobilenetv3_small_100", num_classes, in_chans, drop_rate)
