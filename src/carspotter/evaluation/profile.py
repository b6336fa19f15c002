"""Size, compute and CPU latency of architectures, next to the best accuracy trained runs reached with them.

MACs are counted by PyTorch's own `torch.utils.flop_counter.FlopCounterMode` (matmul/conv FLOPs / 2), not by hand
formulas, so every family is measured the same way. Latency is batch-1 CPU inference, the median of repeated runs
after a warm-up: it says how the models rank on this machine, and it moves with whatever else the machine is doing.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from carspotter.defaults import DEFAULT_IMAGE_SIZE
from carspotter.errors import UserError
from carspotter.inference.timing import latency_ms
from carspotter.models import create_model, get_model_builder

__all__ = [
    "ModelProfile",
    "best_run_accuracy",
    "count_macs",
    "machine_description",
    "measure_latency_ms",
    "model_family",
    "profiles_markdown",
    "profile_models",
    "write_profiles",
]

log = logging.getLogger(__name__)


@dataclass
class ModelProfile:
    name: str
    family: str
    params: int
    macs: int
    weights_mb: float
    latency_ms: float
    image_size: int
    num_classes: int
    threads: int
    best_test_top1: float | None = None
    best_run: str | None = None
    args: dict[str, Any] = field(default_factory=dict)  # besides num_classes/in_chans; {}: the model's defaults

    @property
    def label(self) -> str:
        """``ghostnet_thesis`` for the defaults, ``ghostnet_thesis(hidden_channels=320)`` for a trained variant."""
        inner = ", ".join(f"{k}={v}" for k, v in sorted(self.args.items()))
        return f"{self.name}({inner})" if inner else self.name


def _args_key(args: dict[str, Any]) -> str:
    return json.dumps(args, sort_keys=True)


def model_family(name: str) -> str:
    """The family a model belongs to: the module it comes from (``ghostnet``, ``hardnet``...), for the timm aliases
    the name's stem (``efficientnet``, ``mobilenet``, ``ghostnetv2``), and ``timm`` for ``timm/<name>``."""
    if name.startswith("timm/"):
        return "timm"
    module = get_model_builder(name).__module__.rsplit(".", 1)[-1]
    if module != "timm_aliases":
        return module
    stem = name.split("_")[0]
    return "mobilenet" if stem.startswith("mobilenet") else stem


def count_macs(model: nn.Module, image_size: int, in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (conv/linear/matmul FLOPs counted by PyTorch, halved)."""
    x = torch.randn(1, in_chans, image_size, image_size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() // 2


def measure_latency_ms(
    model: nn.Module, image_size: int, in_chans: int = 3, warmup: int = 3, repeats: int = 10, budget_s: float = 5.0
) -> float:
    """Median wall time of batch-1 CPU inference over about ``repeats`` runs, at most ``budget_s`` seconds (see
    `latency_ms`)."""
    x = torch.randn(1, in_chans, image_size, image_size)
    with torch.inference_mode():
        return statistics.median(latency_ms(lambda: model(x), runs=repeats, warmup=warmup, budget_s=budget_s))


def best_run_accuracy(runs_dir: str | Path) -> dict[tuple[str, str], tuple[float, str, dict[str, Any]]]:
    """``{(model name, its arguments as JSON): (best test top-1, run id, arguments)}`` over ``RUNS_DIR/*/summary.json``
    (runs without a test score skip): a run counts for the model built with the arguments it actually trained."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir}: runs folder not found (--runs-dir expects the folder that holds the run folders)")
    best: dict[tuple[str, str], tuple[float, str, dict[str, Any]]] = {}
    for summary_path in sorted(runs_dir.glob("*/summary.json")):
        try:
            summary = json.loads(summary_path.read_text())
            name = summary["model"]["name"]
            args = dict(summary["model"].get("args") or {})
            top1 = summary.get("test_top1")
            run_id = summary.get("run_id", summary_path.parent.name)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: skipped (%s)", summary_path, exc)
            continue
        key = (name, _args_key(args))
        if top1 is not None and (key not in best or top1 > best[key][0]):
            best[key] = (float(top1), str(run_id), args)
    return best


def results_accuracy(path: str | Path) -> dict[tuple[str, str], tuple[float, str, dict[str, Any]]]:
    """``{(model name, "{}"): (mean test top-1 over its seeds, what it is, {})}`` from a zoo results CSV
    (`benchmarks/zoo_real.py`: columns ``model`` and ``top1``), shown beside each model's default-arguments profile."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise UserError(f"{path}: cannot read the results file ({exc.strerror or exc})") from None
    if not rows or not {"model", "top1"} <= set(rows[0]):
        raise UserError(f"{path}: not a zoo results CSV (needs the columns model and top1)")
    by_model: dict[str, list[float]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(float(row["top1"]))
    return {(name, _args_key({})): (statistics.fmean(v), f"{path.name} ({len(v)} seed{'s' * (len(v) > 1)})", {})
            for name, v in by_model.items()}  # fmt: skip


def profile_models(
    names: Iterable[str],
    image_size: int = DEFAULT_IMAGE_SIZE[0],
    num_classes: int = 196,
    runs_dir: str | Path | None = None,
    *,
    results: str | Path | None = None,
    repeats: int = 10,
    threads: int | None = None,
    progress: bool = True,
) -> list[ModelProfile]:
    """Profile each model with its default arguments, plus every other set of arguments a run in ``runs_dir``
    trained it with, at ``image_size`` with ``num_classes`` outputs; sorted by MACs.

    ``threads`` sets torch's CPU threads for the latency runs (default: torch's own choice, usually the core count).
    """
    names = list(names)
    accuracy = best_run_accuracy(runs_dir) if runs_dir is not None else {}
    if results is not None:  # a results file's figure wins over a run's for the same model and arguments
        accuracy.update(results_accuracy(results))
    variants = [(name, {}) for name in names]
    variants += [(name, args) for (name, key), (_, _, args) in accuracy.items() if name in names and args]
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        profiles = [
            _profile_one(name, args, image_size, num_classes, accuracy.get((name, _args_key(args))), repeats)
            for name, args in tqdm(variants, desc="profiling", unit="model", disable=not progress)
        ]
    finally:
        torch.set_num_threads(previous_threads)
    return sorted(profiles, key=lambda p: p.macs)


def _profile_one(
    name: str,
    args: dict[str, Any],
    image_size: int,
    num_classes: int,
    accuracy: tuple[float, str, dict[str, Any]] | None,
    repeats: int,
) -> ModelProfile:
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, **args).eval()
    return ModelProfile(
        name=name,
        family=model_family(name),
        params=sum(p.numel() for p in model.parameters()),
        macs=count_macs(model, image_size),
        weights_mb=sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6,
        latency_ms=measure_latency_ms(model, image_size, repeats=repeats),
        image_size=image_size,
        num_classes=num_classes,
        threads=torch.get_num_threads(),
        best_test_top1=accuracy[0] if accuracy else None,
        best_run=accuracy[1] if accuracy else None,
        args=args,
    )


def machine_description(threads: int | None = None) -> str:
    """CPU model and thread count, e.g. ``AMD EPYC, 2 CPUs (torch: 1 thread), torch 2.14.1``."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = threads or torch.get_num_threads()
    return f"{cpu}, {os.cpu_count()} CPUs (torch: {threads} thread{'s' * (threads != 1)}), torch {torch.__version__}"


