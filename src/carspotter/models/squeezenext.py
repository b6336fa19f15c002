"""SqueezeNext-23 (Gholami et al., CVPR-W 2018, https://arxiv.org/abs/1803.10615): carspotter's implementation.

No maintained library has it. Blocks follow the paper's Fig. 1: a two-stage 1x1 bottleneck (C -> C/2 -> C/4), a
separable 1x3 then 3x1 conv (back to C/2), a 1x1 expansion to the output width, each conv with BN + ReLU, and a
residual (1x1 conv + BN projection when stride or width change). The first block of a stage with stride 2 does not
reduce (it is the paper's/reference code's rule), and a block that narrows the width reduces to C/4 first.
ImageNet stem as in the paper (7x7 stride-2 conv + 3x3 stride-2 max-pool; the thesis made the same change to the
CIFAR reference code it used), stages of [6, 6, 8, 1] blocks at widths 32/64/128/256 x width multiplier, then a 1x1
conv to 128 x width, global pool, dropout and a linear classifier.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from carspotter.models._registry import register_model

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
    """1x1 (reduce) -> 1x1 (squeeze) -> 1x3 -> 3x1 -> 1x1 (expand), plus a residual."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        if stride == 2:
            reduction = 1.0
        elif in_chs > out_chs:
            reduction = 0.25
        else:
            reduction = 0.5
        mid = int(in_chs * reduction)
        squeezed = int(in_chs * reduction * 0.5)
        self.reduce = ConvBnReLU(in_chs, mid, 1, stride)
        self.squeeze = ConvBnReLU(mid, squeezed, 1)
        self.conv1x3 = ConvBnReLU(squeezed, mid, (1, 3), padding=(0, 1))
        self.conv3x1 = ConvBnReLU(mid, mid, (3, 1), padding=(1, 0))
        self.expand = ConvBnReLU(mid, out_chs, 1)
        if stride == 1 and in_chs == out_chs:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(self.conv3x1(self.conv1x3(self.squeeze(self.reduce(x)))))
        return self.act(out + self.shortcut(x))


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


class SqueezeNext(nn.Module):
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
        stem_chs = int(64 * width)
        self.stem = nn.Sequential(
            ConvBnReLU(in_chans, stem_chs, 7, 2, 3),
            nn.MaxPool2d(3, 2, 1),
        )
        stages: list[nn.Module] = []
        prev = stem_chs
        for n, base, stride in zip(blocks, (32, 64, 128, 256), (1, 2, 2, 2), strict=True):
            chs = int(base * width)
            layers = []
            for i in range(n):
                layers.append(SqueezeNextBlock(prev, chs, stride if i == 0 else 1))
                prev = chs
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = int(128 * width)
        self.conv_head = ConvBnReLU(prev, self.num_features, 1)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = self._make_classifier(num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        ref = self.conv_head[0].weight
        self.num_classes = num_classes
        self.classifier = self._make_classifier(num_classes).to(device=ref.device, dtype=ref.dtype)
        self.classifier.train(self.training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_head(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.flatten(self.global_pool(x)))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


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
