"""`train(cfg)`: one run, in its own folder, selected on validation and tested once at the end.

A run folder holds ``config.yaml`` (fully resolved), ``best.ckpt`` (the selected epoch: ``trainer.select``),
``last.ckpt``, ``metrics.csv`` (one row per epoch), ``summary.json`` and ``results.png`` (the curves). ``resume``
continues an interrupted run from its ``last.ckpt``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from carspotter.config import SELF_TEACHER, Config, parse_config, save_config, with_absolute_paths
from carspotter.data.dataset import CarsDataModule, eval_loader
from carspotter.data.epochs import SeedEachEpoch
from carspotter.data.fast import FastCarsDataModule
from carspotter.errors import UserError
from carspotter.evaluation.calibration import calibrate_checkpoint
from carspotter.evaluation.plots import plot_training_curves
from carspotter.evaluation.scoring import EvalResult
from carspotter.formats.checkpoint import CheckpointInfo, read_checkpoint
from carspotter.formats.run_dir import (
    BEST_CKPT,
    CONFIG_FILE,
    LAST_CKPT,
    SUMMARY_FILE,
    RunDir,
    load_run_config,
    read_epoch_metrics,
)
from carspotter.models import create_model
from carspotter.models.weights import init_from_weights
from carspotter.runtime import Runtime, inference_runtime, training_runtime
from carspotter.training.callbacks import (
    DenseProgressBar,
    EpochMetricsCSV,
    ResendEpochEndMetrics,
    Throughput,
)
from carspotter.training.checkpoint_io import AtomicCheckpointIO
from carspotter.training.distill import load_teacher
from carspotter.training.finetune import FreezeBackbone
from carspotter.training.loggers import build_loggers, flatten, log_run_end, log_run_start
from carspotter.training.module import CarClassifier
from carspotter.writable import check_writable

log = logging.getLogger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during `train`: the run folder keeps its last complete epoch (``last.ckpt``), ready for --resume."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"training interrupted; continue with `carspotter train --resume {run_dir}`")
        self.run_dir = run_dir


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    rank_zero: bool = True  # False in the extra processes of a multi-GPU run: they return an empty summary

    @property
    def best_ckpt(self) -> Path:
        return RunDir(self.run_dir).best_ckpt


def new_run_dir(cfg: Config) -> Path:
    """A fresh folder under ``runs_dir``; an existing name gets a numeric suffix instead of being overwritten."""
    runs_dir = Path(cfg.output.runs_dir)
    base = cfg.output.run_name or f"{cfg.model.name.replace('/', '-')}-{datetime.now():%Y%m%d-%H%M%S}"
    runs_dir.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        candidate = runs_dir / (base if i == 1 else f"{base}-{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise UserError(f"{runs_dir}: could not find a free run folder name for {base!r}")


def build_model(cfg: Config, num_classes: int, class_names: list[str] | None = None) -> torch.nn.Module:
    in_chans = 1 if cfg.data.grayscale else 3
    model = create_model(cfg.model.name, num_classes=num_classes, in_chans=in_chans, **cfg.model.args)
    if cfg.model.pretrained is not None:
        report = init_from_weights(model, cfg.model.pretrained, class_names)
        log.info("pretrained weights from %s: %s", cfg.model.pretrained, report)
    return model


_CONFIG_FAILURES = (TypeError, ValueError, RuntimeError, KeyError, AttributeError, IndexError)


def build_model_checked(cfg: Config, datamodule: CarsDataModule) -> torch.nn.Module:
    try:
        return build_model(cfg, datamodule.dataset.num_classes, datamodule.class_names)
    except _CONFIG_FAILURES as exc:
        raise UserError(f"model: {cfg.model.name} with args {cfg.model.args} cannot be built ({exc})") from None


def check_buildable(cfg: Config, model: torch.nn.Module, datamodule: CarsDataModule) -> None:
    """Build the transforms, batch mixing, optimizer and scheduler once and run the augmentations on one blank
    image, turning a config value that only fails when used into a `UserError` naming its section."""
    from PIL import Image

    from carspotter.data.batch_augment import build_batch_mixing
    from carspotter.data.transforms import TrainTransform
    from carspotter.training.finetune import parameter_groups
    from carspotter.training.optimization import build_optimizer, build_scheduler

    height, width = cfg.data.image_size
    try:
        batch_transform = getattr(datamodule, "batch_transform", None)
        if batch_transform is not None:
            blank = torch.zeros(2, height, width, 1 if cfg.data.grayscale else 3, dtype=torch.uint8)
            batch_transform(blank, train=True)
        else:
            TrainTransform(cfg.data)(Image.new("RGB", (width, height)), (0, 0, width, height))
    except _CONFIG_FAILURES as exc:
        raise UserError(f"data.image_augmentations / data.tensor_augmentations: {exc}") from None
    try:
        mixing = build_batch_mixing(cfg.data, datamodule.dataset.num_classes)
        if mixing is not None:
            mixing(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))
    except _CONFIG_FAILURES as exc:
        raise UserError(f"data.batch_augmentations: {exc}") from None
    try:
        optimizer = build_optimizer(cfg, parameter_groups(model, cfg))
    except _CONFIG_FAILURES as exc:
        raise UserError(f"optimizer: {cfg.optimizer.name} {cfg.optimizer.params}: {exc}") from None
    try:
        build_scheduler(cfg, optimizer, total_steps=max(2, cfg.trainer.max_epochs))
    except _CONFIG_FAILURES as exc:
        raise UserError(f"scheduler: {cfg.scheduler.name} {cfg.scheduler.params}: {exc}") from None


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Lightning's subprocess launcher starts the other DDP ranks by running this command line again, with rank 0's
# environment; the process group that could broadcast the folder's name exists only inside `fit`, after the callbacks
# and loggers that write into the folder are built, and the name (timestamped, given a suffix when taken) cannot be
# derived twice. So rank 0 hands the folder it made to the ranks it launches through the environment, as Lightning
# hands them the seed (PL_GLOBAL_SEED).
RUN_DIR_ENV = "CARSPOTTER_RUN_DIR"
TEACHER_DIR = "teacher"  # loss.distillation.teacher: self: the run's own teacher, a run folder inside the run's


def launch_rank_zero() -> bool:
    """False in a process that Lightning (or torchrun/SLURM) started as a non-zero rank of a distributed run.

    Not Lightning's `rank_zero_only.rank`: before the process group exists it reads the first of RANK, LOCAL_RANK,
    SLURM_PROCID, so the first process of a second node (LOCAL_RANK=0, NODE_RANK=1) would pass for rank 0 and make
    a run folder of its own."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def _rank_run_dir(cfg: Config) -> Path:
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    if cfg.output.run_name:
        return Path(cfg.output.runs_dir) / cfg.output.run_name
    raise UserError("multi-node training needs output.run_name set (the same on every node) to share one run folder")


