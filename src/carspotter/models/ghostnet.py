"""GhostNet (Han et al., CVPR 2020, https://arxiv.org/abs/1911.11907): carspotter's own implementation.

One backbone, two heads:

- ``paper``: the official Huawei code. Hard-sigmoid SE gate with ``make_divisible(c/4, 4)`` channels, and after pooling
  a 1x1 ``conv_head`` (960 -> 1280, bias) + ReLU + dropout + linear classifier. Parameter names and shapes match timm's
  ``ghostnet_*``, so timm state dicts load with ``strict=True`` (``ghostnet_050/100/130``).
- ``thesis``: the early ``iamhankai/ghostnet.pytorch`` version the 2020 thesis trained. SE gate ``clamp(0, 1)`` with
  ``c // 4`` channels, and after pooling ``Linear(960 -> hidden, no bias) - BN1d - ReLU - Dropout - Linear``
  (``ghostnet_thesis``; ``hidden_channels`` was the thesis's ``out_channels``, 320 in its best run).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
from timm.layers import DropPath

from carspotter.models._registry import register_model
from carspotter.models.head import PooledLinearClassifier

__all__ = ["GhostNet", "ghostnet_050", "ghostnet_100", "ghostnet_130", "ghostnet_thesis"]

Head = Literal["paper", "thesis"]

# Per stage, per block: (depthwise kernel k, expansion channels, output channels, SE?, stride).
# The 16 bottlenecks of the paper's Table 1; stages split where timm splits them so the parameter names match.
_CFGS: list[list[tuple[int, int, int, bool, int]]] = [
    [(3, 16, 16, False, 1)],
    [(3, 48, 24, False, 2)],
    [(3, 72, 24, False, 1)],
    [(5, 72, 40, True, 2)],
    [(5, 120, 40, True, 1)],
    [(3, 240, 80, False, 2)],
    [
        (3, 200, 80, False, 1),
        (3, 184, 80, False, 1),
        (3, 184, 80, False, 1),
        (3, 480, 112, True, 1),
        (3, 672, 112, True, 1),
    ],
    [(5, 672, 160, True, 2)],
    [(5, 960, 160, False, 1), (5, 960, 160, True, 1), (5, 960, 160, False, 1), (5, 960, 160, True, 1)],
]


def make_divisible(value: float, divisor: int = 4, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without dropping more than 10% (MobileNet's rule)."""
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return new_value


def init_conv_fan_out(conv: nn.Conv2d) -> None:
    """Kaiming-normal with the fan-out of one group: ``k*k*out_channels/groups`` (TF's and timm's EfficientNet rule).

    The thesis's code (and the official GhostNet code it came from) called ``kaiming_normal_(mode="fan_out")``, whose
    fan-out ignores ``groups``: a depthwise conv with C channels got weights sqrt(C) times too small (31x at C=960),
    so its BatchNorm saw a batch variance near 1e-3 while ``running_var`` starts at 1 and moves 10% a step. In train
    mode BN divides by the batch's own variance and nothing shows; in eval mode it divides by the lagging running
    variance, the depthwise outputs collapse, and a short run predicts one class (val loss = ln(classes)) while train
    top-1 climbs. With the group's fan-out the weights have the intended scale and the running statistics are right
    from the first epoch.
    """
    fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------------


