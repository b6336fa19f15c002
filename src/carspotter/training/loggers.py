"""Experiment tracking: the loggers a config chooses (``logging.loggers``), built for one run folder.

``metrics.csv`` (written by `EpochMetricsCSV`) is the always-on CSV record. MLflow is on by default with a local
SQLite store shared by all runs of a runs folder (``<runs_dir>/mlflow.db``, artifacts in ``<runs_dir>/mlartifacts``)
or any tracking URI (a shared server). TensorBoard writes into the run folder; W&B is imported only when chosen and
reads its credentials from the environment (without ``WANDB_API_KEY`` it runs offline).

Several processes may write one SQLite store at once (parallel runs, sweep workers): MLflow's store waits up to 20 s
for a busy database on every write (its own ``busy_timeout``); a new store's schema is created by one process at a
time (`_schema_creation_lock`); two runs creating the same experiment at once both end up in it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment

from carspotter.config import Config
from carspotter.errors import UserError
from carspotter.formats.run_dir import SUMMARY_FILE, RunDir

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"


def local_tracking_uri(runs_dir: str | Path) -> str:
    """The default MLflow store of a runs folder (what `mlflow ui --backend-store-uri` takes)."""
    return f"sqlite:///{Path(runs_dir).resolve() / MLFLOW_DB}"


def mlflow_tracking_uri(cfg: Config, runs_dir: Path | None = None) -> str:
    """``logging.tracking_uri``, else the local store of ``runs_dir`` (default ``output.runs_dir``)."""
    return cfg.logging.tracking_uri or local_tracking_uri(runs_dir or cfg.output.runs_dir)


@contextmanager
def _schema_creation_lock(uri: str) -> Iterator[None]:
    """Hold a file lock beside a SQLite store while this process opens it (a no-op for other stores).

    Works around MLflow (3.17): opening a tracking store (constructing an `MlflowClient`) on an empty database creates
    the tables and runs the Alembic migrations (seconds) with no lock between processes, so parallel first runs on a
    new runs folder both migrate and all but one fail ("table ... already exists", "No such index"). MLflow takes such
    a lock only for its job and workspace stores (``mlflow.store.db.utils._safe_initialize_tables``). Drop this when
    the tracking store does the same, or create stores up front (``mlflow db upgrade``) instead.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///").split("?", 1)[0]).resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock", timeout=300):
        yield


def _get_or_create_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created if missing; another process creating it at the same moment is fine."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as exc:  # another run created it since the lookup
            if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            found = client.get_experiment_by_name(name)
    if found.lifecycle_stage == "deleted":
        raise UserError(
            f"MLflow experiment {name!r} is deleted in {client.tracking_uri}: restore it "
            f"(mlflow experiments restore --experiment-id {found.experiment_id}) or set another logging.experiment"
        )
    return found.experiment_id


def prepare_mlflow_store(uri: str, experiment: str, artifact_location: str | None = None) -> tuple[str, str]:
    """Make sure the store's schema and ``experiment`` exist; returns (uri, experiment id)."""
    from mlflow.tracking import MlflowClient

    with _schema_creation_lock(uri):
        client = MlflowClient(tracking_uri=uri)
    return uri, _get_or_create_experiment(client, experiment, artifact_location)


class SafeMLFlowLogger(MLFlowLogger):
    """`MLFlowLogger` that parallel runs can share a new SQLite store with, and that resumes without duplicates.

    Opening the store and creating the experiment are safe against other processes doing the same (see the module
    docstring). After ``--resume`` the run re-does the work since its last checkpoint, and so logs again points the
    killed process had already sent (validation after the last checkpoint, steps of a half-done epoch). A resumed run
    sends a metric only at steps after the last one MLflow already holds for it (the re-done points are the same:
    a resumed run repeats the uninterrupted one), so no point appears twice.
    """

    def __init__(self, *args: Any, tracking_uri: str, run_id: str | None = None, **kwargs: Any) -> None:
        with _schema_creation_lock(tracking_uri):  # MLflow's client opens (and if new, migrates) the store here
            super().__init__(*args, tracking_uri=tracking_uri, run_id=run_id, **kwargs)
        self.resumed = run_id is not None  # continuing a run MLflow already has
        self._stored_until: dict[str, int] = {}  # key -> its last step stored before this process, looked up once

    @property
    @rank_zero_experiment
    def experiment(self) -> MlflowClient:
        if self._experiment_id is None and self._run_id is None:  # Lightning's own lookup-then-create races
            self._experiment_id = _get_or_create_experiment(
                self._mlflow_client, self._experiment_name, self._artifact_location
            )
        return super().experiment

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        metrics = self.not_yet_logged(metrics, step)
        if metrics:
            super().log_metrics(metrics, step)

    def not_yet_logged(self, metrics: dict[str, float], step: int | None) -> dict[str, float]:
        """``metrics`` without those MLflow already holds at ``step`` or later (only a resumed run has any)."""
        if not self.resumed or step is None:
            return metrics
        return {k: v for k, v in metrics.items() if step > self._last_logged_step(k)}

    def _last_logged_step(self, key: str) -> int:
        """The last step of ``key`` stored before this process resumed the run (-1: none)."""
        if key not in self._stored_until:
            history = self.experiment.get_metric_history(self.run_id, key)
            self._stored_until[key] = max((m.step for m in history), default=-1)
        return self._stored_until[key]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists become their string form (MLflow params are strings)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple, dict)):
            flat[name] = str(value)
        else:
            flat[name] = value
    return flat