def train(
    cfg: Config,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
    extra_callbacks: list[L.Callback] | None = None,
) -> RunResult:
    """Train one run and test its best checkpoint once. With ``resume``, ``cfg`` may change only `RESUME_MAY_CHANGE`.

    Under DDP every process runs this function; only rank 0 creates the run folder, logs, shows progress, writes
    the summary and tests. ``extra_callbacks`` are added to the trainer (sweeps use this for pruning). With
    ``loss.distillation.teacher: self`` the run first trains its own teacher (`train_with_own_teacher`).
    """
    if cfg.loss.distillation is not None and cfg.loss.distillation.teacher == SELF_TEACHER:
        return train_with_own_teacher(cfg, resume=resume, progress=progress, extra_callbacks=extra_callbacks)
    return train_one(cfg, resume=resume, progress=progress, extra_callbacks=extra_callbacks)


def train_with_own_teacher(
    cfg: Config,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
    extra_callbacks: list[L.Callback] | None = None,
) -> RunResult:
    """Born-again distillation (Furlanello et al., 2018) in one run folder: the teacher is the same config without
    distillation, trained into ``<run>/teacher/`` (a run folder of its own), then the run itself learns from it.

    Each stage resumes on its own: ``resume`` continues the teacher if it did not finish, then the student from its
    ``last.ckpt`` if it has one. The run's summary holds the student's own minutes; the teacher's are in its
    ``teacher`` entry (and ``teacher/summary.json``)."""
    t = cfg.trainer
    several = str(t.devices) not in ("1", "auto") or (t.devices == "auto" and torch.cuda.device_count() > 1)
    if several or t.num_nodes != 1:
        raise UserError("loss.distillation.teacher: self trains the teacher, then the student, in one process; on "
                        "several devices train the teacher first (without loss.distillation) and name its best.ckpt")
    if resume is None:
        check_writable(cfg.output.runs_dir, "runs folder")
        run_dir, cfg = open_run_dir(cfg, None, rank_zero=True)  # saves config.yaml: the run can resume from here on
        os.environ.pop(RUN_DIR_ENV, None)
    else:
        run_dir = Path(resume)
        check_resume_config(cfg, load_run_config(run_dir))
    teacher_dir = run_dir / TEACHER_DIR
    if not (teacher_dir / SUMMARY_FILE).is_file():
        log.info("loss.distillation.teacher: self: first the teacher (these settings, no distillation) into %s, "
                 "then the run itself from it", teacher_dir)  # fmt: skip
        teacher_resume = teacher_dir if RunDir(teacher_dir).last_ckpt.is_file() else None
        if teacher_resume is None and teacher_dir.exists():
            shutil.rmtree(teacher_dir)  # begun but not one epoch finished: nothing to keep
        try:
            train_one(teacher_config(cfg, run_dir), resume=teacher_resume, progress=progress,
                      logging_runs_dir=Path(cfg.output.runs_dir))  # fmt: skip
        except UserError:
            if resume is None and not teacher_dir.exists():  # refused before anything was trained: leave nothing
                shutil.rmtree(run_dir)
            raise
        except TrainingInterrupted:
            raise TrainingInterrupted(run_dir) from None
    log.info("teacher trained (%s); now the run itself learns from it", teacher_dir)
    return train_one(
        cfg,
        resume=run_dir if RunDir(run_dir).last_ckpt.is_file() else None,
        progress=progress,
        extra_callbacks=extra_callbacks,
        into=run_dir,
        teacher_ckpt=RunDir(teacher_dir).best_ckpt,
    )