class GhostModule(nn.Module):
    """A 1x1 "primary" conv makes half the channels; a cheap depthwise 3x3 conv makes the other half from them."""

    def __init__(self, in_chs: int, out_chs: int, ratio: int = 2, dw_size: int = 3, use_act: bool = True) -> None:
        super().__init__()
        self.out_chs = out_chs
        init_chs = math.ceil(out_chs / ratio)
        new_chs = init_chs * (ratio - 1)
        self.primary_conv = nn.Sequential(
            nn.Conv2d(in_chs, init_chs, 1, 1, 0, bias=False),
            nn.BatchNorm2d(init_chs),
            nn.ReLU(inplace=True) if use_act else nn.Identity(),
        )
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(init_chs, new_chs, dw_size, 1, dw_size // 2, groups=init_chs, bias=False),
            nn.BatchNorm2d(new_chs),
            nn.ReLU(inplace=True) if use_act else nn.Identity(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        return torch.cat([x1, x2], dim=1)[:, : self.out_chs]


class SqueezeExcite(nn.Module):
    """Channel attention. 1x1 convs on the pooled vector (the same parameters as the thesis's two Linear layers)."""

    def __init__(self, chs: int, rd_chs: int, gate: nn.Module) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(chs, rd_chs, 1, bias=True)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(rd_chs, chs, 1, bias=True)
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.conv_expand(self.act1(self.conv_reduce(x_se)))
        return x * self.gate(x_se)


class GhostBottleneck(nn.Module):
    """Ghost expansion -> (depthwise kxk stride 2) -> (SE) -> linear Ghost projection, plus a shortcut.

    ``dilation`` > 1 (a downsampling block kept at stride 1 for ``output_stride=16``): the depthwise convolutions
    are dilated instead of strided, as in timm, so the block keeps its parameters and its receptive field.
    ``drop_path`` > 0: stochastic depth, the residual branch dropped per sample in training (timm's ``DropPath``)."""

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        dw_kernel_size: int,
        stride: int,
        se: nn.Module | None,
        dilation: int = 1,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.ghost1 = GhostModule(in_chs, mid_chs, use_act=True)
        pad = dilation * (dw_kernel_size - 1) // 2
        if stride > 1 or dilation > 1:
            self.conv_dw = nn.Conv2d(
                mid_chs, mid_chs, dw_kernel_size, stride, pad, dilation, groups=mid_chs, bias=False
            )
            self.bn_dw = nn.BatchNorm2d(mid_chs)
        else:
            self.conv_dw = None
            self.bn_dw = None
        self.se = se
        self.ghost2 = GhostModule(mid_chs, out_chs, use_act=False)
        if in_chs == out_chs and stride == 1:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, in_chs, dw_kernel_size, stride, pad, dilation, groups=in_chs, bias=False),
                nn.BatchNorm2d(in_chs),
                nn.Conv2d(in_chs, out_chs, 1, 1, 0, bias=False),
                nn.BatchNorm2d(out_chs),
            )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.ghost1(x)
        if self.conv_dw is not None:
            x = self.bn_dw(self.conv_dw(x))
        if self.se is not None:
            x = self.se(x)
        x = self.ghost2(x)
        return self.drop_path(x) + self.shortcut(shortcut)