def write_profiles(profiles: Sequence[ModelProfile], out_dir: str | Path, stem: str | None = None) -> dict[str, Path]:
    """Write ``<stem>.csv``, ``<stem>.json`` (with the machine), ``<stem>.png`` (a labelled scatter plot) and
    ``<stem>.md`` (the table as Markdown, for a README)."""
    if not profiles:
        raise UserError("no models to write (did --filter match nothing?)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or f"models_{profiles[0].image_size}px_{profiles[0].num_classes}cls"
    paths = {kind: out_dir / f"{stem}.{kind}" for kind in ("csv", "json", "png", "md")}

    rows = [{**asdict(p), "args": _args_key(p.args)} for p in profiles]
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    payload = {
        "machine": machine_description(profiles[0].threads),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "command": shlex.join(["carspotter", *sys.argv[1:]]),
        "latency": "CPU, batch 1, median ms",
        "models": rows,
    }
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n")
    _scatter_plot(profiles, paths["png"])
    paths["md"].write_text(profiles_markdown(profiles) + "\n")
    return paths


def profiles_markdown(profiles: Sequence[ModelProfile]) -> str:
    """The profile table in Markdown, with the machine it was measured on."""
    p0 = profiles[0]
    with_acc = any(p.best_test_top1 is not None for p in profiles)
    header = ["model", "family", "params (M)", f"MACs @{p0.image_size} (M)", "weights (MB)", "CPU latency (ms)"]
    header += ["best test top-1"] if with_acc else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in profiles:
        row = [p.label, p.family, f"{p.params / 1e6:.2f}", f"{p.macs / 1e6:,.0f}", f"{p.weights_mb:.1f}"]
        row.append(f"{p.latency_ms:.1f}")
        if with_acc:
            row.append("" if p.best_test_top1 is None else f"{p.best_test_top1:.2%}")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(
        f"{p0.num_classes} classes, {p0.image_size}x{p0.image_size} input; latency: batch 1, median of repeated runs, "
        f"on {machine_description(p0.threads)}."
    )
    return "\n".join(lines)


def _scatter_plot(profiles: Sequence[ModelProfile], path: Path) -> None:
    """MACs against latency for every model, and, beside it, MACs against best test top-1 for those with runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_acc = [p for p in profiles if p.best_test_top1 is not None]
    panels = [(list(profiles), lambda p: p.latency_ms, "CPU latency, batch 1 (ms)", True)]
    if with_acc:
        panels.append((with_acc, lambda p: p.best_test_top1 * 100, "best test top-1 (%)", False))
    fig, axes = plt.subplots(1, len(panels), figsize=(10 * len(panels), 7), dpi=120, squeeze=False)
    families = sorted({p.family for p in profiles})
    cmap = plt.get_cmap("tab10")
    p0 = profiles[0]
    for ax, (points, y_of, ylabel, log_y) in zip(axes[0], panels, strict=True):
        for i, family in enumerate(families):
            members = [p for p in points if p.family == family]
            if members:
                ax.scatter(
                    [p.macs / 1e6 for p in members], [y_of(p) for p in members], color=cmap(i % 10), label=family, s=30
                )
        for p in points:
            ax.annotate(p.label, (p.macs / 1e6, y_of(p)), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel(f"MACs at {p0.image_size}x{p0.image_size} (millions, log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"carspotter model zoo, {p0.num_classes} classes")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
