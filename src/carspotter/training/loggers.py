"""Experiment tracking: the loggers a config chooses (``logging.loggers``), built for one run folder.

``metrics.csv`` (written by `EpochMetricsCSV`) is the always-on CSV record. MLflow is on by default with a local
SQLite store shared by all runs of a runs folder (``<runs_dir>/mlflow.db``, artifacts in ``<runs_dir>/mlartifacts``)
or any tracking URI (a shared server). TensorBoard writes into the run folder; W&B is imported only when chosen and
reads its credentials from the environment (without ``WANDB_API_KEY`` it runs offline).

Several processes writing one SQLite store (parallel runs, sweep workers) is safe: the schema is created once under a
file lock, connections wait up to a minute for a busy database, and a write that still meets "database is locked"
is retried with backoff.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger

from carspotter.config import Config
from carspotter.errors import UserError

log = logging.getLogger(__name__)

MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
MLFLOW_RUN_ID_FILE = "mlflow_run_id"  # in the run folder: `train --resume` continues the same MLflow run
SQLITE_TIMEOUT_S = 60
_T = TypeVar("_T")


def local_tracking_uri(runs_dir: str | Path) -> str:
    """The default MLflow store of a runs folder (what `mlflow ui --backend-store-uri` takes)."""
    return f"sqlite:///{Path(runs_dir).resolve() / MLFLOW_DB}"


def mlflow_tracking_uri(cfg: Config) -> str:
    return cfg.logging.tracking_uri or local_tracking_uri(cfg.output.runs_dir)


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def _with_busy_timeout(uri: str) -> str:
    """SQLite URIs wait for a busy database instead of failing at once (SQLAlchemy's pysqlite ``timeout``)."""
    if _sqlite_path(uri) is None or "timeout=" in uri:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}timeout={SQLITE_TIMEOUT_S}"


def with_retry(fn: Callable[..., _T], *args: Any, attempts: int = 8, **kwargs: Any) -> _T:
    """Call ``fn``, retrying with exponential backoff while SQLite reports a locked or busy database."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # MLflow wraps sqlite3/SQLAlchemy errors in its own exception types
            text = str(exc).lower()
            if attempt == attempts - 1 or not ("database is locked" in text or "database is busy" in text):
                raise
            delay = min(0.2 * 2**attempt, 10.0)
            log.debug("tracking store busy (%s); retrying in %.1fs", exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def prepare_mlflow_store(uri: str, experiment: str, artifact_location: str | None = None) -> tuple[str, str]:
    """Make sure the store's schema and ``experiment`` exist; returns (uri to use, experiment id).

    For a local SQLite file the schema is created under a file lock, so concurrent first runs do not race on it; the
    first creation is copied from a per-user template (MLflow's migrations take seconds, a copy milliseconds).
    """
    from mlflow.tracking import MlflowClient

    db = _sqlite_path(uri)
    uri = _with_busy_timeout(uri)
    if db is None:
        client = MlflowClient(tracking_uri=uri)
        return uri, _get_or_create_experiment(client, experiment, artifact_location)
    db = db.resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db) + ".lock", timeout=300):
        if not db.exists():
            _copy_schema_template(db, artifact_location)
        client = MlflowClient(tracking_uri=uri)
        experiment_id = with_retry(_get_or_create_experiment, client, experiment, artifact_location)
    return uri, experiment_id


def _get_or_create_experiment(client: Any, name: str, artifact_location: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def _copy_schema_template(db: Path, artifact_location: str | None) -> None:
    """Create ``db`` with MLflow's current schema: a copy of a cached, freshly migrated empty store."""
    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    cache = Path(os.environ.get("CARSPOTTER_CACHE", Path.home() / ".cache" / "carspotter"))
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with FileLock(str(template) + ".lock", timeout=300):
            if not template.exists():
                tmp = template.with_suffix(f".tmp{os.getpid()}")
                tmp.unlink(missing_ok=True)
                store = SqlAlchemyStore(f"sqlite:///{tmp}", str(cache / "unused-artifacts"))
                store.engine.dispose()
                tmp.replace(template)
            shutil.copyfile(template, db)
    except OSError as exc:  # no writable cache: migrate in place
        log.debug("no MLflow schema template (%s); creating the schema in place", exc)
        SqlAlchemyStore(f"sqlite:///{db}", artifact_location or str(db.parent / MLFLOW_ARTIFACTS)).engine.dispose()
        return
    # The template's "Default" experiment points into the cache; point it beside the store instead.
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (str(Path(artifact_location or db.parent / MLFLOW_ARTIFACTS) / "0"),),
        )


