"""The classifier head shared by carspotter's own architectures (GhostNet, HarDNet, SqueezeNext).

Each of them ends in global pool -> (hidden layers) -> dropout -> ``Linear`` and exposes the head API
(``forward_head``, ``get_classifier``, ``reset_classifier``). timm's ``ClassifierHead`` would nest those layers in a
submodule and rename ``classifier.weight`` to ``head.fc.weight`` in every checkpoint, so the shared part is a base class
instead: a model keeps ``global_pool``, ``flatten``, ``dropout`` and ``classifier`` as its own attributes (its
parameter names and order stay what they were) and inherits the methods that use them.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["PooledLinearClassifier"]


class PooledLinearClassifier(nn.Module):
    """A network whose head is global pool -> `_head_hidden` -> dropout -> ``classifier`` (Linear, or Identity at 0).

    A subclass defines ``forward_features`` and sets ``num_classes``, ``head_hidden_size`` (the classifier's input
    width), ``global_pool``, ``flatten``, ``dropout`` and ``classifier = self._make_classifier(num_classes)``; one with
    hidden layers between the pooling and the dropout overrides `_head_hidden`.
    """

    num_classes: int
    head_hidden_size: int
    global_pool: nn.Module
    flatten: nn.Module
    dropout: nn.Module
    classifier: nn.Module

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _make_classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def _head_hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled map ``(N, C, 1, 1)`` -> the ``head_hidden_size`` vector that dropout and the classifier take."""
        return self.flatten(x)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh final layer for ``num_classes`` (0 = none: the model returns the pre-logits features)."""
        ref = next(self.parameters())
        self.num_classes = num_classes
        self.classifier = self._make_classifier(num_classes).to(device=ref.device, dtype=ref.dtype)
        self.classifier.train(self.training)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> logits (or the ``head_hidden_size`` vector fed to the classifier, when ``pre_logits``)."""
        x = self.dropout(self._head_hidden(self.global_pool(x)))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
