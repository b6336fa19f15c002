"""HarDNet (Chao et al., ICCV 2019, https://arxiv.org/abs/1909.00948): carspotter's implementation.

Harmonic dense blocks as in the paper (Sec. 3.1) and its reference code (PingoLH, the thesis's source): layer ``l``
takes the outputs of layers ``l - 2**n`` for every ``2**n`` dividing ``l``; its width is
``growth_rate * grmul**(n_links - 1)`` rounded to even; the block outputs the odd layers and the last one. Each block
is followed by a 1x1 "transition" conv and, where marked, a 2x down-sampling (max-pool, or a depthwise stride-2 conv
in the ``ds`` variants). Convs are conv + BN + ReLU6; ``ds`` variants use 1x1 conv + depthwise 3x3
("CombConv") inside blocks. Module names follow the reference code (``base.N``) up to the head, which is carspotter's
shared one (`carspotter.models.head`). Parameters at 1000 classes: 3,488,228 / 4,180,602 / 17,565,348 / 36,670,212
(39DS / 68DS / 68 / 85), the reference README's 3.5 / 4.2 / 17.6 / 36.7 M.

pytorchcv has the same four networks with the same parameter counts, but they end in a fixed 7x7 average pool (64 px
and 227 px inputs fail) and have no ``forward_features``/``reset_classifier``.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn as nn

from carspotter.models._registry import register_model
from carspotter.models.head import PooledLinearClassifier

__all__ = ["HarDNet", "hardnet39ds", "hardnet68", "hardnet68ds", "hardnet85"]

# arch: (stem channels, grmul, growth rates, layers per block, transition widths, downsample after block?, drop_rate)
_ARCHS: dict[int, dict] = {
    39: dict(
        stem=(24, 48), grmul=1.6, gr=(16, 20, 64, 160), n_layers=(4, 16, 8, 4), ch=(96, 320, 640, 1024),
        down=(1, 1, 1, 0), drop_rate=0.1,
    ),
    68: dict(
        stem=(32, 64), grmul=1.7, gr=(14, 16, 20, 40, 160), n_layers=(8, 16, 16, 16, 4), ch=(128, 256, 320, 640, 1024),
        down=(1, 0, 1, 1, 0), drop_rate=0.1,
    ),
    85: dict(
        stem=(48, 96), grmul=1.7, gr=(24, 24, 28, 36, 48, 256), n_layers=(8, 16, 16, 16, 16, 4),
        ch=(192, 256, 320, 480, 720, 1280), down=(1, 0, 1, 0, 1, 0), drop_rate=0.2,
    ),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------------


class ConvLayer(nn.Sequential):
    """Conv + BN + ReLU6."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.add_module("conv", nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False))
        self.add_module("norm", nn.BatchNorm2d(out_chs))
        self.add_module("relu", nn.ReLU6(inplace=True))


class DWConvLayer(nn.Sequential):
    """Depthwise 3x3 conv + BN (no activation)."""

    def __init__(self, chs: int, stride: int = 1) -> None:
        super().__init__()
        self.add_module("dwconv", nn.Conv2d(chs, chs, 3, stride, 1, groups=chs, bias=False))
        self.add_module("norm", nn.BatchNorm2d(chs))


