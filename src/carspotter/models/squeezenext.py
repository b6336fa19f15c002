"""SqueezeNext-23 (Gholami et al., CVPR-W 2018, https://arxiv.org/abs/1803.10615): carspotter's implementation.

It follows the authors' Caffe models (github.com/amirgholami/SqueezeNext, ``1.0-SqNxt-23`` and ``2.0-SqNxt-23``
``train_val.prototxt``) layer for layer:

- stem: 7x7 stride-2 conv without padding + BN + ReLU, then a 3x3 stride-2 max-pool that rounds up (Caffe's pooling):
  a 55x55 map at 227 px;
- stages of [6, 6, 8, 1] blocks at 32/64/128/256 x width channels, stride 2 in the first block of stages 2-4. A block
  with input width C: 1x1 reduce to C/2 and 1x1 squeeze to C/4 (C and C/2 in a stride-2 block, C/4 and C/8 in one
  that narrows the width), a 3x1 and a 1x3 conv back to the reduced width (their order alternates from block to
  block, 3x1 first in a stage's first block), a 1x1 expansion to the output width; every conv has BN + ReLU, no bias;
- the first block of every stage has a projection shortcut (1x1 conv + BN + ReLU), even where neither the width nor
  the resolution changes (stage 1 of 2.0-SqNxt-23); the other blocks add their input; ReLU after the sum;
- head: 1x1 conv to 128 channels + BN + ReLU, global average pool, dropout (``drop_rate``, 0 by default: the Caffe
  models have none), linear classifier.

Widths above 1.0 widen the stages only; the stem keeps 64 channels and the head 128, as in the authors'
2.0-SqNxt-23. The authors published no 1.5 or 2.5 model: those widths follow the same rule. One difference from the
Caffe models: the classifier has a bias, as every carspotter head has (``num_classes`` more parameters). At 1000
classes 1.0 has 718,280 parameters and 2.0 has 2,362,728 (the Caffe models' 717,280 and 2,361,728 plus that bias;
0.72 M and 2.36 M); 1.0 costs 278.0 M MACs at 227 px.

pytorchcv's ``sqnxt23_*`` (which the authors' README points to) differ: the stem conv is padded by 1 (56x56 at 227),
convs have biases, stem and head scale with the width (2,583,752 parameters at 2.0), the 1x3 conv always comes first,
and a fixed 7x7 average pool ends the network (64 px inputs fail).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from carspotter.models._registry import register_model
from carspotter.models.head import PooledLinearClassifier

__all__ = ["SqueezeNext", "squeezenext23_100", "squeezenext23_150", "squeezenext23_200", "squeezenext23_250"]


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------------


class ConvBnReLU(nn.Sequential):
    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__(
            nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, bias=False),
            nn.BatchNorm2d(out_chs),
            nn.ReLU(inplace=True),
        )


class SqueezeNextBlock(nn.Module):
    """1x1 (reduce) -> 1x1 (squeeze) -> 1x3 and 3x1 (in either order) -> 1x1 (expand), plus a residual.

    ``project``: the shortcut is a 1x1 conv + BN + ReLU (the authors' first block of every stage), else the identity.
    ``vertical_first``: the 3x1 conv comes before the 1x3 (the authors alternate the order from block to block).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, project: bool, vertical_first: bool) -> None:
        super().__init__()
        if not project and (stride != 1 or in_chs != out_chs):
            raise ValueError(f"an identity shortcut needs stride 1 and equal widths, got {in_chs}->{out_chs}/{stride}")
        if stride == 2:
            reduction = 1.0
        elif in_chs > out_chs:
            reduction = 0.25
        else:
            reduction = 0.5
        mid = int(in_chs * reduction)
        squeezed = int(in_chs * reduction * 0.5)
        self.vertical_first = vertical_first
        self.reduce = ConvBnReLU(in_chs, mid, 1, stride)
        self.squeeze = ConvBnReLU(mid, squeezed, 1)
        self.conv1x3 = ConvBnReLU(mid if vertical_first else squeezed, mid, (1, 3), padding=(0, 1))
        self.conv3x1 = ConvBnReLU(squeezed if vertical_first else mid, mid, (3, 1), padding=(1, 0))
        self.expand = ConvBnReLU(mid, out_chs, 1)
        self.shortcut: nn.Module = ConvBnReLU(in_chs, out_chs, 1, stride) if project else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.squeeze(self.reduce(x))
        out = self.conv1x3(self.conv3x1(out)) if self.vertical_first else self.conv3x1(self.conv1x3(out))
        return self.act(self.expand(out) + self.shortcut(x))


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


class SqueezeNext(PooledLinearClassifier):
    """SqueezeNext with ``blocks`` per stage and stage widths ``32/64/128/256 x width`` (see the module docstring)."""

    def __init__(
        self,
        blocks: tuple[int, int, int, int] = (6, 6, 8, 1),
        width: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        stem_chs = 64
        self.stem = nn.Sequential(
            ConvBnReLU(in_chans, stem_chs, 7, 2, 0),
            nn.MaxPool2d(3, 2, ceil_mode=True),
        )
        stages: list[nn.Module] = []
        prev = stem_chs
        for n, base, stride in zip(blocks, (32, 64, 128, 256), (1, 2, 2, 2), strict=True):
            chs = int(base * width)
            layers = []
            for i in range(n):
                first = i == 0
                layers.append(SqueezeNextBlock(prev, chs, stride if first else 1, first, i % 2 == 0))
                prev = chs
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = 128
        self.conv_head = ConvBnReLU(prev, self.num_features, 1)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = self._make_classifier(num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_head(self.stages(self.stem(x)))


# ---------------------------------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------------------------------


def _create_squeezenext(width: float, num_classes: int, in_chans: int, drop_rate: float) -> SqueezeNext:
    return SqueezeNext((6, 6, 8, 1), width, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)


@register_model
def squeezenext23_100(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> SqueezeNext:
    """1.0-SqNxt-23."""
    return _create_squeezenext(1.0, num_classes, in_chans, drop_rate)


@register_model
def squeezenext23_150(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> SqueezeNext:
    """1.5-SqNxt-23."""
    return _create_squeezenext(1.5, num_classes, in_chans, drop_rate)


@register_model
def squeezenext23_200(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> SqueezeNext:
    """2.0-SqNxt-23."""
    return _create_squeezenext(2.0, num_classes, in_chans, drop_rate)


@register_model
def squeezenext23_250(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> SqueezeNext:
    """2.5-SqNxt-23 (the thesis's widest)."""
    return _create_squeezenext(2.5, num_classes, in_chans, drop_rate)
