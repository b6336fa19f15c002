"""The Lightning module: one network's training, validation and test steps with namespaced metrics, its EMA weights
(what is validated and saved as the model), and the description every checkpoint carries.

The loss, optimizer and learning-rate schedule come from `carspotter.training.optimization`, MixUp/CutMix from
`carspotter.data.batch_augment`.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning as L
import torch
import torch.nn as nn
from timm.utils import ModelEmaV3
from torchmetrics.classification import MulticlassAccuracy

from carspotter.config import RUN_SCHEDULES, Config
from carspotter.data.batch_augment import build_batch_mixing
from carspotter.evaluation.scoring import EvalResult, SplitScores
from carspotter.formats.checkpoint import CheckpointInfo, swap_in_ema, swap_out_ema
from carspotter.training.distill import Teacher
from carspotter.training.finetune import parameter_groups
from carspotter.training.optimization import (
    build_loss,
    build_optimizer,
    build_run_schedule,
    build_scheduler,
    distillation_loss,
    per_step_weight_decay,
)

log = logging.getLogger(__name__)

SHRINK_WARNING = 0.01  # lr x per-step decay above this (1% of every weight per step) is said to be extreme

# By design the module, not the data module, shapes batches on the device (fast pipeline, channels_last).
warnings.filterwarnings("ignore", message=r"You have overridden `on_after_batch_transfer` in `LightningModule`")
# Lightning's own noise, not the user's business: a deprecation inside Lightning, and hints about its logger cadence
# (metrics.csv gets one row per epoch whatever the interval).
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging")


class CarClassifier(L.LightningModule):
    """Wraps any registry model; ``info`` is written into every checkpoint so it can be rebuilt without the config.
    ``class_weights``: the training loss's (`carspotter.data.balance.loss_weights`), None for an unweighted loss."""

    def __init__(
        self,
        model: nn.Module,
        cfg: Config,
        info: CheckpointInfo,
        *,
        batch_transform: nn.Module | None = None,
        channels_last: bool = False,
        class_weights: torch.Tensor | None = None,
        teacher: Teacher | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        # loss.distillation's teacher: a plain attribute, not a submodule, so it is never trained nor saved.
        self.teacher = teacher
        # The fast pipeline's batches arrive as uint8; this augments (training) and normalises them on the device.
        self.batch_transform = batch_transform
        # The weights' moving average: what validation sees, best.ckpt holds, and evaluate/export use (see
        # on_save_checkpoint); the raw weights keep training and travel in the checkpoint for --resume.
        self.ema: ModelEmaV3 | None = None
        self.set_channels_last(channels_last)
        if cfg.trainer.ema is not None:
            self.ema = ModelEmaV3(self.model, decay=cfg.trainer.ema.decay, use_warmup=cfg.trainer.ema.warmup)
            self.ema.requires_grad_(False).train()  # its mode follows the module's, like every other submodule
        if cfg.trainer.compile:
            self.model.compile()  # in place: the state_dict keys (and so the checkpoints) stay as they are
        self.cfg = cfg
        self.info = info
        self.criterion = build_loss(cfg, class_weights)  # training: weighted by class with data.class_balance loss
        self.val_criterion = build_loss(cfg)  # val/loss: every photo counts the same, as in the test's loss
        n = info.num_classes
        self.batch_mixing = build_batch_mixing(cfg.data, n)
        self.train_top1 = MulticlassAccuracy(num_classes=n, average="micro")
        self.val_top1 = MulticlassAccuracy(num_classes=n, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes=n, top_k=min(5, n), average="micro")
        self.test_scores = SplitScores(n)  # what `evaluate` counts with: the two agree to the last digit
        self.test_result: EvalResult | None = None  # set by each trainer.test

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated and saved as the model: the EMA when it is on."""
        return self.ema.module if self.ema is not None else self.model

    def set_channels_last(self, enabled: bool) -> None:
        """The memory layout of the weights and of every batch (the test switches to `scoring_setup`'s)."""
        self.channels_last = enabled
        layout = torch.channels_last if enabled else torch.contiguous_format
        self.model.to(memory_format=layout)
        if self.ema is not None:
            self.ema.module.to(memory_format=layout)

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            layout = torch.channels_last if self.channels_last else torch.contiguous_format
            self.teacher.to(self.device, layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch
        training = self.trainer.training
        # Only the fast pipeline's raw uint8 batches: the test is fed `evaluate`'s loader, normalised already.
        if self.batch_transform is not None and x.dtype == torch.uint8:
            x = self.batch_transform(x, train=training)
        if training and self.batch_mixing is not None:
            x, y = self.batch_mixing(x, y)  # y becomes N×classes probabilities (each row sums to one)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        # optimizer.sam runs this twice a step, the second time at moved weights on the same batch.
        second_pass = getattr(self.trainer.optimizers[0], "perturbed", False)
        logits = self(x)
        loss = self.criterion(logits, y)  # CrossEntropyLoss takes class ids or (mixed) class probabilities
        if self.teacher is not None:
            if not second_pass:  # the teacher's answer to this batch, once
                self._teacher_logits = self.teacher(x)
            d = self.cfg.loss.distillation
            loss = distillation_loss(loss, logits, self._teacher_logits, d.weight, d.temperature)
        if second_pass:
            return loss  # its photos were counted by the first pass
        self.train_top1(logits, y.argmax(1) if y.ndim == 2 else y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log("train/top1", self.train_top1, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def on_train_start(self) -> None:
        if self.cfg.optimizer.weight_decay_scaling is not None:
            # A resumed run's optimizer state brings the old run's per-step decay; a longer resumed run decays less
            # per step (the groups exempt from decay keep 0).
            for group in self.trainer.optimizers[0].param_groups:
                if group.get("weight_decay"):
                    group["weight_decay"] = self.weight_decay_per_step
        if not getattr(self, "_rebuild_schedule", False):
            return
        config = self.trainer.lr_scheduler_configs[0]
        optimizer = config.scheduler.optimizer
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        with warnings.catch_warnings():  # stepping a schedule without optimizer steps is the point here
            warnings.simplefilter("ignore", UserWarning)
            config.scheduler = build_run_schedule(
                self.cfg.scheduler.name, self.cfg.scheduler.params, optimizer, self.trainer.estimated_stepping_batches
            )
            for _ in range(self.global_step):  # to where the run stopped, on the new run's schedule
                config.scheduler.step()
        self._rebuild_schedule = False

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.eval_model(x)
        self.val_top1(logits, y)
        self.val_top5(logits, y)
        loss = self.val_criterion(logits, y)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)  # DDP: mean
        self.log("val/top1", self.val_top1, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log("val/top5", self.val_top5, on_epoch=True, batch_size=len(y))

    def on_test_epoch_start(self) -> None:
        self.test_scores.reset()
        self.test_result = None

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.test_scores.update(self.eval_model(x), y)

    def on_test_epoch_end(self) -> None:
        self.test_result = self.test_scores.result(self.info.class_names)  # exact: the summary reads it from here
        for key in ("top1", "top5", "loss"):
            self.log(f"test/{key}", getattr(self.test_result, key))  # what trainer.test returns (as float32)

    def on_train_epoch_start(self) -> None:
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.log("lr", lr, on_step=False, on_epoch=True, sync_dist=True)  # the same on every rank

    def configure_optimizers(self) -> Any:
        steps = self.trainer.estimated_stepping_batches
        optimizer = build_optimizer(self.cfg, parameter_groups(self.model, self.cfg), total_steps=steps)
        self.weight_decay_per_step = per_step_weight_decay(self.cfg, steps)
        scaling = self.cfg.optimizer.weight_decay_scaling
        if scaling is not None:
            log.info("weight decay %.4g per step: %.4g at %d reference steps, scaled to this run's %d steps (power %g)",
                     self.weight_decay_per_step, self.cfg.optimizer.params["weight_decay"], scaling.reference_steps,
                     steps, scaling.power)  # fmt: skip
            if optimizer.defaults["lr"] * self.weight_decay_per_step > SHRINK_WARNING:
                log.warning(
                    "this run (%d steps) is far shorter than the weight decay's reference (%d): every step shrinks the "
                    "weights by %.0f%%; set optimizer.weight_decay_scaling.reference_steps nearer, or null", steps,
                    scaling.reference_steps, 100 * optimizer.defaults["lr"] * self.weight_decay_per_step,
                )
        scheduler = build_scheduler(self.cfg, optimizer, steps)
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["carspotter"] = self.info.describe()
        if self.ema is not None:
            swap_in_ema(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.cfg.scheduler.name in RUN_SCHEDULES:
            # A run-scaled schedule is rebuilt for the resumed run's length in on_train_start (a --resume may raise
            # trainer.max_epochs, and the saved schedule knows only the old length).
            checkpoint["lr_schedulers"] = []
            self._rebuild_schedule = True
        swap_out_ema(checkpoint, ema_on=self.ema is not None)
