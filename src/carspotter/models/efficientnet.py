"""EfficientNet-B0 ... B7 (Tan & Le, ICML 2019, https://arxiv.org/abs/1905.11946), timm's implementation.

The thesis's ``eff_b0`` ... ``eff_b7``. Each variant's default ``drop_rate`` is the paper's; its native resolution
(224 ... 600) is in the docstring but, as in the thesis, carspotter feeds every model the same image size.
"""

from __future__ import annotations

import torch.nn as nn

from carspotter.models._adapters import create_timm_model
from carspotter.models._registry import register_model

__all__ = [
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
]


def _create_efficientnet(
    variant: int, num_classes: int, in_chans: int, drop_rate: float, drop_path_rate: float
) -> nn.Module:
    return create_timm_model(
        f"efficientnet_b{variant}", num_classes, in_chans, drop_rate, drop_path_rate=drop_path_rate
    )


@register_model
def efficientnet_b0(
    num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2, drop_path_rate: float = 0.0
) -> nn.Module:
    """EfficientNet-B0 (native resolution 224)."""
    return _create_efficientnet(0, num_classes, in_chans, drop_rate, drop_path_rate)


@register_model
def efficientnet_b1(
    num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2, drop_path_rate: float = 0.0
) -> nn.Module:
    """EfficientNet-B1 (native resolution 240)."""
    return _create_efficientnet(1, num_classes, in_chans, drop_rate, drop_path_rate)


@register_model
def efficientnet_b2(
    num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.3, drop_path_rate: float = 0.0
) -> nn.Module:
    """EfficientNet-B2 (native resolution 260)."""
    return _create_efficientnet(2, num_classes, in_chans, drop_rate, drop_path_rate)


@register_model
def efficientnet_b3(
    num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.3, drop_path_rate: float = 0.0
) -> nn.Module:
    """EfficientNet-B3 (native resolution 300)."""
    return _create_efficientnet(3, num_classes, in_chans, drop_rate, drop_path_rate)


@register_model
def efficientnet_b4(
    num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.4, drop_path_rate: float = 0.0
) -> nn.Module:
    """EfficientNet-B4 (native resolution 380)."""
    return _create_efficientnet(4, num_classes, in_chans, drop_rate, drop_path_rate)


@register_model
def efficientnet_b5(
    num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.4, drop_path_rate: float = 0.0
) -> nn.Module:
    """EfficientNet-B5 (native resolution 456)."""
    return _create_efficientnet(5, num_classes, in_chans, drop_rate, drop_path_rate)


@register_model
def efficientnet_b6(
    num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5, drop_path_rate: float = 0.0
) -> nn.Module:
    """EfficientNet-B6 (native resolution 528)."""
    return _create_efficientnet(6, num_classes, in_chans, drop_rate, drop_path_rate)


@register_model
def efficientnet_b7(
    num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5, drop_path_rate: float = 0.0
) -> nn.Module:
    """EfficientNet-B7 (native resolution 600)."""
    return _create_efficientnet(7, num_classes, in_chans, drop_rate, drop_path_rate)