class CombConvLayer(nn.Sequential):
    """1x1 ConvLayer + depthwise 3x3: the ``ds`` variants' cheaper 3x3 conv."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.add_module("layer1", ConvLayer(in_chs, out_chs, kernel_size=1))
        self.add_module("layer2", DWConvLayer(out_chs))


@cache
def _hard_link(layer: int, base_chs: int, growth_rate: int, grmul: float) -> tuple[int, int, tuple[int, ...]]:
    """(output width, input width, input layers) of layer ``layer`` of a harmonic dense block (0 = block input)."""
    if layer == 0:
        return base_chs, 0, ()
    out_chs: float = growth_rate
    links = []
    for i in range(10):
        dv = 2**i
        if layer % dv == 0:
            links.append(layer - dv)
            if i > 0:
                out_chs *= grmul
    out = int(int(out_chs + 1) / 2) * 2
    in_chs = sum(_hard_link(k, base_chs, growth_rate, grmul)[0] for k in links)
    return out, in_chs, tuple(links)


class HarDBlock(nn.Module):
    def __init__(self, in_chs: int, growth_rate: int, grmul: float, n_layers: int, dwconv: bool = False) -> None:
        super().__init__()
        self.links: list[tuple[int, ...]] = []
        layers = []
        self.out_channels = 0
        for i in range(n_layers):
            out_chs, layer_in_chs, link = _hard_link(i + 1, in_chs, growth_rate, grmul)
            self.links.append(link)
            layers.append(CombConvLayer(layer_in_chs, out_chs) if dwconv else ConvLayer(layer_in_chs, out_chs))
            if i % 2 == 0 or i == n_layers - 1:
                self.out_channels += out_chs
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x]
        for link, layer in zip(self.links, self.layers, strict=True):
            inputs = [outs[i] for i in link]
            outs.append(layer(torch.cat(inputs, 1) if len(inputs) > 1 else inputs[0]))
        n = len(outs)
        return torch.cat([outs[i] for i in range(n) if i == n - 1 or i % 2 == 1], 1)


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


class HarDNet(PooledLinearClassifier):
    def __init__(
        self,
        arch: int = 68,
        depthwise: bool = False,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float | None = None,
    ) -> None:
        super().__init__()
        if arch not in _ARCHS:
            raise ValueError(f"HarDNet arch must be one of {sorted(_ARCHS)}, got {arch}")
        cfg = _ARCHS[arch]
        if drop_rate is None:
            drop_rate = 0.05 if depthwise else cfg["drop_rate"]
        self.num_classes = num_classes
        self.in_chans = in_chans
        first, second = cfg["stem"]

        base: list[nn.Module] = [
            ConvLayer(in_chans, first, 3, stride=2),
            ConvLayer(first, second, kernel_size=1 if depthwise else 3),
            DWConvLayer(second, stride=2) if depthwise else nn.MaxPool2d(3, 2, 1),
        ]
        chs = second
        n_blocks = len(cfg["n_layers"])
        for i in range(n_blocks):
            block = HarDBlock(chs, cfg["gr"][i], cfg["grmul"], cfg["n_layers"][i], dwconv=depthwise)
            base.append(block)
            if i == n_blocks - 1 and arch == 85:
                base.append(nn.Dropout(0.1))
            base.append(ConvLayer(block.out_channels, cfg["ch"][i], kernel_size=1))
            chs = cfg["ch"][i]
            if cfg["down"][i]:
                base.append(DWConvLayer(chs, stride=2) if depthwise else nn.MaxPool2d(2, 2))
        self.base = nn.Sequential(*base)
        self.num_features = self.head_hidden_size = chs
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = self._make_classifier(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x)


# ---------------------------------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------------------------------


def _create_hardnet(arch: int, depthwise: bool, num_classes: int, in_chans: int, drop_rate: float) -> HarDNet:
    return HarDNet(arch, depthwise, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)


@register_model
def hardnet39ds(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.05) -> HarDNet:
    """HarDNet-39DS (depthwise-separable)."""
    return _create_hardnet(39, True, num_classes, in_chans, drop_rate)


@register_model
def hardnet68(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.1) -> HarDNet:
    """HarDNet-68."""
    return _create_hardnet(68, False, num_classes, in_chans, drop_rate)


@register_model
def hardnet68ds(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.05) -> HarDNet:
    """HarDNet-68DS (depthwise-separable)."""
    return _create_hardnet(68, True, num_classes, in_chans, drop_rate)


@register_model
def hardnet85(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2) -> HarDNet:
    """HarDNet-85."""
    return _create_hardnet(85, False, num_classes, in_chans, drop_rate)
