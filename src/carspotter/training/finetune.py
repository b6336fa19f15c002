"""Fine-tuning: the classifier versus the backbone, a separate backbone learning rate, and a frozen start.

"Classifier" is whatever the model's head API returns from ``get_classifier()`` (the layer `load_pretrained`
re-initialises for new classes); everything else, hidden head layers included, is the backbone, which carries the
pretrained weights. Every registry model and every timm model has the API, so no architecture needs a special case.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch.nn as nn
from lightning.pytorch.callbacks import BaseFinetuning
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from carspotter.config import Config
from carspotter.errors import UserError

log = logging.getLogger(__name__)


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(classifier parameters, backbone parameters), each in the model's parameter order."""
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is None:
        raise UserError(
            f"{type(model).__name__} has no get_classifier(): optimizer.backbone_lr and "
            "trainer.freeze_backbone_epochs need a model with carspotter's head API"
        )
    head_ids = {id(p) for p in get_classifier().parameters()}
    if not head_ids:
        raise UserError(f"{type(model).__name__} has no classifier parameters (num_classes 0?); nothing to fine-tune")
    params = list(model.parameters())
    return [p for p in params if id(p) in head_ids], [p for p in params if id(p) not in head_ids]


def parameter_groups(model: nn.Module, cfg: Config) -> list[dict[str, Any]]:
    """What the optimizer is built on: all parameters, or the classifier then the backbone with ``backbone_lr``;
    with ``optimizer.weight_decay_norm_and_bias: false`` each group is split into decayed weights and undecayed
    biases and normalisation weights (every parameter with fewer than 2 dimensions).

    The classifier's group comes first, so the logged ``lr`` (group 0) is ``optimizer.params.lr`` either way.
    """
    if cfg.optimizer.backbone_lr is None:
        groups = [{"params": list(model.parameters())}]
    else:
        head, backbone = split_parameters(model)
        groups = [{"params": head}, {"params": backbone, "lr": cfg.optimizer.backbone_lr}]
    if cfg.optimizer.weight_decay_norm_and_bias:
        return groups
    split = []
    for group in groups:
        decay = [p for p in group["params"] if p.ndim > 1]
        no_decay = [p for p in group["params"] if p.ndim <= 1]
        split += [{**group, "params": decay}, {**group, "params": no_decay, "weight_decay": 0.0}]
    return [g for g in split if g["params"]]


def backbone_modules(model: nn.Module) -> list[nn.Module]:
    """The model's submodules that are not part of the classifier (to find the backbone's BatchNorm layers)."""
    classifier = model.get_classifier()
    inside = {id(m) for m in classifier.modules()}
    return [m for m in model.modules() if id(m) not in inside and m is not model]


class FreezeBackbone(BaseFinetuning):
    """Train only the classifier for the first ``epochs`` epochs, then everything.

    Frozen means no gradient (``requires_grad=False``, so the optimizer and weight decay leave the weights alone) and
    BatchNorm layers in eval mode (they normalise with, and keep, the pretrained running statistics). The state
    follows the epoch number, so a resumed run freezes or not exactly as the uninterrupted run would have.

    Lightning's `BaseFinetuning` freezes (``setup``, before the optimizer is built) and calls `finetune_function` at
    each epoch start. The backbone keeps its own param group (see `parameter_groups`) all along: no group is added.
    """

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs
        self._frozen: bool | None = None  # the state the last epoch started in

    def state_dict(self) -> dict[str, Any]:
        # BaseFinetuning saves the param groups to re-create, on --resume, the ones it added; ours never change.
        return {}

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        split_parameters(pl_module.model)  # a clear error for a model without the head API
        for module in self._backbone_modules(pl_module):
            self.freeze_module(module)  # its own parameters only (`freeze` would recurse into the classifier)

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        frozen = epoch < self.epochs
        modules = self._backbone_modules(pl_module)
        if frozen != self._frozen:
            if not frozen:
                self.make_trainable(modules)
                for m in modules:
                    if isinstance(m, _BatchNorm):
                        m.train(pl_module.training)
            log.info("epoch %d: backbone %s", epoch, "frozen" if frozen else "trainable")
            self._frozen = frozen
        if frozen:
            # Frozen, BaseFinetuning only stops BatchNorm's statistics from updating (it would normalise with each
            # batch's); eval mode normalises with the pretrained ones. Lightning restores the mode after validation.
            for m in modules:
                if isinstance(m, _BatchNorm):
                    m.eval()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.make_trainable(self._backbone_modules(pl_module))
        self._frozen = None

    @staticmethod
    def _backbone_modules(pl_module: L.LightningModule) -> list[nn.Module]:
        return [pl_module.model, *backbone_modules(pl_module.model)]
