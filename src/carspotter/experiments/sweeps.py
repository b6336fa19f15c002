"""Hyper-parameter sweeps with Optuna: what the thesis searched by hand, as a study any number of workers can join.

A search space is YAML::

    parameters:
      optimizer.params.weight_decay: {type: float, low: 0.01, high: 1.0, log: true}
      model.args.hidden_channels: {type: categorical, choices: [320, 640, 1280]}
      trainer.batch_size: {type: int, low: 32, high: 128, step: 32}
    pruner: {n_startup_trials: 2, n_warmup_steps: 1}   # optional: MedianPruner settings
    sampler: {seed: 0}                                  # optional: TPESampler settings

Every key is a config key path (as for ``--set``); each is checked against the base config before the first trial.
Each trial is an ordinary tracked run (run folder, MLflow); the TPE sampler proposes, the median pruner stops trials
whose validation top-1 falls below the median of earlier trials at the same epoch.

Storage is a SQLite file (``<runs_dir>/optuna.db``) by default: workers on one machine share it. Workers on several
machines share a database server: ``--storage postgresql://user:pass@host/db`` (or ``mysql+pymysql://...``) and the
same ``--study`` name on every machine.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import optuna
import yaml
from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy.exc import SQLAlchemyError

from carspotter.config import load_config, parse_config, save_config, set_by_path
from carspotter.errors import UserError
from carspotter.formats.run_dir import RunDir
from carspotter.training.run import train

log = logging.getLogger(__name__)

OPTUNA_DB = "optuna.db"
OBJECTIVE = "val/top1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamSpec(_Strict):
    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
        elif self.low is None or self.high is None or not self.low <= self.high:
            raise ValueError(f"{self.type} needs 'low' <= 'high'")
        elif self.log and self.low <= 0:
            raise ValueError("log scale needs 'low' > 0")
        return self

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(name, self.choices)
        if self.type == "int":
            step = int(self.step or 1)
            return trial.suggest_int(name, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def example(self) -> Any:
        """A value of the right type, to check the key path against the config schema."""
        if self.type == "categorical":
            return self.choices[0]
        return int(self.low) if self.type == "int" else float(self.low)


class PrunerSpec(_Strict):
    n_startup_trials: int = Field(2, ge=0)  # trials that always run to the end before pruning starts
    n_warmup_steps: int = Field(1, ge=0)  # epochs of every trial that are never pruned


class SamplerSpec(_Strict):
    seed: int | None = None
    n_startup_trials: int = Field(5, ge=0)  # random trials before TPE takes over


class SearchSpace(_Strict):
    parameters: dict[str, ParamSpec]
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)


def load_space(path: str | Path, base_raw: dict[str, Any]) -> SearchSpace:
    """Read and check a search space: its own format, then every key path against the base config."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such search-space file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        space = SearchSpace.model_validate(raw)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc})") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise UserError(f"{path}: invalid search space: {problems}") from None
    if not space.parameters:
        raise UserError(f"{path}: 'parameters' is empty; nothing to search")
    bad = []
    for key, spec in space.parameters.items():
        trial_raw = copy.deepcopy(base_raw)
        try:
            set_by_path(trial_raw, key, spec.example())
            parse_config(trial_raw, source=key)
        except UserError as exc:
            bad.append(f"{key} ({str(exc).splitlines()[-1].strip()})")
    if bad:
        raise UserError(f"{path}: parameter(s) not valid for the base config: {'; '.join(bad)}")
    return space


class OptunaPruning(L.Callback):
    """Reports ``val/top1`` to the trial after every validation; stops the run when the pruner says so."""

    def __init__(self, trial: optuna.Trial, monitor: str = OBJECTIVE) -> None:
        self.trial = trial
        self.monitor = monitor
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        epoch = trainer.current_epoch
        self.trial.report(float(trainer.callback_metrics[self.monitor]), step=epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            trainer.should_stop = True  # a clean stop keeps the run folder complete; the sweep then marks it pruned


def default_storage(runs_dir: str | Path) -> str:
    return f"sqlite:///{Path(runs_dir).resolve() / OPTUNA_DB}"


def open_study(storage: str, study_name: str, space: SearchSpace) -> optuna.Study:
    """Create or join ``study_name``; a local SQLite file is set up under a lock, with a generous busy timeout."""
    sampler = optuna.samplers.TPESampler(seed=space.sampler.seed, n_startup_trials=space.sampler.n_startup_trials)
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=space.pruner.n_startup_trials, n_warmup_steps=space.pruner.n_warmup_steps
    )
    kwargs = dict(study_name=study_name, direction="maximize", sampler=sampler, pruner=pruner, load_if_exists=True)
    if not storage.startswith("sqlite:///"):
        try:
            return optuna.create_study(storage=optuna.storages.RDBStorage(storage), **kwargs)
        except ImportError as exc:
            raise UserError(f"--storage {storage}: the database driver is not installed ({exc})") from None
        except SQLAlchemyError as exc:  # an unknown scheme, a malformed URL, a server that does not answer
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"--storage {storage}: not a usable Optuna storage ({first}); give sqlite:///PATH, "
                "postgresql://... or mysql+pymysql://..."
            ) from None
    db = Path(storage.removeprefix("sqlite:///").split("?", 1)[0])
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db) + ".lock", timeout=300):  # schema and study creation race between workers otherwise
        rdb = optuna.storages.RDBStorage(storage, engine_kwargs={"connect_args": {"timeout": 60}})
        return optuna.create_study(storage=rdb, **kwargs)


