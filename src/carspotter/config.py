"""The training configuration: YAML → typed, validated objects at load time.

Unknown keys, wrong types and unknown names (model, transform, optimizer, scheduler, loss) are `UserError`s naming
the key path and the allowed values, so a typo fails in seconds instead of hours into a run.
"""

from __future__ import annotations

import difflib
import inspect
import json
import types
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from carspotter.defaults import DEFAULT_IMAGE_SIZE
from carspotter.errors import UserError
from carspotter.models.hub import is_hub_name
from carspotter.preprocessing import THESIS_MEAN_RGB, THESIS_STD_RGB

THESIS_MEAN_GRAY = (0.4627,)
THESIS_STD_GRAY = (0.2545,)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _close(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=4, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def _check_params(kind: str, name: str, target: Any, params: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
    """Reject keyword arguments that ``target``'s constructor does not take, listing the ones it does."""
    sig = inspect.signature(target)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    allowed = [p for p in sig.parameters if p not in ("self", *skip)]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"{kind} {name!r} has no parameter(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")


def transform_names() -> list[str]:
    from torchvision.transforms import v2

    return sorted(n for n in dir(v2) if isinstance(getattr(v2, n), type) and issubclass(getattr(v2, n), v2.Transform))


class Transform(_Section):
    """One augmentation from ``torchvision.transforms.v2``, by class name, with its keyword arguments."""

    name: str = Field(description="a `torchvision.transforms.v2` class name, e.g. `RandomAffine`")
    params: dict[str, Any] = Field(
        default_factory=dict, description="the class's keyword arguments, e.g. `{degrees: 25}`"
    )

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        # Accept the thesis's compact form ``{RandomHorizontalFlip: {p: 0.5}}`` as well as ``{name:, params:}``.
        if isinstance(value, dict) and len(value) == 1 and "name" not in value:
            ((name, params),) = value.items()
            return {"name": name, "params": params or {}}
        if isinstance(value, str):
            return {"name": value, "params": {}}
        return value

    @model_validator(mode="after")
    def _known(self) -> Transform:
        from torchvision.transforms import v2

        names = transform_names()
        if self.name not in names:
            raise ValueError(
                f"unknown transform {self.name!r}.{_close(self.name, names)} Allowed: torchvision.transforms.v2 classes"
            )
        _check_params("transform", self.name, getattr(v2, self.name), self.params)
        return self


BATCH_TRANSFORMS = ("MixUp", "CutMix")
MIN_IMAGE_SIZE = 8  # smaller inputs vanish in the networks' strided stages


class DataConfig(_Section):
    path: Path = Field(Path("data/stanford"), description="prepared dataset folder")
    image_size: tuple[int, int] = Field(
        DEFAULT_IMAGE_SIZE,
        description="input height, width (an int means square); images are resized to it, aspect ratio not kept "
        "(the thesis's rule)",
    )
    grayscale: bool = Field(False, description="1-channel input")
    normalize: bool = Field(
        True, description="per-channel normalisation with `data.mean` and `data.std` (`carspotter stats` computes them)"
    )
    mean: tuple[float, ...] | None = Field(
        None,
        description="the per-channel means of the normalisation, one per input channel; `null`: the thesis's "
        "statistics for RGB or grayscale",
    )
    std: tuple[float, ...] | None = Field(
        None,
        description="the per-channel standard deviations of the normalisation, one per input channel; `null`: the "
        "thesis's statistics for RGB or grayscale",
    )
    crop_to_bbox: bool = Field(
        False,
        description="training images cropped to the car's box (looked up by file name; a box is clipped to the "
        "image, and one with nothing left inside it means the whole image, as `prepare` writes it); an alternative "
        "to `data.erase_background`",
    )
    erase_background: bool = Field(
        False,
        description="training images keep their frame; everything outside the box is painted white (an alternative "
        "to `data.crop_to_bbox`)",
    )
    val_fraction: float = Field(
        0.1, gt=0.0, lt=1.0, description="validation split carved from train, stratified and seeded"
    )
    validate_on_test: bool = Field(False, description="the thesis's protocol: select on the test split (optimistic)")
    num_workers: int = Field(
        2, ge=0, description="DataLoader worker processes (the fast pipeline: threads that build its cache)"
    )
    pipeline: Literal["classic", "fast", "auto"] = Field(
        "auto",
        description="`fast`: decoded-image cache + per-sample batched augmentation on the training device (see Fast "
        "training); `classic`: per-image PIL decode and transforms in DataLoader workers; `auto`: fast, except (with "
        "a warning) when an augmentation has no batched equivalent or the cache folder is not writable",
    )
    cache_dir: Path | None = Field(
        None,
        description="where the fast pipeline's decoded-image cache goes; `null`: `<data.path>/.cache`",
    )
    image_augmentations: list[Transform] = Field(
        default_factory=list,
        description="ordered list of `torchvision.transforms.v2` classes with parameters, e.g. "
        "`- RandomAffine: {degrees: 25}`, applied to the resized image",
    )
    tensor_augmentations: list[Transform] = Field(
        default_factory=list,
        description="the same as `data.image_augmentations`, applied to the normalised tensor (e.g. `RandomErasing`)",
    )
    batch_augmentations: list[Transform] = Field(
        default_factory=list,
        description="whole-batch mixing of training images and labels: `- MixUp: {alpha: 0.2}`, "
        "`- CutMix: {alpha: 1.0}` (torchvision v2's own classes, on the training device in both pipelines; with "
        "both, one is drawn per batch; `num_classes` comes from the data)",
    )
    class_balance: Literal["none", "sampler", "loss"] = Field(
        "none",
        description="how unbalanced classes are trained: `none`: the photos as they are; `sampler`: each epoch draws "
        "every class equally often (with replacement, torch's `WeightedRandomSampler`; resumable); `loss`: "
        "cross-entropy weighted by 1 / class frequency, normalised to mean 1 (needs `loss.name: CrossEntropyLoss` "
        "without a `weight` in `loss.params`)",
    )

    @field_validator("batch_augmentations", mode="after")
    @classmethod
    def _mixing_only(cls, value: list[Transform]) -> list[Transform]:
        for spec in value:
            if spec.name not in BATCH_TRANSFORMS:
                raise ValueError(f"{spec.name} is not a batch augmentation; allowed: {', '.join(BATCH_TRANSFORMS)}")
            if "num_classes" in spec.params or "labels_getter" in spec.params:
                raise ValueError(f"{spec.name}: num_classes and labels_getter come from the data; give alpha only")
        return value

    @field_validator("image_size", mode="before")
    @classmethod
    def _square(cls, value: Any) -> Any:
        return (value, value) if isinstance(value, int) else value

    @field_validator("image_size", mode="after")
    @classmethod
    def _positive(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < MIN_IMAGE_SIZE:
            raise ValueError(f"height and width must be at least {MIN_IMAGE_SIZE} pixels, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if self.crop_to_bbox and self.erase_background:
            raise ValueError(
                "crop_to_bbox and erase_background are alternatives: crop keeps only the box; erase keeps the whole "
                "frame and paints everything outside the box white. Set one of them."
            )
        channels = 1 if self.grayscale else 3
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != channels:
                raise ValueError(f"{key} needs {channels} value(s) for {'grayscale' if self.grayscale else 'RGB'}")
        return self

    @property
    def resolved_mean(self) -> tuple[float, ...]:
        return self.mean or (THESIS_MEAN_GRAY if self.grayscale else THESIS_MEAN_RGB)

    @property
    def resolved_std(self) -> tuple[float, ...]:
        return self.std or (THESIS_STD_GRAY if self.grayscale else THESIS_STD_RGB)


class ModelConfig(_Section):
    name: str = Field("ghostnet_thesis", description="a registered model (`carspotter models`) or `timm/<name>`")
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="the model's arguments, e.g. `{drop_rate: 0.2}` (`num_classes` and `in_chans` come from the data)",
    )
    pretrained: str | None = Field(
        None,
        description="weights to start from: a local carspotter checkpoint, a timm/torchvision state dict "
        "(`.safetensors` too), or `hf-hub:OWNER/NAME` (fetched into the Hugging Face cache); the classifier starts "
        "fresh when the classes differ; `null`: random initialisation",
    )

    @model_validator(mode="after")
    def _known(self) -> ModelConfig:
        from carspotter.models import list_models, model_arg_names

        if not self.name.startswith("timm/") and self.name not in list_models():
            raise ValueError(f"unknown model {self.name!r}.{_close(self.name, list_models())} See `carspotter models`")
        allowed = model_arg_names(self.name)
        if allowed is not None:
            unknown = sorted(set(self.args) - set(allowed))
            if unknown:
                raise ValueError(
                    f"model {self.name!r} has no argument(s) {', '.join(unknown)}; allowed: {', '.join(allowed)} "
                    "(num_classes and in_chans come from the data)"
                )
        return self


SELF_TEACHER = "self"  # loss.distillation.teacher: the run trains its own teacher first


class DistillationConfig(_Section):
    """Knowledge distillation (Hinton et al., 2015): the loss becomes (1 − weight) × the configured loss + weight ×
    T² × KL(teacher's softened probabilities ‖ the student's), both softened by temperature T. The teacher is a
    carspotter checkpoint of the same classes, run in eval mode on every training batch, never trained or saved."""

    teacher: Literal["self"] | Path = Field(
        description="the teacher's checkpoint (`best.ckpt` of a run on the same classes), or `self`: the run first "
        "trains its teacher with its own settings (no distillation) into its folder's `teacher/`, then itself from it "
        "(born-again networks; twice the training, the teacher's minutes reported apart)"
    )
    weight: float = Field(0.5, ge=0.0, le=1.0, description="the distillation term's share of the loss")
    temperature: float = Field(4.0, gt=0.0, description="T: both models' logits are divided by it before the softmax")


class LossConfig(_Section):
    name: str = Field("CrossEntropyLoss", description="any `torch.nn` loss, by class name")
    params: dict[str, Any] = Field(
        default_factory=lambda: {"label_smoothing": 0.1}, description="the loss's keyword arguments"
    )
    distillation: DistillationConfig | None = Field(
        None,
        description="`{teacher: RUN/best.ckpt, weight: 0.5, temperature: 4}`: learn from a trained carspotter model's "
        "answers too; `null`: from the labels alone",
    )

    @model_validator(mode="after")
    def _known(self) -> LossConfig:
        import torch.nn as nn

        names = sorted(n for n in dir(nn) if n.endswith("Loss") and isinstance(getattr(nn, n), type))
        if self.name not in names:
            raise ValueError(f"unknown loss {self.name!r}.{_close(self.name, names)} Allowed: {', '.join(names)}")
        _check_params("loss", self.name, getattr(nn, self.name), self.params)
        return self


class WeightDecayScaling(_Section):
    """Decoupled weight decay (AdamW) shrinks every weight by lr x weight_decay at every optimizer step, so one per-step
    value decays more the more photos, epochs and smaller batches a run has. With this, ``params.weight_decay`` is the
    value for a run of ``reference_steps`` steps; a run of S steps uses weight_decay x (reference_steps / S) ** power.
    power 1: every run decays as much in all (lr x weight_decay x steps constant); 0.5: the AdamW paper's normalised
    weight decay (Loshchilov & Hutter: proportional to sqrt(batch / (photos x epochs))); 0: no scaling."""

    reference_steps: int = Field(
        gt=0,
        description="N: the number of optimizer steps of the run for which `optimizer.params.weight_decay` is the "
        "per-step decay",
    )
    power: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="P: a run of S steps uses `params.weight_decay` × (N / S)^P; 1: every run decays as much in all "
        "(lr × weight_decay × steps constant); 0.5: the AdamW paper's normalised weight decay (Loshchilov & Hutter); "
        "0: no scaling",
    )


class SamConfig(_Section):
    """Sharpness-aware minimisation (Foret et al., 2021; pytorch_optimizer's `SAM` around the configured optimizer):
    each step takes the gradient at the weights moved ``rho`` along their own gradient, so the run seeks flat minima.
    Every step computes two forward and backward passes: about twice the training time."""

    rho: float = Field(0.05, gt=0.0, description="the radius of the neighbourhood the weights are moved to")
    adaptive: bool = Field(
        False, description="ASAM (Kwon et al., 2021): the move is scaled by each weight's magnitude (then rho ~ 0.5-2)"
    )


class OptimizerConfig(_Section):
    name: str = Field("AdamW", description="any `torch.optim` optimizer, by class name")
    params: dict[str, Any] = Field(
        default_factory=lambda: {"lr": 1e-3, "weight_decay": 0.6},
        description="the optimizer's keyword arguments (`lr`, `weight_decay`, ...)",
    )
    backbone_lr: float | None = Field(
        None,
        gt=0.0,
        description="fine-tuning: the backbone's learning rate (everything but `get_classifier()`); `params.lr` is "
        "then the classifier's; `null`: one learning rate for all",
    )
    weight_decay_norm_and_bias: bool = Field(
        True,
        description="`false`: no weight decay on biases and normalisation weights (every parameter with fewer than 2 "
        "dimensions)",
    )
    weight_decay_scaling: WeightDecayScaling | None = Field(
        None,
        description="`{reference_steps: N, power: P}`: `params.weight_decay` is the per-step decay of a run of N "
        "optimiser steps; a run of S steps uses it × (N / S)^P (P 1: the same decay in all; 0.5: the AdamW paper's "
        "normalised decay; the recommended recipe: 1.2 at 7,440 steps, P 0.5); `null`: the same per-step value for "
        "every run",
    )
    sam: SamConfig | None = Field(
        None,
        description="`{rho: 0.05}`: sharpness-aware minimisation around the optimizer (two passes a step); `null`: off",
    )

    @model_validator(mode="after")
    def _known(self) -> OptimizerConfig:
        import torch.optim as optim

        names = sorted(
            n
            for n in dir(optim)
            if isinstance(getattr(optim, n), type)
            and issubclass(getattr(optim, n), optim.Optimizer)
            and n != "Optimizer"
        )
        if self.name not in names:
            raise ValueError(f"unknown optimizer {self.name!r}.{_close(self.name, names)} Allowed: {', '.join(names)}")
        _check_params("optimizer", self.name, getattr(optim, self.name), self.params, skip=("params",))
        if self.weight_decay_scaling is not None and "weight_decay" not in self.params:
            raise ValueError("weight_decay_scaling scales params.weight_decay: give optimizer.params.weight_decay")
        return self


# Schedules that scale with the run: their params are fractions of the run's optimizer steps, stepped every batch.
RUN_SCHEDULES: dict[str, dict[str, Any]] = {
    "cosine": {"warmup": 0.0, "final_lr": 0.0},  # linear warm-up, then cosine to final_lr x the base lr
    "step": {"warmup": 0.0, "milestones": [0.5, 0.75], "gamma": 0.1},  # warm-up, then x gamma at each fraction
}


class SchedulerConfig(_Section):
    """``cosine`` / ``step``: carspotter's run-scaled schedules; or any ``torch.optim.lr_scheduler`` class by name."""

    name: str | None = Field(
        "MultiStepLR",
        description="`cosine` or `step`: carspotter's schedules that scale with the run, stepped every batch and laid "
        "out over `trainer.max_epochs` (so `--set trainer.max_epochs=N` keeps the shape; a `--resume` that raises it "
        "continues on the longer schedule), built from torch's `LinearLR`, `CosineAnnealingLR`, `MultiStepLR` and "
        "`SequentialLR`; or any `torch.optim.lr_scheduler` class taking plain values (`MultiStepLR`, "
        "`ReduceLROnPlateau`, ...; their epochs are absolute); or `null`: a constant learning rate. Lambda schedulers "
        "are not offered (no `eval` of strings)",
    )
    params: dict[str, Any] = Field(
        default_factory=lambda: {"milestones": [67, 82, 95, 107], "gamma": 0.1},
        description="the schedule's parameters (the default: the thesis's milestones); `cosine`: "
        "`{warmup: 0.05, final_lr: 0.01}`, linear warm-up over that fraction of the run, then cosine down to "
        "`final_lr` × the base lr; `step`: `{warmup: 0, milestones: [0.5, 0.75], gamma: 0.1}`, decay by `gamma` at "
        "those fractions of the run; a torch class: its keyword arguments",
    )
    interval: Literal["epoch", "step"] = Field(
        "epoch",
        description="torch classes: step per epoch or per batch; `cosine` and `step` are always stepped per batch",
    )
    monitor: str = Field("val/loss", description="the metric `ReduceLROnPlateau` watches (no other scheduler reads it)")

    @model_validator(mode="after")
    def _known(self) -> SchedulerConfig:
        from torch.optim import lr_scheduler

        if self.name is None:
            return self
        if self.name in RUN_SCHEDULES:
            _check_run_schedule(self.name, self.params)
            return self
        names = [*RUN_SCHEDULES, *scheduler_names()]
        if self.name not in names:
            raise ValueError(f"unknown scheduler {self.name!r}.{_close(self.name, names)} Allowed: {', '.join(names)}")
        _check_params("scheduler", self.name, getattr(lr_scheduler, self.name), self.params, skip=("optimizer",))
        return self


def _check_run_schedule(name: str, params: dict[str, Any]) -> None:
    allowed = RUN_SCHEDULES[name]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"scheduler {name!r} has no parameter(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    p = {**allowed, **params}
    if not isinstance(p["warmup"], int | float) or not 0.0 <= p["warmup"] < 1.0:
        raise ValueError(f"scheduler {name!r}: warmup is a fraction of the run in [0, 1), got {p['warmup']!r}")
    if name == "cosine" and (not isinstance(p["final_lr"], int | float) or p["final_lr"] < 0):
        raise ValueError(f"scheduler 'cosine': final_lr is a fraction of the base lr (>= 0), got {p['final_lr']!r}")
    if name == "step":
        ms = p["milestones"]
        if (
            not isinstance(ms, list)
            or not all(isinstance(m, int | float) and p["warmup"] < m < 1 for m in ms)
            or ms != sorted(ms)
        ):
            raise ValueError(
                f"scheduler 'step': milestones are increasing fractions of the run between warmup and 1, got {ms!r}"
            )
        if not isinstance(p["gamma"], int | float) or p["gamma"] <= 0:
            raise ValueError(f"scheduler 'step': gamma must be a positive number, got {p['gamma']!r}")


def scheduler_names() -> list[str]:
    from torch.optim import lr_scheduler

    # LambdaLR and friends take Python callables; the seed built them with eval() of YAML strings. Never again.
    excluded = {"LambdaLR", "MultiplicativeLR", "LRScheduler", "SequentialLR", "ChainedScheduler"}
    return sorted(
        n
        for n in dir(lr_scheduler)
        if isinstance(getattr(lr_scheduler, n), type)
        and not n.startswith("_")
        and n not in excluded
        and (issubclass(getattr(lr_scheduler, n), lr_scheduler.LRScheduler) or n == "ReduceLROnPlateau")
    )


class EarlyStoppingConfig(_Section):
    monitor: Literal["val/loss", "val/top1"] = Field(
        "val/top1", description="the metric watched: `val/top1` (higher is better) or `val/loss` (lower is better)"
    )
    patience: int = Field(15, ge=1, description="epochs without improvement of `monitor` before training stops")
    min_delta: float = Field(0.0, description="the smallest change of `monitor` that counts as an improvement")


class EmaConfig(_Section):
    """An exponential moving average of the weights (timm's ModelEmaV3); validated, selected and saved when on."""

    decay: float = Field(
        0.9998, gt=0.0, lt=1.0, description="the average's decay per optimizer step (the weight of the old average)"
    )
    warmup: bool = Field(
        True,
        description="timm's warm-up: the effective decay is min(decay, 1 − (1 + step)^−2/3), so short runs average "
        "over fewer steps",
    )


class TrainerConfig(_Section):
    max_epochs: int = Field(
        200, ge=1, description="training epochs (the run-scaled schedules `cosine` and `step` are laid out over them)"
    )
    batch_size: int = Field(64, ge=1, description="photos per training batch (per process under DDP)")
    seed: int = Field(42, description="makes runs and the validation split repeatable")
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = Field(
        "auto",
        description="`auto`: `bf16-mixed` on a GPU, `32-true` on a CPU (bf16 autocast learned worse there: see "
        "Recognising real cars)",
    )
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = Field(
        "auto", description="passed to Lightning; Apple's `mps` is not offered (never tested)"
    )
    devices: int | str = Field(1, description="passed to Lightning: how many devices, or which ones")
    num_nodes: int = Field(
        1,
        ge=1,
        description="multi-node DDP: every node runs the same command (see Several GPUs and machines)",
    )
    strategy: Literal["auto", "ddp", "ddp_find_unused_parameters_true"] = Field(
        "auto",
        description="multi-GPU / multi-node: `ddp` (see Several GPUs and machines); FSDP is not offered (never "
        "tested, and these models fit one device)",
    )
    early_stopping: EarlyStoppingConfig | None = Field(
        None,
        description="`{monitor: val/top1, patience: 15, min_delta: 0}` to stop early; `null`: train all "
        "`trainer.max_epochs`",
    )
    limit_train_batches: int | float | None = Field(
        None,
        description="shrink training epochs (tests, smoke runs): a number of batches (int) or a fraction (float), "
        "passed to Lightning; `null`: whole epochs",
    )
    limit_val_batches: int | float | None = Field(
        None,
        description="shrink validation epochs (tests, smoke runs), like `trainer.limit_train_batches`",
    )
    gradient_clip_val: float | None = Field(
        None,
        description="clip the gradients' norm to this value (Lightning's `gradient_clip_val`); `null`: no clipping",
    )
    compile: bool = Field(False, description="`torch.compile` the model (training and validation)")
    channels_last: bool | Literal["auto"] = Field(
        "auto", description="channels_last memory layout; `auto`: on with CUDA or the fast pipeline"
    )
    freeze_backbone_epochs: int = Field(
        0,
        ge=0,
        description="fine-tuning: train only the classifier for the first K epochs (backbone without gradient, its "
        "BatchNorm in eval mode)",
    )
    ema: EmaConfig | None = Field(
        None,
        description="`{decay: 0.9998, warmup: true}`: an exponential moving average of the weights (timm's "
        "`ModelEmaV3`). Validation, `best.ckpt`, the test score, `evaluate`, `predict` and `export` all use the "
        "averaged weights; the trained ones travel in the checkpoint for `--resume`; `null`: no weight averaging",
    )
    select: Literal["best_val", "last"] = Field(
        "best_val",
        description="which epoch becomes `best.ckpt` (and is tested): `best_val`, the highest val top-1; `last`, the "
        "final epoch (sound after a schedule that decays to near zero, above all with EMA on small validation "
        "splits). `summary.json`'s `selected_by` says which rule chose",
    )


class OutputConfig(_Section):
    runs_dir: Path = Field(Path("runs"), description="where the run folders go")
    run_name: str | None = Field(
        None,
        description="the run folder's name; `null`: `<model>-<timestamp>`; an existing folder is never overwritten",
    )
    tags: list[str] = Field(default_factory=list, description="recorded in the summary and the trackers")
    description: str = Field("", description="free text, recorded in the summary and the trackers")


LOGGER_NAMES = ("csv", "tensorboard", "mlflow", "wandb")


class LoggingConfig(_Section):
    """Where a run's metrics go besides its folder; ``csv`` (``metrics.csv``) is always written."""

    loggers: list[Literal["csv", "tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=lambda: ["csv", "mlflow"],
        description="any of `csv` (`metrics.csv`, always on), `mlflow`, `tensorboard`, `wandb`",
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow store; `null`: `sqlite:///<runs_dir>/mlflow.db`, artifacts in `<runs_dir>/mlartifacts`",
    )
    experiment: str = Field("carspotter", description="MLflow experiment / W&B project")

    @field_validator("loggers", mode="after")
    @classmethod
    def _csv_always(cls, value: list[str]) -> list[str]:
        return ["csv", *dict.fromkeys(n for n in value if n != "csv")]


class Config(_Section):
    data: DataConfig = Field(
        default_factory=DataConfig,
        description="the prepared dataset and how its photos become batches: input size, normalisation, "
        "augmentation, pipeline, class balance",
    )
    model: ModelConfig = Field(
        default_factory=ModelConfig, description="the architecture, its arguments and the weights it starts from"
    )
    loss: LossConfig = Field(default_factory=LossConfig, description="the training loss")
    optimizer: OptimizerConfig = Field(
        default_factory=OptimizerConfig, description="the optimizer, its learning rates and weight decay"
    )
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig, description="the learning-rate schedule")
    trainer: TrainerConfig = Field(
        default_factory=TrainerConfig,
        description="the training loop: epochs, batch size, seed, devices, precision, weight averaging and which "
        "epoch is kept",
    )
    output: OutputConfig = Field(default_factory=OutputConfig, description="where the run folder goes and its labels")
    logging: LoggingConfig = Field(
        default_factory=LoggingConfig, description="where a run's metrics go besides its folder"
    )

    @model_validator(mode="after")
    def _sam_precision(self) -> Config:
        if self.optimizer.sam is not None and self.trainer.precision == "16-mixed":
            # Lightning's fp16 loss scaler steps the optimizer without the closure SAM's second pass needs.
            raise ValueError("optimizer.sam does not work with trainer.precision 16-mixed (use bf16-mixed or 32-true)")
        return self

    @model_validator(mode="after")
    def _balanced_loss(self) -> Config:
        if self.data.class_balance == "loss":
            if self.loss.name != "CrossEntropyLoss":
                raise ValueError(f"data.class_balance loss weights CrossEntropyLoss; loss.name is {self.loss.name}")
            if "weight" in self.loss.params:
                raise ValueError("data.class_balance loss sets the class weights itself; remove loss.params.weight")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def parse_config(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a plain dict; every problem is reported with its key path."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{source}: invalid configuration: " + _format_errors(exc)) from None


def packaged_configs() -> dict[str, Path]:
    """The configs shipped inside the package (the repository's ``configs/``), by name: ``stanford_ghostnet``, ..."""
    folder = Path(str(resources.files("carspotter") / "configs"))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def config_path(path: str | Path) -> Path:
    """``path`` itself when it is a file; else, for a bare name (``stanford_ghostnet`` or ``stanford_ghostnet.yaml``),
    the packaged config of that name, so that a pip-installed carspotter finds its recipes without a checkout."""
    path = Path(path)
    if path.is_file():
        return path
    packaged, name = packaged_configs(), path.name.removesuffix(".yaml")
    if path.parent == Path(".") and name in packaged:
        return packaged[name]
    raise UserError(f"{path}: no such config file (the packaged ones, usable by name: {', '.join(packaged)})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (a file, a packaged config's name, or the defaults when ``path`` is None) and apply
    ``--set key=value`` overrides."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = config_path(path)
        source = str(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(raw, dict):
            raise UserError(f"{path}: the top level must be a mapping of sections (data, model, ...)")
    for item in overrides or []:
        apply_override(raw, item)
    return parse_config(raw, source)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) in place; list items are addressed by index (``a.0.b``)."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected key=value, e.g. trainer.max_epochs=2")
    key, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    set_by_path(raw, key.strip(), value)


def set_by_path(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` (``a.b.0.c``) in a raw config dict, whether its list items are in YAML's short or long form.

    An augmentation is addressed by its long form, ``data.image_augmentations.1.params.degrees``, in both ``--set``
    and sweep spaces: a short-form item (``- RandomAffine: {degrees: 25}``) is rewritten to ``{name, params}`` first.
    """
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            index = _index(node, part, key)
            node[index] = _long_form_item(node[index], nxt, ".".join(parts[: i + 1]), key)
            node = node[index]
            continue
        if part not in node or node[part] is None:
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, key)] = value
    else:
        node[last] = value


def _long_form_item(item: Any, nxt: str, item_key: str, key: str) -> Any:
    """A list item about to be entered at ``nxt``: ``{Name: params}`` or ``"Name"`` becomes ``{name, params}``."""
    if isinstance(item, str):
        item = {item: {}}
    if isinstance(item, dict) and len(item) == 1 and "name" not in item:
        ((name, params),) = item.items()
        item = {"name": name, "params": params or {}}
    if isinstance(item, dict) and "name" in item and nxt == item["name"]:
        rest = key.removeprefix(f"{item_key}.{nxt}").lstrip(".")
        raise UserError(
            f"{key}: address the parameters of a list item as {item_key}.params{'.' + rest if rest else ''} "
            f"(the item's class is {item_key}.name)"
        )
    return item


def _index(node: list[Any], part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise UserError(f"--set {key}: {part!r} is not an index of a list with {len(node)} item(s)")
    return int(part)


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key{_allowed_keys(err['loc'])}"
        lines.append(f"{loc or '<top>'}: {msg}")
    return "; ".join(lines)  # one line, like every user error


def _allowed_keys(loc: tuple[Any, ...]) -> str:
    model: Any = Config
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ""
        ann = field.annotation
        for candidate in getattr(ann, "__args__", (ann,)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
                break
        else:
            return ""
    keys = list(getattr(model, "model_fields", {}))
    bad = str(loc[-1])
    return f" {bad!r}.{_close(bad, keys)} Allowed: {', '.join(keys)}" if keys else ""


# The config's file and folder settings, by their keys from the top: a run saves them absolute, so that its config
# means the same from any working directory (resume, report, export).
PATH_KEYS = (("data", "path"), ("data", "cache_dir"), ("model", "pretrained"), ("output", "runs_dir"),
             ("loss", "distillation", "teacher"))  # fmt: skip


def with_absolute_paths(cfg: Config, base: str | Path | None = None) -> Config:
    """``cfg`` with every relative path of `PATH_KEYS` taken relative to ``base`` (default: the working directory)
    and made absolute."""
    root = Path(base) if base is not None else Path.cwd()
    raw = cfg.to_dict()
    for *sections, key in PATH_KEYS:
        parent = raw
        for section in sections:
            parent = parent.get(section) or {}
        value = parent.get(key)
        if value is not None and value != SELF_TEACHER and not is_hub_name(value) and not Path(value).is_absolute():
            parent[key] = str((root / value).absolute())
    return parse_config(raw)


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# The configuration reference, generated from the models above (each field's `description`), for the documentation.


def reference_markdown() -> str:
    """The configuration reference as Markdown, generated from `Config`: one ``## <section>`` heading per top-level
    section, its description, and a table of its keys (full dotted names; a nested section such as ``trainer.ema``
    has a row of its own and one per key inside it) with each key's type, default and description."""
    out: list[str] = []
    for section, field in Config.model_fields.items():
        model = _section_model(field.annotation)
        if model is None:
            raise TypeError(f"Config.{section} is not a section model")
        out += [f"## {section}", "", field.description or "", "", "| key | type | default | description |"]
        out += ["|---|---|---|---|", *_reference_rows(section, model), ""]
    return "\n".join(out)


def _reference_rows(prefix: str, model: type[BaseModel]) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}"
        default = "required" if field.is_required() else f"`{_yaml_text(field.get_default(call_default_factory=True))}`"
        cells = [f"`{key}`", _type_text(field.annotation), default, field.description or ""]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        nested = _section_model(field.annotation)
        if nested is not None:
            rows += _reference_rows(key, nested)
    return rows


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The section model of a field typed ``Model`` or ``Model | None``; None for anything else (lists included)."""
    candidates = get_args(annotation) if _is_union(annotation) else (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _type_text(annotation: Any) -> str:
    """A reader's name for a field's type: ``int``, ``path``, ``[int, int]``, ``a | b`` (a Literal), ``... or null``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if _is_union(annotation):
        names = [_type_text(a) for a in args if a is not type(None)]
        return " or ".join([*names, "null"] if type(None) in args else names)
    if origin is Literal:
        return " | ".join(_yaml_text(a) for a in args)
    if origin is tuple:
        return "[" + ", ".join("..." if a is Ellipsis else _type_text(a) for a in args) + "]"
    if origin is list:
        if args and args[0] is Transform:
            return "list of transforms"
        item = _type_text(args[0]) if args else "any"
        if item == "any":
            return "list"
        return f"list of ({item})" if " " in item else f"list of {item}s"
    if origin is dict or annotation is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    names = {str: "string", int: "int", float: "float", bool: "bool", Path: "path"}
    return names.get(annotation, "any") if isinstance(annotation, type) else "any"


def _yaml_text(value: Any) -> str:
    """``value`` as YAML flow text: ``null``, ``true``, ``[227, 227]``, ``{label_smoothing: 0.1}``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_yaml_text(k)}: {_yaml_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml_text(v) for v in value) + "]"
    text = str(value)
    try:
        plain = yaml.safe_load(text) == text and not any(c in text for c in ",[]{}#&*!|>'\"%@`")
    except yaml.YAMLError:
        plain = False
    return text if plain and text == text.strip() else json.dumps(text)


def _cell(text: str) -> str:
    """One Markdown table cell: on one line, ``|`` escaped."""
    return " ".join(text.split()).replace("|", "\\|")