def teacher_config(cfg: Config, run_dir: Path) -> Config:
    """The config of ``run_dir``'s own teacher: the same settings without distillation, saved in ``<run>/teacher``."""
    raw = cfg.to_dict()
    raw["loss"]["distillation"] = None
    out = raw["output"]
    raw["output"] = {**out, "runs_dir": str(run_dir), "run_name": TEACHER_DIR, "tags": [*out["tags"], "teacher"],
                     "description": f"the teacher of {run_dir.name}"}  # fmt: skip
    return parse_config(raw)


def train_one(
    cfg: Config,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
    extra_callbacks: list[L.Callback] | None = None,
    into: Path | None = None,
    teacher_ckpt: Path | None = None,
    logging_runs_dir: Path | None = None,
) -> RunResult:
    """`train` without a teacher to train first. ``into``: the run folder, made before (instead of a new one);
    ``teacher_ckpt``: the distillation teacher when the config says ``self``; ``logging_runs_dir``: the runs folder
    whose local tracking store the run logs to, when it is nested in another run's folder."""
    started = time.perf_counter()
    rank_zero = launch_rank_zero()
    progress = progress and rank_zero
    if resume is not None and not RunDir(Path(resume)).last_ckpt.is_file():
        raise UserError(f"{resume}: nothing to resume (no last.ckpt); start a new run instead")
    if rank_zero:
        check_writable(resume or cfg.output.runs_dir, "runs folder")
    if resume is not None:
        read_checkpoint(RunDir(Path(resume)).last_ckpt)  # weights only: a hostile or foreign file stops here, unread
        check_resume_config(cfg, load_run_config(resume))
    runtime = training_runtime(cfg)
    # The data first: a missing or incomplete dataset fails before a run folder is made.
    datamodule = build_datamodule(cfg, runtime, progress)
    # Everything the config builds, built (and tried on one image) before a run folder exists: a value that passes
    # validation but fails at run time (`p: high`, `lr: -1`) is one error line and leaves nothing behind.
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    model = build_model_checked(cfg, datamodule)
    check_buildable(cfg, model, datamodule)
    teacher = None
    if cfg.loss.distillation is not None:  # checked before the run folder exists
        path = teacher_ckpt or Path(cfg.loss.distillation.teacher)
        teacher = load_teacher(path, datamodule.class_names, datamodule.preprocessing)
    run_dir, cfg = open_run_dir(cfg, resume or into, rank_zero)
    module = CarClassifier(
        model,
        cfg,
        run_checkpoint_info(cfg, datamodule, run_dir),
        batch_transform=getattr(datamodule, "batch_transform", None),
        channels_last=runtime.channels_last,
        class_weights=datamodule.train_loss_weights(),
        teacher=teacher,
    )
    loggers = build_loggers(cfg, run_dir, logging_runs_dir) if rank_zero else []
    log_run_start(loggers, cfg, count_parameters(model), run_dir)
    callbacks = build_callbacks(cfg, run_dir, progress, extra_callbacks)
    trainer = build_trainer(cfg, runtime, run_dir, callbacks, loggers, progress)
    if rank_zero:
        log.info("run folder: %s (%s)", run_dir, runtime.why)
        log.info("%s", datamodule.describe_balance())
    fit(trainer, module, datamodule, run_dir, ckpt_path=None if resume is None else RunDir(run_dir).last_ckpt)
    if not trainer.is_global_zero:
        return RunResult(run_dir=run_dir, summary={}, rank_zero=False)

    test = None
    if not cfg.data.validate_on_test:  # the test split selected the checkpoint: no test score to report
        test = score_test_split(module, datamodule, run_dir, trainer.strategy.root_device, progress)
    summary = summarise(cfg, run_dir, count_parameters(model), started, test)
    summary["calibration"] = calibrate_run(cfg, datamodule, run_dir, trainer.strategy.root_device)
    summary["optimizer_steps"] = int(trainer.estimated_stepping_batches)
    summary["weight_decay_per_step"] = module.weight_decay_per_step
    if teacher is not None:
        summary["teacher"] = teacher.describe()
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    plot_training_curves(RunDir(run_dir).metrics, RunDir(run_dir).curves)
    log_run_end(loggers, summary, run_dir)
    return RunResult(run_dir=run_dir, summary=summary)


