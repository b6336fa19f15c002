"""ShuffleNetV2 0.5x/1.0x/1.5x/2.0x (Ma et al., ECCV 2018, https://arxiv.org/abs/1807.11164), torchvision's.

The thesis's ``shuff_v2_x05`` ... ``shuff_v2_x20``. The family has no dropout; ``drop_rate`` (default 0) adds one
before the classifier.
"""

from __future__ import annotations

from torchvision.models import shufflenetv2 as tv_shufflenetv2

from carspotter.models._adapters import TorchvisionAdapter
from carspotter.models._registry import register_model

__all__ = ["shufflenetv2_050", "shufflenetv2_100", "shufflenetv2_150", "shufflenetv2_200"]

_STAGE_OUT_CHANNELS = {
    0.5: [24, 48, 96, 192, 1024],
    1.0: [24, 116, 232, 464, 1024],
    1.5: [24, 176, 352, 704, 1024],
    2.0: [24, 244, 488, 976, 2048],
}


def _create_shufflenetv2(width: float, num_classes: int, in_chans: int, drop_rate: float) -> TorchvisionAdapter:
    channels = _STAGE_OUT_CHANNELS[width]
    model = tv_shufflenetv2.ShuffleNetV2([4, 8, 4], channels, num_classes=num_classes)
    return TorchvisionAdapter(
        model,
        features=["conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"],
        classifier="fc",
        stem="conv1.0",
        num_features=channels[-1],
        in_chans=in_chans,
        drop_rate=drop_rate,
    )


@register_model
def shufflenetv2_050(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> TorchvisionAdapter:
    """ShuffleNetV2 0.5x."""
    return _create_shufflenetv2(0.5, num_classes, in_chans, drop_rate)


@register_model
def shufflenetv2_100(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> TorchvisionAdapter:
    """ShuffleNetV2 1.0x."""
    return _create_shufflenetv2(1.0, num_classes, in_chans, drop_rate)


@register_model
def shufflenetv2_150(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> TorchvisionAdapter:
    """ShuffleNetV2 1.5x."""
    return _create_shufflenetv2(1.5, num_classes, in_chans, drop_rate)


@register_model
def shufflenetv2_200(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> TorchvisionAdapter:
    """ShuffleNetV2 2.0x."""
    return _create_shufflenetv2(2.0, num_classes, in_chans, drop_rate)
