"""SqueezeNet 1.0 / 1.1 (Iandola et al., 2016, https://arxiv.org/abs/1602.07360), torchvision's implementation.

The thesis's ``sq_10``/``sq_11``. The head is SqueezeNet's own: dropout, a 1x1 conv to the classes, ReLU, global pool.
"""

from __future__ import annotations

from torchvision.models import squeezenet as tv_squeezenet

from carspotter.models._adapters import TorchvisionAdapter
from carspotter.models._registry import register_model

__all__ = ["squeezenet1_0", "squeezenet1_1"]


def _create_squeezenet(version: str, num_classes: int, in_chans: int, drop_rate: float) -> TorchvisionAdapter:
    model = tv_squeezenet.SqueezeNet(version=version, num_classes=num_classes, dropout=drop_rate)
    return TorchvisionAdapter(
        model,
        features=["features"],
        classifier="classifier.1",
        stem="features.0",
        num_features=512,
        in_chans=in_chans,
        head="conv",
    )


@register_model
def squeezenet1_0(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5) -> TorchvisionAdapter:
    """SqueezeNet 1.0 (7x7 stem, the paper's)."""
    return _create_squeezenet("1_0", num_classes, in_chans, drop_rate)


@register_model
def squeezenet1_1(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5) -> TorchvisionAdapter:
    """SqueezeNet 1.1 (3x3 stem, earlier pooling: ~2.4x fewer MACs than 1.0 at the same accuracy)."""
    return _create_squeezenet("1_1", num_classes, in_chans, drop_rate)
