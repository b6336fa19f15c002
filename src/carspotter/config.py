"""The training configuration: YAML → typed, validated objects at load time.

Unknown keys, wrong types and unknown names (model, transform, optimizer, scheduler, loss) are `UserError`s naming
the key path and the allowed values, so a typo fails in seconds instead of hours into a run.
"""

from __future__ import annotations

import difflib
import inspect
from importlib import resources
from pathlib import Path
from typing import Any, Literal

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

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

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
    path: Path = Path("data/stanford")
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
    grayscale: bool = False
    normalize: bool = True
    mean: tuple[float, ...] | None = None  # None: the thesis's statistics for RGB or grayscale
    std: tuple[float, ...] | None = None
    crop_to_bbox: bool = False
    erase_background: bool = False
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    validate_on_test: bool = False
    num_workers: int = Field(2, ge=0)
    # classic: per-image PIL decode + transforms in DataLoader workers; fast: decoded-image cache + batched
    # augmentation on the device (data/fast.py); auto: fast unless an augmentation has no batched equivalent
    pipeline: Literal["classic", "fast", "auto"] = "auto"
    cache_dir: Path | None = None  # decoded-image cache of the fast pipeline; None: <data.path>/.cache
    image_augmentations: list[Transform] = Field(default_factory=list)
    tensor_augmentations: list[Transform] = Field(default_factory=list)
    # Whole-batch mixing of training images and labels (torchvision.transforms.v2 MixUp / CutMix, num_classes from the
    # data); with several entries one of them is drawn per batch. Runs on the training device in both pipelines.
    batch_augmentations: list[Transform] = Field(default_factory=list)
    # Unbalanced classes (data/balance.py): sampler draws every class equally often each epoch; loss weights the
    # cross-entropy by 1 / class frequency (mean 1); none: neither.
    class_balance: Literal["none", "sampler", "loss"] = "none"

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
    name: str = "ghostnet_thesis"
    args: dict[str, Any] = Field(default_factory=dict)
    # a weights file (state dict, .safetensors, carspotter checkpoint) or hf-hub:OWNER/NAME (models/hub.py)
    pretrained: str | None = None

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


class LossConfig(_Section):
    name: str = "CrossEntropyLoss"
    params: dict[str, Any] = Field(default_factory=lambda: {"label_smoothing": 0.1})

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

    reference_steps: int = Field(gt=0)
    power: float = Field(1.0, ge=0.0, le=1.0)


class OptimizerConfig(_Section):
    name: str = "AdamW"
    params: dict[str, Any] = Field(default_factory=lambda: {"lr": 1e-3, "weight_decay": 0.6})
    backbone_lr: float | None = Field(None, gt=0.0)  # None: one lr for all; else the backbone's (params.lr: the head's)
    # false: no weight decay on biases and normalisation weights (every parameter with fewer than 2 dimensions)
    weight_decay_norm_and_bias: bool = True
    # params.weight_decay as the per-step decay of a run of reference_steps optimizer steps, scaled to each run's own
    # step count (training/optimization.py: per_step_weight_decay); null: the same per-step value for every run
    weight_decay_scaling: WeightDecayScaling | None = None

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

    name: str | None = "MultiStepLR"  # None: constant learning rate
    params: dict[str, Any] = Field(default_factory=lambda: {"milestones": [67, 82, 95, 107], "gamma": 0.1})
    interval: Literal["epoch", "step"] = "epoch"  # torch classes only; cosine and step are always stepped per batch
    monitor: str = "val/loss"  # only ReduceLROnPlateau reads it

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
    monitor: Literal["val/loss", "val/top1"] = "val/top1"
    patience: int = Field(15, ge=1)
    min_delta: float = 0.0


class EmaConfig(_Section):
    """An exponential moving average of the weights (timm's ModelEmaV3); validated, selected and saved when on."""

    decay: float = Field(0.9998, gt=0.0, lt=1.0)
    # timm's warm-up: the effective decay is min(decay, 1 - (1 + step)^-2/3), so short runs average over fewer steps
    warmup: bool = True


class TrainerConfig(_Section):
    max_epochs: int = Field(200, ge=1)
    batch_size: int = Field(64, ge=1)
    seed: int = 42
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"  # auto: bf16-mixed on GPU, fp32 on CPU
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"  # Apple's mps: never tested here, so not offered
    devices: int | str = 1
    num_nodes: int = Field(1, ge=1)  # multi-node DDP: every node runs the same command (see README)
    strategy: Literal["auto", "ddp", "ddp_find_unused_parameters_true"] = "auto"  # ddp: tested on CPU (fsdp: untested)
    early_stopping: EarlyStoppingConfig | None = None
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    gradient_clip_val: float | None = None
    compile: bool = False  # torch.compile the model (training and validation)
    channels_last: bool | Literal["auto"] = "auto"  # auto: on with CUDA or the fast pipeline
    freeze_backbone_epochs: int = Field(0, ge=0)  # fine-tuning: train only the classifier for the first K epochs
    ema: EmaConfig | None = None  # null: no weight averaging
    # Which weights become best.ckpt (and are tested): best_val = the epoch with the highest val/top1; last = the
    # final epoch, the sound choice after a schedule that decays to (near) zero, above all with EMA on small data.
    select: Literal["best_val", "last"] = "best_val"


class OutputConfig(_Section):
    runs_dir: Path = Path("runs")
    run_name: str | None = None  # default: <model>-<timestamp>; an existing folder is never overwritten
    tags: list[str] = Field(default_factory=list)
    description: str = ""


LOGGER_NAMES = ("csv", "tensorboard", "mlflow", "wandb")


class LoggingConfig(_Section):
    """Where a run's metrics go besides its folder; ``csv`` (``metrics.csv``) is always written."""

    loggers: list[Literal["csv", "tensorboard", "mlflow", "wandb"]] = Field(default_factory=lambda: ["csv", "mlflow"])
    tracking_uri: str | None = None  # MLflow; None: sqlite:///<runs_dir>/mlflow.db, artifacts in <runs_dir>/mlartifacts
    experiment: str = "carspotter"  # MLflow experiment / W&B project

    @field_validator("loggers", mode="after")
    @classmethod
    def _csv_always(cls, value: list[str]) -> list[str]:
        return ["csv", *dict.fromkeys(n for n in value if n != "csv")]


class Config(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

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


# The config's file and folder settings, by section and key: a run saves them absolute, so that its config means the
# same from any working directory (resume, report, export).
PATH_KEYS = (("data", "path"), ("data", "cache_dir"), ("model", "pretrained"), ("output", "runs_dir"))


def with_absolute_paths(cfg: Config, base: str | Path | None = None) -> Config:
    """``cfg`` with every relative path of `PATH_KEYS` taken relative to ``base`` (default: the working directory)
    and made absolute."""
    root = Path(base) if base is not None else Path.cwd()
    raw = cfg.to_dict()
    for section, key in PATH_KEYS:
        value = raw[section].get(key)
        if value is not None and not is_hub_name(value) and not Path(value).is_absolute():
            raw[section][key] = str((root / value).absolute())
    return parse_config(raw)


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
