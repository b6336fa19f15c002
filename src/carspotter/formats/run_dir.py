"""The files of a run folder, by name (`RunDir`), and the readers of its per-epoch metrics and of its saved config.

Kept apart from `carspotter.training` so that the commands that only read run folders (`runs`, `report`,
`models --runs`) start without importing Lightning.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from carspotter.errors import UserError

if TYPE_CHECKING:
    from carspotter.config import Config

CONFIG_FILE = "config.yaml"  # the resolved config, paths absolute (`load_run_config`)
SUMMARY_FILE = "summary.json"  # what `train` measured; written last, so its presence means the run finished
METRICS_FILE = "metrics.csv"  # one row per finished epoch (`read_epoch_metrics`)
BEST_CKPT = "best.ckpt"  # the selected epoch's weights: what evaluate, predict and export take
LAST_CKPT = "last.ckpt"  # the last complete epoch, with optimizer state: what --resume continues
CURVES_PNG = "results.png"  # the training curves
REPORT_FILE = "report.html"  # `carspotter report`
MLFLOW_RUN_ID_FILE = "mlflow_run_id"  # `train --resume` continues the same MLflow run


@dataclass(frozen=True)
class RunDir:
    """A run folder and the path of each of its files."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def best_ckpt(self) -> Path:
        return self.path / BEST_CKPT

    @property
    def last_ckpt(self) -> Path:
        return self.path / LAST_CKPT

    @property
    def curves(self) -> Path:
        return self.path / CURVES_PNG

    @property
    def report(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def mlflow_run_id(self) -> Path:
        return self.path / MLFLOW_RUN_ID_FILE


def read_epoch_metrics(path: Path) -> list[dict[str, str]]:
    """The rows of a run's ``metrics.csv`` (one per finished epoch); none while the file does not exist yet."""
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> Config:
    """The run's saved config (with ``overrides``), its paths absolute: a run saved by an older carspotter kept
    them relative to the folder training started in, which is found again from ``output.runs_dir``."""
    from carspotter.config import load_config, with_absolute_paths

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{run_dir}: not a run folder (no {CONFIG_FILE})")
    cfg = load_config(path, overrides)
    return with_absolute_paths(cfg, started_in(Path(run_dir), cfg.output.runs_dir))


def started_in(run_dir: Path, runs_dir: Path) -> Path:
    """The folder a run was started in, given its ``output.runs_dir`` as saved: for ``runs`` and a run folder
    ``/work/runs/r1``, ``/work``. An absolute ``runs_dir`` (or one that does not end the run's path): the working
    directory, as before."""
    parent = run_dir.resolve().parent
    if runs_dir.is_absolute() or runs_dir == Path("."):
        return Path.cwd() if runs_dir.is_absolute() else parent
    parts = runs_dir.parts
    if ".." not in parts and parent.parts[-len(parts):] == parts:
        return Path(*parent.parts[: -len(parts)])
    return Path.cwd()
