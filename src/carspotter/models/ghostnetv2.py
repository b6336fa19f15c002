"""GhostNetV2 (Tang et al., NeurIPS 2022, https://arxiv.org/abs/2211.12905), timm's implementation.

Beyond the thesis: GhostNet with DFC attention, for comparison with our own GhostNet (`carspotter.models.ghostnet`).
"""

from __future__ import annotations

import torch.nn as nn

from carspotter.models._adapters import create_timm_model
from carspotter.models._registry import register_model

__all__ = ["ghostnetv2_100", "ghostnetv2_130", "ghostnetv2_160"]


@register_model
def ghostnetv2_100(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2) -> nn.Module:
    """GhostNetV2 1.0x."""
    return create_timm_model("ghostnetv2_100", num_classes, in_chans, drop_rate)


@register_model
def ghostnetv2_130(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2) -> nn.Module:
    """GhostNetV2 1.3x."""
    return create_timm_model("ghostnetv2_130", num_classes, in_chans, drop_rate)


@register_model
def ghostnetv2_160(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2) -> nn.Module:
    """GhostNetV2 1.6x."""
    return create_timm_model("ghostnetv2_160", num_classes, in_chans, drop_rate)
