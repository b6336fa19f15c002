"""The files of a run folder, by name, and the reader of its per-epoch metrics.

Kept apart from `carspotter.training` so that the commands that only read run folders (`runs`, `report`,
`models --runs`) start without importing Lightning.
"""

from __future__ import annotations

import csv
from pathlib import Path

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.csv"
BEST_CKPT = "best.ckpt"


def read_epoch_metrics(path: Path) -> list[dict[str, str]]:
    """The rows of a run's ``metrics.csv`` (one per finished epoch); none while the file does not exist yet."""
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
