"""The loss, optimizer and learning-rate schedule built from the config."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.optim as optim
from torch.optim import lr_scheduler

from carspotter.config import RUN_SCHEDULES, Config


def build_loss(cfg: Config, class_weights: torch.Tensor | None = None) -> nn.Module:
    """The configured loss; ``class_weights`` (``data.class_balance: loss``) weight a CrossEntropyLoss's classes.

    The weights come from the training split each time a run starts or resumes, so they are kept out of checkpoints
    (a buffer that is not persistent): a checkpoint is the model, whatever it was trained with."""
    loss = getattr(nn, cfg.loss.name)(**cfg.loss.params)
    if class_weights is not None:
        del loss.weight
        loss.register_buffer("weight", class_weights, persistent=False)
    return loss


def distillation_loss(
    loss: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor, weight: float, temperature: float
) -> torch.Tensor:
    """``loss`` (the labels' term) mixed with Hinton's distillation term: T² × KL(softmax(teacher / T) ‖
    softmax(student / T)), averaged over the batch (T² keeps its gradients the size of the labels' term)."""
    t = temperature
    kd = nn.functional.kl_div(
        nn.functional.log_softmax(student.float() / t, dim=1),
        nn.functional.log_softmax(teacher.float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1.0 - weight) * loss + weight * t * t * kd


def per_step_weight_decay(cfg: Config, total_steps: int) -> float | None:
    """The weight decay each optimizer step of a run of ``total_steps`` steps applies: ``optimizer.params.
    weight_decay``, scaled by ``optimizer.weight_decay_scaling`` when set (`carspotter.config.WeightDecayScaling`).
    None: the optimizer's own default."""
    opt = cfg.optimizer
    value = opt.params.get("weight_decay")
    if value is None:
        return None
    scaling = opt.weight_decay_scaling
    if scaling is None:
        return float(value)
    return float(value) * (scaling.reference_steps / max(1, int(total_steps))) ** scaling.power


def build_optimizer(cfg: Config, params: Any, total_steps: int | None = None) -> optim.Optimizer:
    """The configured optimizer over ``params`` (inside `LightningSAM` with ``optimizer.sam``); ``total_steps`` (the
    run's optimizer steps) scales the weight decay when ``optimizer.weight_decay_scaling`` is set (None: the reference
    run's, unscaled)."""
    kwargs = dict(cfg.optimizer.params)
    if cfg.optimizer.weight_decay_scaling is not None and total_steps is not None:
        kwargs["weight_decay"] = per_step_weight_decay(cfg, total_steps)
    base = getattr(optim, cfg.optimizer.name)
    sam = cfg.optimizer.sam
    if sam is not None:
        from carspotter.training.sam import LightningSAM  # its library is imported by the runs that use it only

        return LightningSAM(params, base, rho=sam.rho, adaptive=sam.adaptive, **kwargs)
    return base(params, **kwargs)


def build_scheduler(cfg: Config, optimizer: optim.Optimizer, total_steps: int) -> dict[str, Any] | None:
    """The configured schedule; ``cosine`` and ``step`` are laid out over ``total_steps`` optimizer steps."""
    if cfg.scheduler.name is None:
        return None
    if cfg.scheduler.name in RUN_SCHEDULES:
        scheduler = build_run_schedule(cfg.scheduler.name, cfg.scheduler.params, optimizer, total_steps)
        return {"scheduler": scheduler, "interval": "step", "name": "lr"}
    scheduler = getattr(lr_scheduler, cfg.scheduler.name)(optimizer, **cfg.scheduler.params)
    return {"scheduler": scheduler, "interval": cfg.scheduler.interval, "monitor": cfg.scheduler.monitor, "name": "lr"}


def build_run_schedule(
    name: str, params: dict[str, Any], optimizer: optim.Optimizer, total_steps: int
) -> lr_scheduler.LRScheduler:
    """Linear warm-up over a fraction of the run, then cosine (or step decay at fractions of the run).

    Everything is a fraction of ``total_steps``, so ``--set trainer.max_epochs=N`` keeps the shape of the schedule.
    Built from torch's own `LinearLR`, `CosineAnnealingLR`, `MultiStepLR` and `SequentialLR`.
    """
    p = {**RUN_SCHEDULES[name], **params}
    total_steps = max(1, int(total_steps))
    warm = min(round(p["warmup"] * total_steps), total_steps - 1)
    if name == "cosine":
        eta_min = p["final_lr"] * optimizer.defaults["lr"]
        main: lr_scheduler.LRScheduler = lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, total_steps - warm), eta_min=eta_min
        )
    else:
        milestones = [max(1, round(m * total_steps) - warm) for m in p["milestones"]]
        main = lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=p["gamma"])
    if warm == 0:
        return main
    # lr rises linearly from base/(warm+1) at the first step to the base lr at step `warm`.
    warmup = lr_scheduler.LinearLR(optimizer, start_factor=1.0 / (warm + 1), end_factor=1.0, total_iters=warm)
    return lr_scheduler.SequentialLR(optimizer, [warmup, main], milestones=[warm])
