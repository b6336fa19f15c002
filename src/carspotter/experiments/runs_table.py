"""The runs table: the thesis's hosted dashboard, rebuilt from run folders in the terminal.

Every run folder under a runs folder is one row, read from its ``config.yaml``, ``metrics.csv`` and ``summary.json``
(a run without a summary is still training, crashed or was pruned: its row says ``incomplete``). Rows can be
filtered (``val_top1>0.5,model=ghostnet_thesis,tags~demo``), sorted by any column, written as CSV, and the curves
of several runs overlaid in one PNG.
"""

from __future__ import annotations

import csv
import io
import json
import operator
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from carspotter.errors import UserError
from carspotter.evaluation.plots import metric_series, pyplot, save_figure
from carspotter.formats.run_dir import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, read_epoch_metrics

COLUMNS = [
    "run_id",
    "status",
    "model",
    "image_size",
    "batch",
    "optimizer",
    "lr",
    "weight_decay",
    "scheduler",
    "dropout",
    "head_width",
    "params",
    "epochs",
    "best_train_loss",
    "best_train_top1",
    "best_val_loss",
    "best_val_top1",
    "test_top1",
    "teacher_top1",
    "tags",
]
# What a narrow terminal shows first; the table keeps COLUMNS' order. `--columns` chooses, `--csv` gives all.
_PRIORITY = [
    "run_id",
    "best_val_top1",
    "test_top1",
    "model",
    "epochs",
    "status",
    "lr",
    "weight_decay",
    "batch",
    "image_size",
    "dropout",
    "head_width",
    "params",
    "optimizer",
    "scheduler",
    "best_val_loss",
    "best_train_top1",
    "best_train_loss",
    "teacher_top1",
    "tags",
]
_NUMERIC = {"batch", "lr", "weight_decay", "dropout", "head_width", "params", "epochs"} | {
    c for c in COLUMNS if c.startswith(("best_", "test_", "teacher_"))
}
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
    "=": operator.eq,
    "~": lambda value, text: str(text).lower() in str(value).lower(),
}
_CLAUSE = re.compile(r"^\s*([a-z_0-9]+)\s*(>=|<=|!=|>|<|=|~)\s*(.*?)\s*$")


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def _min(rows: list[dict[str, str]], key: str) -> float | None:
    values = [float(r[key]) for r in rows if r.get(key)]
    return min(values) if values else None


def _max(rows: list[dict[str, str]], key: str) -> float | None:
    values = [float(r[key]) for r in rows if r.get(key)]
    return max(values) if values else None


def read_run(run_dir: Path) -> dict[str, Any]:
    """One row of the table; missing pieces are ``None`` (an empty cell)."""
    run_dir = Path(run_dir)
    try:
        cfg = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{run_dir / CONFIG_FILE}: unreadable run config ({exc})") from None
    summary_path = run_dir / SUMMARY_FILE
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    rows = read_epoch_metrics(run_dir / METRICS_FILE)
    model, optimizer, scheduler = cfg.get("model", {}), cfg.get("optimizer", {}), cfg.get("scheduler", {})
    model_args, opt_params = model.get("args") or {}, optimizer.get("params") or {}
    size = cfg.get("data", {}).get("image_size")
    return {
        "run_id": run_dir.name,
        "status": "done" if summary else "incomplete",
        "model": model.get("name"),
        "image_size": "x".join(str(s) for s in size) if isinstance(size, list) else size,
        "batch": cfg.get("trainer", {}).get("batch_size"),
        "optimizer": optimizer.get("name"),
        "lr": opt_params.get("lr"),
        # per step: as the run derived it (optimizer.weight_decay_scaling), else as configured
        "weight_decay": summary.get("weight_decay_per_step", opt_params.get("weight_decay")),
        "scheduler": scheduler.get("name"),
        "dropout": model_args.get("drop_rate"),
        "head_width": model_args.get("hidden_channels"),
        "params": summary.get("num_parameters"),
        "epochs": len(rows),
        "best_train_loss": _min(rows, "train_loss"),
        "best_train_top1": _max(rows, "train_top1"),
        "best_val_loss": _min(rows, "val_loss"),
        "best_val_top1": _max(rows, "val_top1"),
        "test_top1": summary.get("test_top1"),
        # loss.distillation: the teacher's own test top-1 (its run's summary), beside the student's
        "teacher_top1": (summary.get("teacher") or {}).get("test_top1"),
        "tags": ",".join(cfg.get("output", {}).get("tags") or []),
    }


def collect_runs(runs_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of every run folder directly under ``runs_dir`` (sweep trials included), oldest folder name first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir}: no such runs folder (set --runs-dir to output.runs_dir of your config)")
    return [read_run(p) for p in sorted(runs_dir.iterdir()) if _is_run_dir(p)]


