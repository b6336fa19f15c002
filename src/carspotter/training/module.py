"""The Lightning module: one network, its loss, optimizer and scheduler as configured, and namespaced metrics."""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch
import torch.nn as nn
import torch.optim as optim
from torch.optim import lr_scheduler
from torchmetrics.classification import MulticlassAccuracy

from carspotter.config import Config
from carspotter.training.checkpoint import CheckpointInfo
from carspotter.training.finetune import parameter_groups

# By design the module, not the data module, shapes batches on the device (fast pipeline, channels_last).
warnings.filterwarnings("ignore", message=r"You have overridden `on_after_batch_transfer` in `LightningModule`")


def build_loss(cfg: Config) -> nn.Module:
    return getattr(nn, cfg.loss.name)(**cfg.loss.params)


def build_optimizer(cfg: Config, params: Any) -> optim.Optimizer:
    return getattr(optim, cfg.optimizer.name)(params, **cfg.optimizer.params)


def build_scheduler(cfg: Config, optimizer: optim.Optimizer) -> dict[str, Any] | None:
    if cfg.scheduler.name is None:
        return None
    scheduler = getattr(lr_scheduler, cfg.scheduler.name)(optimizer, **cfg.scheduler.params)
    return {"scheduler": scheduler, "interval": cfg.scheduler.interval, "monitor": cfg.scheduler.monitor, "name": "lr"}


class CarClassifier(L.LightningModule):
    """Wraps any registry model; ``info`` is written into every checkpoint so it can be rebuilt without the config."""

    def __init__(
        self,
        model: nn.Module,
        cfg: Config,
        info: CheckpointInfo,
        *,
        batch_transform: nn.Module | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        # The fast pipeline's batches arrive as uint8; this augments (training) and normalises them on the device.
        self.batch_transform = batch_transform
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if cfg.trainer.compile:
            self.model.compile()  # in place: the state_dict keys (and so the checkpoints) stay as they are
        self.cfg = cfg
        self.info = info
        self.criterion = build_loss(cfg)
        n = info.num_classes
        self.train_top1 = MulticlassAccuracy(num_classes=n, average="micro")
        self.val_top1 = MulticlassAccuracy(num_classes=n, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes=n, top_k=min(5, n), average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch
        if self.batch_transform is not None:
            x = self.batch_transform(x, train=self.trainer.training)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        self.train_top1(logits, y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log("train/top1", self.train_top1, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_top1(logits, y)
        self.val_top5(logits, y)
        loss = self.criterion(logits, y)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)  # DDP: mean
        self.log("val/top1", self.val_top1, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log("val/top5", self.val_top5, on_epoch=True, batch_size=len(y))

    def on_train_epoch_start(self) -> None:
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.log("lr", lr, on_step=False, on_epoch=True, sync_dist=True)  # the same on every rank

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.cfg, parameter_groups(self.model, self.cfg))
        scheduler = build_scheduler(self.cfg, optimizer)
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["carspotter"] = self.info.describe()