class SafeMLFlowLogger(MLFlowLogger):
    """`MLFlowLogger` whose writes survive a briefly locked SQLite store (other runs writing at the same time).

    After ``--resume`` the run re-does the work since its last checkpoint, and so logs again points the killed
    process had already sent (validation after the last checkpoint, steps of a half-done epoch). A resumed run
    sends a metric only at steps after the last one MLflow already holds for it (the re-done points are the same:
    a resumed run repeats the uninterrupted one), so no point appears twice.
    """

    def __init__(self, *args: Any, run_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, run_id=run_id, **kwargs)
        self.resumed = run_id is not None  # continuing a run MLflow already has
        self._stored_until: dict[str, int] = {}  # key -> its last step stored before this process, looked up once

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        metrics = self.not_yet_logged(metrics, step)
        if metrics:
            with_retry(super().log_metrics, metrics, step)

    def not_yet_logged(self, metrics: dict[str, float], step: int | None) -> dict[str, float]:
        """``metrics`` without those MLflow already holds at ``step`` or later (only a resumed run has any)."""
        if not self.resumed or step is None:
            return metrics
        return {k: v for k, v in metrics.items() if step > self._last_logged_step(k)}

    def _last_logged_step(self, key: str) -> int:
        """The last step of ``key`` stored before this process resumed the run (-1: none)."""
        if key not in self._stored_until:
            history = with_retry(self.experiment.get_metric_history, self.run_id, key)
            self._stored_until[key] = max((m.step for m in history), default=-1)
        return self._stored_until[key]

    def log_hyperparams(self, params: Any) -> None:
        with_retry(super().log_hyperparams, params)

    def finalize(self, status: str = "success") -> None:
        with_retry(super().finalize, status)


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


def build_loggers(cfg: Config, run_dir: Path) -> list[Logger]:
    """Lightning loggers for ``logging.loggers`` (``csv`` is the run folder's own ``metrics.csv``, no logger)."""
    chosen = cfg.logging.loggers
    loggers: list[Logger] = []
    if "tensorboard" in chosen:
        loggers.append(
            TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)
        )
    if "mlflow" in chosen:
        local = cfg.logging.tracking_uri is None
        artifacts = str((Path(cfg.output.runs_dir) / MLFLOW_ARTIFACTS).resolve()) if local else None
        uri, _ = prepare_mlflow_store(mlflow_tracking_uri(cfg), cfg.logging.experiment, artifacts)
        tags = {"mlflow.note.content": cfg.output.description, "carspotter.tags": ",".join(cfg.output.tags)}
        tags.update({f"tag.{t}": "true" for t in cfg.output.tags})
        id_file = run_dir / MLFLOW_RUN_ID_FILE
        mlflow_logger = SafeMLFlowLogger(
            experiment_name=cfg.logging.experiment,
            run_name=run_dir.name,
            tracking_uri=uri,
            tags=tags,
            artifact_location=artifacts,
            run_id=id_file.read_text().strip() if id_file.is_file() else None,
        )
        loggers.append(mlflow_logger)
    if "wandb" in chosen:
        loggers.append(_wandb_logger(cfg, run_dir))
    return loggers


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
            (run_dir / MLFLOW_RUN_ID_FILE).write_text(with_retry(lambda lg=logger: lg.run_id) + "\n")
        logger.log_hyperparams(params)


def log_run_end(loggers: list[Logger], summary: dict[str, Any], run_dir: Path) -> None:
    """The final summary as metrics, and ``best.ckpt`` / ``summary.json`` / ``metrics.csv`` as artifacts."""
    final = {
        _summary_key(k): float(v)
        for k, v in summary.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None
    }
    files = [run_dir / name for name in ("best.ckpt", "summary.json", "metrics.csv", "config.yaml")]
    for logger in loggers:
        step = summary.get("epochs_run") or 0
        if isinstance(logger, MLFlowLogger):
            client, run_id = logger.experiment, logger.run_id
            unsent = logger.not_yet_logged(final, step) if isinstance(logger, SafeMLFlowLogger) else final
            if unsent:  # a run killed after its summary was sent, then resumed, sends it once
                with_retry(client.log_batch, run_id, metrics=_mlflow_metrics(unsent, step))
            for path in files:
                if path.is_file():
                    with_retry(client.log_artifact, run_id, str(path))
            with_retry(client.set_terminated, run_id, "FINISHED")
        elif isinstance(logger, TensorBoardLogger):
            logger.log_metrics(final, step=step)
            logger.finalize("success")
        else:  # W&B
            logger.log_metrics(final)
            experiment = logger.experiment
            for path in files:
                if path.is_file() and path.name != "summary.json":  # W&B keeps its own files/summary.json
                    experiment.save(str(path), base_path=str(run_dir), policy="now")
            experiment.finish()


def _summary_key(key: str) -> str:
    """``test_top1`` → ``test/top1``; the rest of the summary under ``summary/`` (``summary/val_top1`` is the best)."""
    return f"test/{key.removeprefix('test_')}" if key.startswith("test_") else f"summary/{key}"


def _mlflow_metrics(values: dict[str, float], step: int) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key=k, value=v, timestamp=now, step=step) for k, v in values.items()]