def build_datamodule(cfg: Config, runtime: Runtime, progress: bool) -> CarsDataModule:
    if runtime.pipeline == "fast":
        return FastCarsDataModule(cfg.data, cfg.trainer.batch_size, cfg.trainer.seed, progress=progress)
    return CarsDataModule(cfg.data, batch_size=cfg.trainer.batch_size, seed=cfg.trainer.seed)


def open_run_dir(cfg: Config, resume: str | Path | None, rank_zero: bool) -> tuple[Path, Config]:
    """The run's folder and its config, whose ``output.run_name`` is the folder's name. Rank 0 makes the folder (or
    reopens ``resume``, an existing folder) and saves the config there; the other ranks find it."""
    if resume is not None:
        run_dir = Path(resume)
    else:
        run_dir = new_run_dir(cfg) if rank_zero else _rank_run_dir(cfg)
    cfg = parse_config({**cfg.to_dict(), "output": {**cfg.output.model_dump(mode="json"), "run_name": run_dir.name}})
    cfg = with_absolute_paths(cfg)  # the saved config (and every checkpoint's) works from any directory
    if rank_zero:
        save_config(cfg, run_dir / CONFIG_FILE)
        os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
    return run_dir, cfg


def run_checkpoint_info(cfg: Config, datamodule: CarsDataModule, run_dir: Path) -> CheckpointInfo:
    """What every checkpoint of the run says about its model (`CarClassifier.on_save_checkpoint` writes it)."""
    return CheckpointInfo(
        model_name=cfg.model.name,
        model_args=dict(cfg.model.args),
        num_classes=datamodule.dataset.num_classes,
        in_chans=1 if cfg.data.grayscale else 3,
        class_names=datamodule.class_names,
        preprocessing=datamodule.preprocessing,
        classes=datamodule.dataset.car_names,
        config=cfg,
        path=RunDir(run_dir).best_ckpt,
    )