def filter_runs(rows: list[dict[str, Any]], expr: str | None) -> list[dict[str, Any]]:
    """Keep rows matching every comma-separated clause ``COLUMN OP VALUE`` (OP: = != < <= > >= ~ (contains))."""
    if not expr:
        return rows
    for clause in [c for c in expr.split(",") if c.strip()]:
        match = _CLAUSE.match(clause)
        if not match or match.group(1) not in COLUMNS:
            raise UserError(
                f"--filter {clause.strip()!r}: expected COLUMN OP VALUE with OP one of = != < <= > >= ~ "
                f"and COLUMN one of {', '.join(COLUMNS)}"
            )
        column, op, text = match.groups()
        target: Any = text
        if column in _NUMERIC and op != "~":
            try:
                target = float(text)
            except ValueError:
                raise UserError(f"--filter {clause.strip()!r}: {column} is numeric, {text!r} is not a number") from None
        rows = [r for r in rows if r[column] is not None and _OPS[op](_typed(r[column], column, op), target)]
    return rows


def _typed(value: Any, column: str, op: str) -> Any:
    return float(value) if column in _NUMERIC and op != "~" else (value if op == "~" else str(value))


def sort_runs(rows: list[dict[str, Any]], key: str | None) -> list[dict[str, Any]]:
    """Sort by a column, ``-column`` for descending; empty cells go last either way."""
    if not key:
        return rows
    descending = key.startswith("-")
    column = key.lstrip("-")
    if column not in COLUMNS:
        raise UserError(f"--sort {key!r}: unknown column; one of {', '.join(COLUMNS)} (prefix - for descending)")
    present = [r for r in rows if r[column] is not None]
    missing = [r for r in rows if r[column] is None]
    return sorted(present, key=lambda r: r[column], reverse=descending) + missing


def parse_columns(text: str) -> list[str]:
    """``--columns run_id,lr,best_val_top1`` → the columns, checked against `COLUMNS`."""
    columns = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown or not columns:
        raise UserError(
            f"--columns {text!r}: unknown column(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(COLUMNS)}"
        )
    return columns


def format_cell(column: str, value: Any) -> str:
    """A value as the terminal table shows it: percentages for top-1, millions for params, 3 significant digits."""
    if value is None:
        return ""
    if column == "params":
        return f"{float(value) / 1e6:.2f}M"
    if column in ("best_train_top1", "best_val_top1", "test_top1"):
        return f"{float(value):.1%}"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def fit_columns(rows: list[dict[str, Any]], width: int, gap: int = 3) -> list[str]:
    """The most useful columns (`_PRIORITY`) whose headers and cells fit in ``width`` characters, in table order.

    A column takes its widest cell or header plus ``gap`` (padding and separator); ``run_id`` is always shown.
    """
    chosen: set[str] = set()
    used = 1
    for column in _PRIORITY:
        need = max([len(column), *(len(format_cell(column, r[column])) for r in rows)]) + gap
        if used + need <= width or not chosen:
            chosen.add(column)
            used += need
    return [c for c in COLUMNS if c in chosen]


def runs_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


def resolve_run(run: str | Path, runs_dir: str | Path) -> Path:
    """A run given as a folder path or as a run id under ``runs_dir``."""
    for candidate in (Path(run), Path(runs_dir) / str(run)):
        if _is_run_dir(candidate):
            return candidate
    raise UserError(f"{run}: not a run folder and not a run id under {runs_dir}")


def plot_runs(run_dirs: list[Path], out: str | Path) -> Path:
    """Loss and top-1 per epoch of several runs overlaid (train dashed, validation solid), as one PNG."""
    plt = pyplot()
    fig, (ax_loss, ax_top1) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run_dir in run_dirs:
        rows = read_epoch_metrics(run_dir / METRICS_FILE)
        if not rows:
            raise UserError(f"{run_dir}: no metrics.csv rows to plot yet")
        epochs = [int(r["epoch"]) for r in rows]
        for ax, metric in ((ax_loss, "loss"), (ax_top1, "top1")):
            (line,) = ax.plot(
                epochs, metric_series(rows, f"val_{metric}"), marker="o", markersize=3, label=f"{run_dir.name} val"
            )  # markers: a 1-epoch run is a point, not an empty line
            ax.plot(
                epochs,
                metric_series(rows, f"train_{metric}"),
                "--",
                marker="o",
                markersize=3,
                color=line.get_color(),
                alpha=0.7,
            )
    for ax, title in ((ax_loss, "loss (train dashed)"), (ax_top1, "top-1 (train dashed)")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax_top1.legend(fontsize="small")
    return save_figure(fig, out, dpi=120)