@dataclass
class SweepResult:
    study_name: str
    storage: str
    best_value: float | None
    best_params: dict[str, Any]
    best_run_dir: Path | None
    best_config: Path | None
    importances: dict[str, float]
    counts: dict[str, int] = field(default_factory=dict)


def run_sweep(
    base_config: str | Path,
    space_path: str | Path,
    trials: int,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    overrides: list[str] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> SweepResult:
    """Run ``trials`` trials in this process (joining the study if it exists), then report on the whole study."""
    base_cfg = load_config(base_config, overrides)  # checks the base config before anything runs
    base_raw = base_cfg.to_dict()
    space = load_space(space_path, base_raw)
    study_name = study_name or Path(space_path).stem
    storage = storage or default_storage(base_cfg.output.runs_dir)
    study = open_study(storage, study_name, space)

    def objective(trial: optuna.Trial) -> float:
        raw = copy.deepcopy(base_raw)
        for key, spec in space.parameters.items():
            set_by_path(raw, key, spec.suggest(trial, key))
        output = raw["output"]
        output["run_name"] = f"{study_name}-trial{trial.number:03d}"
        output["tags"] = [*output.get("tags", []), f"sweep:{study_name}", f"trial:{trial.number}"]
        cfg = parse_config(raw, source=f"trial {trial.number}")
        pruning = OptunaPruning(trial)
        result = train(cfg, progress=progress, extra_callbacks=[pruning])
        trial.set_user_attr("run_dir", str(result.run_dir))
        if pruning.pruned_at is not None:
            log.info("trial %d pruned after epoch %d (%s)", trial.number, pruning.pruned_at, result.run_dir)
            raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at}")
        value = result.summary.get("val_top1")
        return float("nan") if value is None else float(value)

    log.info("study %r in %s: %d trial(s) in this worker", study_name, storage, trials)
    # A trial that crashes (e.g. out of GPU memory at a large batch size) is marked failed and the sweep goes on;
    # a configuration mistake (UserError) stops it.
    study.optimize(objective, n_trials=trials, catch=(RuntimeError,))
    return summarise_study(study, storage, Path(out_dir or Path(base_cfg.output.runs_dir) / "sweeps" / study_name))


def summarise_study(study: optuna.Study, storage: str, out_dir: Path) -> SweepResult:
    """Best trial, its config as a ready-to-train YAML, and parameter importances (with ≥ 2 completed trials)."""
    states = optuna.trial.TrialState
    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in states}
    complete = [t for t in study.get_trials(deepcopy=False, states=(states.COMPLETE,)) if not math.isnan(t.value)]
    best_value, best_params, best_run, best_config = None, {}, None, None
    if complete:
        best = max(complete, key=lambda t: t.value)
        best_value, best_params = best.value, dict(best.params)
        best_run = Path(best.user_attrs["run_dir"]) if "run_dir" in best.user_attrs else None
        if best_run is not None and RunDir(best_run).config.is_file():
            cfg = load_config(RunDir(best_run).config)
            sweep_tags = [t for t in cfg.output.tags if not t.startswith(("sweep:", "trial:"))]
            cfg.output.run_name = None
            cfg.output.tags = sweep_tags
            cfg.output.description = (
                f"best trial {best.number} of sweep {study.study_name} (val top-1 {best_value:.4f})"
            )
            out_dir.mkdir(parents=True, exist_ok=True)
            best_config = out_dir / "best_config.yaml"
            save_config(cfg, best_config)
    importances: dict[str, float] = {}
    if len(complete) >= 2:
        try:
            importances = dict(optuna.importance.get_param_importances(study))
        except (RuntimeError, ValueError) as exc:  # e.g. every completed trial had the same parameters
            log.info("no parameter importances: %s", exc)
    return SweepResult(
        study_name=study.study_name,
        storage=storage,
        best_value=best_value,
        best_params=best_params,
        best_run_dir=best_run,
        best_config=best_config,
        importances=importances,
        counts={k: v for k, v in counts.items() if v},
    )