def build_loggers(cfg: Config, run_dir: Path, runs_dir: Path | None = None) -> list[Logger]:
    """Lightning loggers for ``logging.loggers`` (``csv`` is the run folder's own ``metrics.csv``, no logger).
    ``runs_dir``: the runs folder whose local MLflow store the run joins (default ``output.runs_dir``; a run's own
    teacher, inside its folder, joins the store of the runs folder above), its name there relative to it."""
    chosen = cfg.logging.loggers
    runs_dir = Path(runs_dir or cfg.output.runs_dir)
    loggers: list[Logger] = []
    if "tensorboard" in chosen:
        loggers.append(
            TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)
        )
    if "mlflow" in chosen:
        local = cfg.logging.tracking_uri is None
        artifacts = str((runs_dir / MLFLOW_ARTIFACTS).resolve()) if local else None
        tags = {"mlflow.note.content": cfg.output.description, "carspotter.tags": ",".join(cfg.output.tags)}
        tags.update({f"tag.{t}": "true" for t in cfg.output.tags})
        id_file = RunDir(run_dir).mlflow_run_id
        mlflow_logger = SafeMLFlowLogger(
            experiment_name=cfg.logging.experiment,
            run_name=_name_under(run_dir, runs_dir),
            tracking_uri=mlflow_tracking_uri(cfg, runs_dir),
            tags=tags,
            artifact_location=artifacts,
            run_id=id_file.read_text().strip() if id_file.is_file() else None,
        )
        loggers.append(mlflow_logger)
    if "wandb" in chosen:
        loggers.append(_wandb_logger(cfg, run_dir))
    return loggers


def _name_under(run_dir: Path, runs_dir: Path) -> str:
    """``run_dir``'s name in the tracking store: its path below ``runs_dir`` (``RUN/teacher`` for a run's own teacher),
    else its folder's name."""
    try:
        return run_dir.resolve().relative_to(runs_dir.resolve()).as_posix()
    except ValueError:
        return run_dir.name


def _wandb_logger(cfg: Config, run_dir: Path) -> Logger:
    try:
        import wandb  # noqa: F401
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:
        raise UserError(
            "logging.loggers has wandb but the wandb package is not installed: pip install 'carspotter[wandb]'"
        ) from None
    # Credentials come only from the environment (WANDB_API_KEY, or `wandb login`'s netrc); none: offline mode.
    offline = os.environ.get("WANDB_MODE") == "offline" or not (
        os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE")
    )
    return WandbLogger(
        name=run_dir.name,
        save_dir=str(run_dir),
        project=cfg.logging.experiment,
        tags=list(cfg.output.tags),
        notes=cfg.output.description,
        offline=offline,
    )


def log_run_start(loggers: list[Logger], cfg: Config, num_parameters: int, run_dir: Path) -> None:
    """The flattened config, parameter count, tags and description, before the first epoch."""
    params = {**flatten(cfg.to_dict()), "num_parameters": num_parameters}
    for logger in loggers:
        if isinstance(logger, SafeMLFlowLogger):
            if logger.resumed:  # MLflow params are immutable; a resume may change trainer limits
                continue
            (RunDir(run_dir).mlflow_run_id).write_text(f"{logger.run_id}\n")
        logger.log_hyperparams(params)


def log_run_end(loggers: list[Logger], summary: dict[str, Any], run_dir: Path) -> None:
    """The final summary as metrics, and ``best.ckpt`` / ``summary.json`` / ``metrics.csv`` as artifacts."""
    final = {
        _summary_key(k): float(v)
        for k, v in summary.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None
    }
    files = [RunDir(run_dir).best_ckpt, RunDir(run_dir).summary, RunDir(run_dir).metrics, RunDir(run_dir).config]
    for logger in loggers:
        step = summary.get("epochs_run") or 0
        if isinstance(logger, MLFlowLogger):
            client, run_id = logger.experiment, logger.run_id
            unsent = logger.not_yet_logged(final, step) if isinstance(logger, SafeMLFlowLogger) else final
            if unsent:  # a run killed after its summary was sent, then resumed, sends it once
                client.log_batch(run_id, metrics=_mlflow_metrics(unsent, step))
            for path in files:
                if path.is_file():
                    client.log_artifact(run_id, str(path))
            client.set_terminated(run_id, "FINISHED")
        elif isinstance(logger, TensorBoardLogger):
            logger.log_metrics(final, step=step)
            logger.finalize("success")
        else:  # W&B
            logger.log_metrics(final)
            experiment = logger.experiment
            for path in files:
                if path.is_file() and path.name != SUMMARY_FILE:  # W&B keeps its own files/summary.json
                    experiment.save(str(path), base_path=str(run_dir), policy="now")
            experiment.finish()


def _summary_key(key: str) -> str:
    """``test_top1`` → ``test/top1``; the rest of the summary under ``summary/`` (``summary/val_top1`` is the best)."""
    return f"test/{key.removeprefix('test_')}" if key.startswith("test_") else f"summary/{key}"


def _mlflow_metrics(values: dict[str, float], step: int) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key=k, value=v, timestamp=now, step=step) for k, v in values.items()]
