"""Callbacks that make a run folder readable: a per-epoch metrics CSV, an images/s meter, and the epoch-end points that
a run killed just after its checkpoint would lose from MLflow."""

from __future__ import annotations

import contextlib
import csv
import math
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only

from carspotter.formats.run_dir import read_epoch_metrics
from carspotter.training.loggers import SafeMLFlowLogger

EPOCH_COLUMNS = [
    "epoch",
    "train_loss",
    "train_top1",
    "val_loss",
    "val_top1",
    "val_top5",
    "lr",
    "epoch_time_s",
    "img_s",
]
_KEYS = {
    "train_loss": "train/loss_epoch",
    "train_top1": "train/top1",
    "val_loss": "val/loss",
    "val_top1": "val/top1",
    "val_top5": "val/top5",
    "lr": "lr",
}
_TRAIN_EPOCH_KEYS = [_KEYS[column] for column in ("train_loss", "train_top1", "lr")]  # sent after the checkpoint


class EpochMetricsCSV(L.Callback):
    """Appends one row per finished epoch to ``metrics.csv`` (flushed at once, so a crash loses nothing)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._start = 0.0
        self._images = 0

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After a resume, drop rows of epochs that the restored checkpoint does not contain (they will be re-run).
        rows = read_epoch_metrics(self.path)
        kept = [r for r in rows if int(r["epoch"]) < trainer.current_epoch]
        if len(kept) != len(rows):
            _write_rows(self.path, kept)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._images = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._images += len(batch[1])

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        elapsed = time.perf_counter() - self._start
        metrics = trainer.callback_metrics
        row: dict[str, Any] = {"epoch": trainer.current_epoch}
        for col, key in _KEYS.items():
            value = metrics.get(key)
            row[col] = "" if value is None else f"{float(value):.6g}"
        row["epoch_time_s"] = f"{elapsed:.3f}"
        row["img_s"] = f"{self._images / elapsed:.1f}" if elapsed > 0 else ""
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=EPOCH_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)


class ResendEpochEndMetrics(L.Callback):
    """Lightning 2.6 sends an epoch's training metrics to the loggers only after that epoch's checkpoint callbacks
    have run, so a run killed in between resumes without those points in MLflow (metrics.csv is written before the
    checkpoint and keeps them). The checkpoint carries them, and a resumed run sends them again to the loggers that
    skip the points they already hold (`SafeMLFlowLogger`); TensorBoard and W&B cannot tell, so they get none.
    """

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._pending: dict[str, Any] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        """At an epoch-end checkpoint: the points Lightning is about to send, at the step it will send them."""
        trainer = self._trainer
        if trainer is None:
            return {}
        metrics = {k: float(v) for k in _TRAIN_EPOCH_KEYS if (v := trainer.callback_metrics.get(k)) is not None}
        return {"step": trainer.global_step - 1, "metrics": {**metrics, "epoch": float(trainer.current_epoch)}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending.get("metrics"):
            for logger in trainer.loggers:
                if isinstance(logger, SafeMLFlowLogger):
                    logger.log_metrics(self._pending["metrics"], self._pending["step"])
        self._pending = {}


class Throughput(L.Callback):
    """Logs training images/s (shown in the progress bar), smoothed over recent batches.

    Not Lightning's `ThroughputMonitor`: it sends its numbers to the loggers only (never the progress bar; nowhere in a
    ``csv``-only run), once a 100-batch window is full, and warns in every run without ``flops_per_batch``.
    """

    def __init__(self, momentum: float = 0.9) -> None:
        self.momentum = momentum
        self._t0 = 0.0
        self._rate = math.nan

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        dt = time.perf_counter() - self._t0
        if dt <= 0:
            return
        rate = len(batch[1]) * trainer.world_size / dt
        self._rate = rate if math.isnan(self._rate) else self.momentum * self._rate + (1 - self.momentum) * rate
        pl_module.log("img_s", self._rate, on_step=True, on_epoch=False, prog_bar=True, logger=False)


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=EPOCH_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _on_stderr(init: Any) -> Any:
    """Lightning's bars write to ``sys.stdout`` (read when each bar is made): made with stdout pointing at stderr,
    they stay off the result lines a script reads from stdout."""

    def make(self: Any, *args: Any, **kwargs: Any) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return init(self, *args, **kwargs)

    return make


class DenseProgressBar(TQDMProgressBar):
    """One dense line per epoch: loss, top-1, validation top-1, learning rate and images/s; on stderr."""

    init_sanity_tqdm = _on_stderr(TQDMProgressBar.init_sanity_tqdm)
    init_train_tqdm = _on_stderr(TQDMProgressBar.init_train_tqdm)
    init_validation_tqdm = _on_stderr(TQDMProgressBar.init_validation_tqdm)
    init_test_tqdm = _on_stderr(TQDMProgressBar.init_test_tqdm)
    init_predict_tqdm = _on_stderr(TQDMProgressBar.init_predict_tqdm)

    _SHOWN = {
        "train/loss_step": "loss",
        "train/top1": "top1",
        "val/loss": "val_loss",
        "val/top1": "val_top1",
        "img_s": "img/s",
    }

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        shown: dict[str, Any] = {new: metrics[old] for old, new in self._SHOWN.items() if old in metrics}
        if trainer.optimizers:
            shown["lr"] = f"{trainer.optimizers[0].param_groups[0]['lr']:.2g}"
        return shown
