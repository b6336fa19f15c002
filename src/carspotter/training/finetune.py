"""Fine-tuning: the classifier versus the backbone, a separate backbone learning rate, and a frozen start.

"Classifier" is whatever the model's head API returns from ``get_classifier()`` (the layer `load_pretrained`
re-initialises for new classes); everything else, hidden head layers included, is the backbone, which carries the
pretrained weights. Every registry model and every timm model has the API, so no architecture needs a special case.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

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


def checkpoint_class_names(path: str | Path) -> list[str] | None:
    """The class names a carspotter checkpoint was trained on; None for a plain state dict (or an unreadable file)."""
    try:
        obj = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - load_pretrained has already said what is wrong with the file
        return None
    meta = obj.get("carspotter") if isinstance(obj, dict) else None
    names = meta.get("class_names") if isinstance(meta, dict) else None
    return [str(n) for n in names] if isinstance(names, list) else None


def reset_classifier_for_new_classes(model: nn.Module, pretrained: str | Path, class_names: list[str]) -> bool:
    """Re-initialise the classifier when the checkpoint's classes are not the dataset's (same count, other names).

    `load_pretrained` already leaves the classifier fresh when the class count differs; with the same count it
    loads it, which is right for continuing on the same classes and wrong for a user's own ones.
    """
    source = checkpoint_class_names(pretrained)
    if source is None or len(source) != len(class_names) or source == list(class_names):
        return False
    model.reset_classifier(len(class_names))
    log.info(
        "%s: classifier re-initialised (the checkpoint's %d classes are not this dataset's)", pretrained, len(source)
    )
    return True


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


class FreezeBackbone(L.Callback):
    """Train only the classifier for the first ``epochs`` epochs, then everything.

    Frozen means no gradient (``requires_grad=False``, so the optimizer and weight decay leave the weights alone) and
    BatchNorm layers in eval mode (their running statistics stay the pretrained ones). The state follows the epoch
    number, so a resumed run freezes or not exactly as the uninterrupted run would have.
    """

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self._frozen: bool | None = None
        self._norms: list[nn.Module] = []
        self._backbone: list[nn.Parameter] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        model = pl_module.model
        _, self._backbone = split_parameters(model)
        self._norms = [m for m in backbone_modules(model) if isinstance(m, _BatchNorm)]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        frozen = trainer.current_epoch < self.epochs
        if frozen != self._frozen:
            for p in self._backbone:
                p.requires_grad_(not frozen)
            if not frozen:
                for m in self._norms:
                    m.train(pl_module.training)
            log.info("epoch %d: backbone %s", trainer.current_epoch, "frozen" if frozen else "trainable")
            self._frozen = frozen
        self._hold_norms()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._hold_norms()  # cheap; survives anything that switched the whole module back to train mode

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for p in self._backbone:
            p.requires_grad_(True)

    def _hold_norms(self) -> None:
        if self._frozen:
            for m in self._norms:
                m.eval()