class ConvBnAct(nn.Module):
    """1x1 conv + BN + ReLU (named ``conv``/``bn1`` like timm's, so state dicts line up)."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 1, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn1(self.conv(x)))


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


class GhostNet(PooledLinearClassifier):
    """GhostNet backbone with the ``paper`` or the ``thesis`` head (see the module docstring)."""

    def __init__(
        self,
        cfgs: list[list[tuple[int, int, int, bool, int]]] = _CFGS,
        num_classes: int = 1000,
        in_chans: int = 3,
        width: float = 1.0,
        drop_rate: float = 0.2,
        head: Head = "paper",
        hidden_channels: int = 1280,
        zero_init_last: bool = True,
        output_stride: int = 32,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if head not in ("paper", "thesis"):
            raise ValueError(f"head must be 'paper' or 'thesis', got {head!r}")
        if output_stride not in (16, 32):
            raise ValueError(f"output_stride must be 16 or 32, got {output_stride!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.head = head

        stem_chs = make_divisible(16 * width, 4)
        self.conv_stem = nn.Conv2d(in_chans, stem_chs, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_chs)
        self.act1 = nn.ReLU(inplace=True)

        prev_chs = stem_chs
        exp_size = 16
        stages: list[nn.Module] = []
        reduction = 2  # the stem's stride
        num_blocks = sum(len(cfg) for cfg in cfgs)
        for cfg in cfgs:
            layers = []
            for k, exp_size, c, use_se, s in cfg:
                dilation = 1
                if reduction * s > output_stride:  # output_stride 16: the last downsampling dilates instead
                    s, dilation = 1, s
                reduction *= s
                out_chs = make_divisible(c * width, 4)
                mid_chs = make_divisible(exp_size * width, 4)
                se = self._make_se(mid_chs) if use_se else None
                # Stochastic depth grows linearly with depth, as in timm's GhostNet: 0 at the first block.
                block_idx = sum(len(stage) for stage in stages) + len(layers)
                drop_path = drop_path_rate * block_idx / num_blocks
                layers.append(GhostBottleneck(prev_chs, mid_chs, out_chs, k, s, se, dilation, drop_path))
                prev_chs = out_chs
            stages.append(nn.Sequential(*layers))
        out_chs = make_divisible(exp_size * width, 4)
        stages.append(nn.Sequential(ConvBnAct(prev_chs, out_chs)))
        self.blocks = nn.Sequential(*stages)
        self.num_features = out_chs

        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        if head == "paper":
            self.head_hidden_size = 1280
            self.conv_head = nn.Conv2d(out_chs, self.head_hidden_size, 1, 1, 0, bias=True)
            self.act2 = nn.ReLU(inplace=True)
        else:
            self.head_hidden_size = hidden_channels
            self.head_fc = nn.Linear(out_chs, hidden_channels, bias=False)
            self.head_bn = nn.BatchNorm1d(hidden_channels)
            self.act2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = self._make_classifier(num_classes)
        self._init_weights(zero_init_last)

    def _make_se(self, chs: int) -> SqueezeExcite:
        if self.head == "paper":
            return SqueezeExcite(chs, make_divisible(chs / 4, 4), nn.Hardsigmoid())
        # The thesis's gate: torch.clamp(x, 0, 1) (gradient zero outside [0, 1]); Hardtanh(0, 1) computes exactly that.
        return SqueezeExcite(chs, chs // 4, nn.Hardtanh(0.0, 1.0))

    def _init_weights(self, zero_init_last: bool) -> None:
        # Kaiming-normal convs with the fan-out of one group (see `init_conv_fan_out`), BN2d at (1, 0); Linear/BN1d
        # keep PyTorch's defaults.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init_conv_fan_out(m)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            # Every bottleneck starts as its shortcut: the BNs that end the residual branch (both halves of the
            # linear Ghost projection) start at scale 0, as timm's ResNets do (``zero_init_last``, Goyal et al. 2017).
            # On real photos from scratch this is the difference between learning and not: odd98, 64 px, 15 epochs,
            # train loss 4.35 -> 4.02 (docs/recipe-search.md).
            for m in self.modules():
                if isinstance(m, GhostBottleneck):
                    for bn in m.ghost2.modules():
                        if isinstance(bn, nn.BatchNorm2d):
                            nn.init.zeros_(bn.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> final feature map (``num_features`` channels, stride 32)."""
        x = self.act1(self.bn1(self.conv_stem(x)))
        return self.blocks(x)

    def _head_hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled map -> ``head_hidden_size`` vector: 1x1 ``conv_head`` + ReLU (paper) or Linear-BN1d-ReLU (thesis)."""
        if self.head == "paper":
            return self.flatten(self.act2(self.conv_head(x)))
        return self.act2(self.head_bn(self.head_fc(self.flatten(x))))


# ---------------------------------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------------------------------


def _create_ghostnet(width: float = 1.0, **kwargs) -> GhostNet:
    return GhostNet(_CFGS, width=width, **kwargs)


@register_model
def ghostnet_050(
    num_classes: int = 1000,
    in_chans: int = 3,
    drop_rate: float = 0.2,
    zero_init_last: bool = True,
    output_stride: int = 32,
    drop_path_rate: float = 0.0,
) -> GhostNet:
    """GhostNet 0.5x, paper head (timm-compatible weights)."""
    return _create_ghostnet(
        0.5,
        num_classes=num_classes,
        in_chans=in_chans,
        drop_rate=drop_rate,
        head="paper",
        zero_init_last=zero_init_last,
        output_stride=output_stride,
        drop_path_rate=drop_path_rate,
    )


@register_model
def ghostnet_100(
    num_classes: int = 1000,
    in_chans: int = 3,
    drop_rate: float = 0.2,
    zero_init_last: bool = True,
    output_stride: int = 32,
    drop_path_rate: float = 0.0,
) -> GhostNet:
    """GhostNet 1.0x, paper head (timm-compatible weights); 5,182,508 parameters at 1000 classes."""
    return _create_ghostnet(
        1.0,
        num_classes=num_classes,
        in_chans=in_chans,
        drop_rate=drop_rate,
        head="paper",
        zero_init_last=zero_init_last,
        output_stride=output_stride,
        drop_path_rate=drop_path_rate,
    )


@register_model
def ghostnet_130(
    num_classes: int = 1000,
    in_chans: int = 3,
    drop_rate: float = 0.2,
    zero_init_last: bool = True,
    output_stride: int = 32,
    drop_path_rate: float = 0.0,
) -> GhostNet:
    """GhostNet 1.3x, paper head (timm-compatible weights)."""
    return _create_ghostnet(
        1.3,
        num_classes=num_classes,
        in_chans=in_chans,
        drop_rate=drop_rate,
        head="paper",
        zero_init_last=zero_init_last,
        output_stride=output_stride,
        drop_path_rate=drop_path_rate,
    )


@register_model
def ghostnet_thesis(
    num_classes: int = 1000,
    in_chans: int = 3,
    drop_rate: float = 0.2,
    hidden_channels: int = 1280,
    width: float = 1.0,
    zero_init_last: bool = True,
    output_stride: int = 32,
    drop_path_rate: float = 0.0,
) -> GhostNet:
    """The thesis's GhostNet: clamp-gated SE and a BN1d hidden-layer classifier (3,041,412 params at 320/196)."""
    return _create_ghostnet(
        width,
        num_classes=num_classes,
        in_chans=in_chans,
        drop_rate=drop_rate,
        head="thesis",
        hidden_channels=hidden_channels,
        zero_init_last=zero_init_last,
        output_stride=output_stride,
        drop_path_rate=drop_path_rate,
    )