def build_callbacks(
    cfg: Config, run_dir: Path, progress: bool, extra_callbacks: list[L.Callback] | None = None
) -> list[L.Callback]:
    """best.ckpt and last.ckpt, metrics.csv, the per-epoch seed, images/s, the progress line, and what the config
    asks for (frozen backbone, early stopping), then ``extra_callbacks``."""
    # Two checkpoint callbacks: Lightning 2.6 writes `save_last` only in epochs that improved the monitored metric.
    # With trainer.select=last, "best" is simply the latest epoch's weights (monitor None: saved every epoch).
    best = ModelCheckpoint(
        dirpath=run_dir,
        filename=Path(BEST_CKPT).stem,
        monitor="val/top1" if cfg.trainer.select == "best_val" else None,
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
        auto_insert_metric_name=False,
        save_on_train_epoch_end=True,
    )
    last = ModelCheckpoint(
        dirpath=run_dir,
        filename=Path(LAST_CKPT).stem,
        monitor=None,
        save_top_k=1,
        every_n_epochs=1,
        enable_version_counter=False,
        save_on_train_epoch_end=True,
    )
    callbacks: list[L.Callback] = [
        SeedEachEpoch(cfg.trainer.seed), EpochMetricsCSV(RunDir(run_dir).metrics), best, last, Throughput(),
        ResendEpochEndMetrics(),
    ]  # fmt: skip
    if progress:
        callbacks.append(DenseProgressBar(refresh_rate=1))
    if cfg.trainer.freeze_backbone_epochs > 0:
        if cfg.model.pretrained is None:
            log.warning("trainer.freeze_backbone_epochs without model.pretrained: the frozen backbone is random")
        callbacks.append(FreezeBackbone(cfg.trainer.freeze_backbone_epochs))
    if cfg.trainer.early_stopping is not None:
        es = cfg.trainer.early_stopping
        mode = "min" if es.monitor == "val/loss" else "max"
        callbacks.append(EarlyStopping(monitor=es.monitor, patience=es.patience, min_delta=es.min_delta, mode=mode))
    callbacks.extend(extra_callbacks or [])
    return callbacks


def build_trainer(
    cfg: Config, runtime: Runtime, run_dir: Path, callbacks: list[L.Callback], loggers: list[Any], progress: bool
) -> L.Trainer:
    return L.Trainer(
        default_root_dir=run_dir,
        max_epochs=cfg.trainer.max_epochs,
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes,
        strategy=cfg.trainer.strategy,
        precision=runtime.precision,  # type: ignore[arg-type]
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        logger=loggers or False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=cfg.trainer.limit_train_batches,
        limit_val_batches=cfg.trainer.limit_val_batches,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        deterministic=False,
    )


def fit(
    trainer: L.Trainer, module: CarClassifier, datamodule: CarsDataModule, run_dir: Path, ckpt_path: Path | None
) -> None:
    """``trainer.fit``; Ctrl-C becomes `TrainingInterrupted`, which says how to resume."""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SystemExit:  # Lightning's answer to Ctrl-C: it saved nothing more and exits 1
        if trainer.interrupted:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning left Ctrl-C ignored
            raise TrainingInterrupted(run_dir) from None
        raise
    if trainer.interrupted:
        raise TrainingInterrupted(run_dir)


def score_test_split(
    module: CarClassifier, datamodule: CarsDataModule, run_dir: Path, device: torch.device, progress: bool
) -> EvalResult | None:
    """The test split scored once by ``trainer.test`` with best.ckpt: to the last digit what `carspotter evaluate
    best.ckpt` reports on this device. So the tester is set up as `evaluate` runs:

    - a trainer of its own on one device (rank 0's after a DDP run, whose DistributedSampler would pad the split with
      repeated images), without the run's callbacks and loggers, and with `inference_runtime`'s precision and layout
      (evaluate's: bf16 and channels_last on a GPU, fp32 on a CPU), whatever the run trained with;
    - fed `evaluate`'s loader (`eval_loader`: PIL resize and normalise) with either pipeline: the fast pipeline's uint8
      test cache would be normalised on the device instead, another computation;
    - best.ckpt loaded through `CarClassifier.on_load_checkpoint` and scored with `eval_model`, so with EMA on it
      scores the averaged weights, the ones best.ckpt holds as its model and `evaluate` loads.
    """
    best = RunDir(run_dir).best_ckpt
    if not best.is_file():
        return None
    cfg = module.cfg
    setup = inference_runtime(str(device))
    module.set_channels_last(setup.channels_last)
    tester = L.Trainer(
        default_root_dir=run_dir,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision=setup.precision,  # type: ignore[arg-type]
        logger=False,
        callbacks=[DenseProgressBar(refresh_rate=1)] if progress else [],
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
    )
    loader = eval_loader(
        datamodule.dataset, "test", module.info.preprocessing, cfg.trainer.batch_size, cfg.data.num_workers
    )
    # ckpt_path="best" needs the fit trainer's checkpoint callback; this names the same file. Lightning would warn
    # that the callbacks saved in it are missing: on purpose, the test restores the weights only.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks used to create")
        tester.test(module, dataloaders=loader, ckpt_path=best, verbose=False, weights_only=True)
    return module.test_result


