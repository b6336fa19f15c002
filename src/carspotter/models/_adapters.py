"""Library-built architectures behind carspotter's head API.

timm models already have it (``num_features``, ``forward_features``, ``forward_head``, ``get_classifier``,
``reset_classifier``) and take ``in_chans``/``drop_rate``, so `create_timm_model` only pins ``pretrained=False``.
torchvision models have neither: `TorchvisionAdapter` gives them both while keeping torchvision's parameter names,
so a torchvision state dict still loads into the adapted model unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn


def create_timm_model(
    timm_name: str, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0, **kwargs: Any
) -> nn.Module:
    """A timm architecture with random weights (weights come from `model.pretrained`: a file or `hf-hub:` name)."""
    import timm

    return timm.create_model(
        timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, **kwargs
    )


class TorchvisionAdapter(nn.Module):
    """A torchvision classifier with an ``in_chans`` stem and the head API.

    The wrapped model's top-level children are re-registered under their own names (``features``, ``conv1``,
    ``fc``...), so the state dict keys are torchvision's. Two head layouts exist in torchvision's small nets:
    ``linear`` (features -> global average pool -> dropout -> Linear; ShuffleNetV2) and ``conv`` (features -> the
    model's own ``classifier`` Sequential of dropout, 1x1 conv, ReLU, pool; SqueezeNet).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        features: Sequence[str],
        classifier: str,
        stem: str,
        num_features: int,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        head: str = "linear",
    ) -> None:
        super().__init__()
        if head not in ("linear", "conv"):
            raise ValueError(f"head must be 'linear' or 'conv', got {head!r}")
        self.head = head
        self.feature_names = list(features)
        self.classifier_name = classifier
        self.num_features = num_features
        self.head_hidden_size = num_features
        self.in_chans = in_chans
        for name in self.feature_names:
            self.add_module(name, getattr(model, name))
        self.add_module(classifier.split(".")[0], getattr(model, classifier.split(".")[0]))
        self.num_classes = self.get_classifier().out_channels if head == "conv" else self.get_classifier().out_features
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(drop_rate) if head == "linear" else nn.Identity()  # "conv" heads carry their own
        if in_chans != 3:
            self._replace_stem(stem, in_chans)

    def _replace_stem(self, stem: str, in_chans: int) -> None:
        old = self.get_submodule(stem)
        if not isinstance(old, nn.Conv2d):
            raise TypeError(f"stem {stem!r} is a {type(old).__name__}, not a Conv2d")
        new = nn.Conv2d(
            in_chans,
            old.out_channels,
            old.kernel_size,
            old.stride,
            old.padding,
            dilation=old.dilation,
            groups=old.groups,
            bias=old.bias is not None,
        )
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        if new.bias is not None:
            nn.init.zeros_(new.bias)
        self.set_submodule(stem, new)

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh final layer for ``num_classes`` (0 = none: the model returns the pooled features)."""
        old = self.get_classifier()
        ref = next(self.parameters())
        if num_classes <= 0:
            new: nn.Module = nn.Identity()
        elif self.head == "conv":
            new = nn.Conv2d(self.num_features, num_classes, 1)
            nn.init.normal_(new.weight, mean=0.0, std=0.01)  # torchvision's SqueezeNet init for the final conv
            nn.init.zeros_(new.bias)
        else:
            new = nn.Linear(self.num_features, num_classes)
        new = new.to(device=ref.device, dtype=ref.dtype)
        new.train(old.training)
        self.set_submodule(self.classifier_name, new)
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.feature_names:
            x = getattr(self, name)(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.head == "conv":
            if pre_logits:
                return self.flatten(self.global_pool(x))
            # The classifier Sequential is (dropout, 1x1 conv, ReLU, pool); with no classes the conv is an Identity
            # and the ReLU a no-op (the features are already non-negative), so this returns the pooled features.
            return self.flatten(getattr(self, self.classifier_name.split(".")[0])(x))
        x = self.dropout(self.flatten(self.global_pool(x)))
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