def calibrate_run(
    cfg: Config, datamodule: CarsDataModule, run_dir: Path, device: torch.device
) -> dict[str, Any] | None:
    """best.ckpt's temperature and "not sure" threshold, fitted on the run's validation split and stored in it
    (`carspotter.evaluation.calibration`); None when the run validated on test (nothing held out to fit on)."""
    best = RunDir(run_dir).best_ckpt
    if cfg.data.validate_on_test or not best.is_file() or len(datamodule.val_frame) == 0:
        log.info("best.ckpt not calibrated: no validation photos held out from training")
        return None
    calibration = calibrate_checkpoint(
        best, datamodule.dataset, datamodule.val_frame, f"validation split of {Path(cfg.data.path).resolve().name}",
        device=str(device),
        batch_size=cfg.trainer.batch_size, workers=cfg.data.num_workers,
    )  # fmt: skip
    return calibration.to_dict()


def summarise(
    cfg: Config, run_dir: Path, num_parameters: int, started: float, test: EvalResult | None
) -> dict[str, Any]:
    """Best epoch from the metrics CSV; ``test``: the selected checkpoint on the test split (`score_test_split`)."""
    rows = read_epoch_metrics(RunDir(run_dir).metrics)
    if cfg.trainer.select == "last":
        best_row = rows[-1] if rows else {}
    else:
        scored = [r for r in rows if r.get("val_top1")]
        best_row = max(scored, key=lambda r: float(r["val_top1"])) if scored else {}

    def num(row: dict[str, str], key: str) -> float | None:
        return float(row[key]) if row.get(key) else None

    return {
        "run_id": run_dir.name,
        "run_dir": str(run_dir),
        "model": {"name": cfg.model.name, "args": cfg.model.args},
        "num_parameters": num_parameters,
        "image_size": list(cfg.data.image_size),
        "epochs_run": len(rows),
        "best_epoch": int(best_row["epoch"]) if best_row else None,
        "selected_by": selection_rule(cfg),
        "val_top1": num(best_row, "val_top1"),
        "val_top5": num(best_row, "val_top5"),
        "val_loss": num(best_row, "val_loss"),
        "best_train_top1": max((float(r["train_top1"]) for r in rows if r.get("train_top1")), default=None),
        "test_top1": test.top1 if test else None,
        "test_top5": test.top5 if test else None,
        "test_balanced_top1": test.balanced_top1 if test else None,
        "test_loss": test.loss if test else None,
        "test_n": test.n if test else None,
        "validated_on_test": cfg.data.validate_on_test,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "tags": cfg.output.tags,
        "description": cfg.output.description,
    }


def selection_rule(cfg: Config) -> str:
    """How best.ckpt was chosen, in words (the summary and the runs table show it)."""
    weights = "EMA weights" if cfg.trainer.ema is not None else "weights"
    if cfg.trainer.select == "last":
        return f"last epoch ({weights} at the end of the schedule)"
    split = "test split (thesis protocol)" if cfg.data.validate_on_test else "validation split"
    return f"highest val/top1 ({weights}, {split})"


# What a resumed run may change: how long it runs, how much of each epoch, how many loader processes (and `output`,
# which the resumed folder decides). Anything else (the model, the data, the recipe) would make the continued run a
# different experiment under the old run's name.
RESUME_MAY_CHANGE = (
    "trainer.max_epochs",
    "trainer.limit_train_batches",
    "trainer.limit_val_batches",
    "data.num_workers",
)


def check_resume_config(cfg: Config, saved: Config) -> None:
    """A `UserError` naming every setting ``cfg`` changes from the run's saved config beyond `RESUME_MAY_CHANGE`."""
    old, new = flatten(saved.to_dict()), flatten(cfg.to_dict())
    differ = (k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    changed = sorted(k for k in differ if k not in RESUME_MAY_CHANGE and not k.startswith("output."))
    if changed:
        raise UserError(
            f"--resume continues a run with its own settings; these differ from it: {', '.join(changed)} "
            f"(a resume may change only {', '.join(RESUME_MAY_CHANGE)}; start a new run for the rest)"
        )
