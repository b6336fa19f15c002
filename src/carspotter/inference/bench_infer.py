"""`bench_infer(models)`: batch-1 CPU latency, throughput and (optionally) top-1 of one model in several formats.

PyTorch eager (`.ckpt`), ONNX Runtime fp32 and int8 (`.onnx`) and ExecuTorch/XNNPACK (`.pte`) are timed in the same
process, interleaved round by round so that a noisy neighbour on a shared machine slows every format alike, with
the same number of threads each; ratios are to PyTorch eager (the ``.ckpt``, when given).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from carspotter.errors import UserError
from carspotter.inference import Classifier, load_classifier
from carspotter.inference.timing import latency_ms
from carspotter.inference.torch_backend import TorchClassifier

log = logging.getLogger(__name__)

EAGER = TorchClassifier.label


@dataclass
class FormatResult:
    label: str
    path: str
    median_ms: float
    p90_ms: float
    throughput: float  # images/s at `throughput_batch`
    size_mb: float
    top1: float | None = None
    speedup: float | None = None  # eager median / this median

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchResult:
    formats: list[FormatResult]
    threads: int
    runs: int
    throughput_batch: int
    split: str | None
    n_eval: int | None


def bench_infer(
    models: list[str | Path],
    *,
    data: str | Path | None = None,
    split: str = "test",
    threads: int = 1,
    runs: int = 200,
    warmup: int = 20,
    throughput_batch: int = 16,
    eval_limit: int | None = None,
) -> BenchResult:
    """Time every model on the same batch-1 photo; with ``data``, also top-1 on ``split``.

    Ratios are to PyTorch eager, which needs the ``.ckpt`` among ``models`` (exports name their checkpoint by file
    name and SHA-256 only). A model with preprocessing in the graph is fed the decoded photo, so its time includes
    the resize that the others get done beforehand.
    """
    paths = [Path(m) for m in models]
    loaded = [(p, load_classifier(p, threads=threads, device="cpu")) for p in paths]
    runtimes = sorted(((p, clf.label, clf) for p, clf in loaded), key=lambda r: r[1] != EAGER)
    preps = {(r.preprocessing.image_size, r.preprocessing.channels) for _, _, r in runtimes}
    if len(preps) > 1:
        raise UserError(f"the models take different inputs {sorted(preps)}; bench-infer compares one model's formats")

    images: list[Image.Image] | None = None
    labels: np.ndarray | None = None
    if data is not None:
        from carspotter.inference.inputs import prepared_images

        images, labels = prepared_images(data, split, limit=eval_limit)
        if not images:
            raise UserError(f"{data}: the {split} split is empty")
    photo = images[0] if images else Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8))
    ones = [clf.model_input(photo)[None] for _, _, clf in runtimes]

    timings = _interleaved_latency([clf for _, _, clf in runtimes], ones, runs=runs, warmup=warmup, threads=threads)
    results = []
    for (path, label, clf), one, times in zip(runtimes, ones, timings, strict=True):
        times_ms = np.asarray(times)
        results.append(FormatResult(
            label=label,
            path=str(path),
            median_ms=float(np.median(times_ms)),
            p90_ms=float(np.percentile(times_ms, 90)),
            throughput=_throughput(clf, np.repeat(one, throughput_batch, axis=0)),
            size_mb=clf.weights_mb() if isinstance(clf, TorchClassifier) else path.stat().st_size / 1e6,
        ))
    eager = next((r for r in results if r.label == EAGER), None)
    for r in results:
        r.speedup = eager.median_ms / r.median_ms if eager is not None else None
    if images is not None and labels is not None:
        for r, (_, _, clf) in zip(results, runtimes, strict=True):
            r.top1 = _top1(clf, images, labels)
    return BenchResult(results, threads, runs, throughput_batch, split if data is not None else None,
                       None if images is None else len(images))


def _interleaved_latency(
    clfs: list[Classifier], xs: list[np.ndarray], *, runs: int, warmup: int, threads: int, rounds: int = 10
) -> list[list[float]]:
    """Milliseconds per call of every model, ``runs`` each, taken round by round so that a noisy neighbour slows
    every format alike."""
    times: list[list[float]] = [[] for _ in clfs]
    per_round = max(1, runs // rounds)
    for r in range(rounds):
        for i, (clf, x) in enumerate(zip(clfs, xs, strict=True)):
            times[i] += latency_ms(lambda c=clf, x=x: c.logits(x), runs=per_round, warmup=warmup if r == 0 else 0,
                                   threads=threads)
    return times


def _throughput(clf: Classifier, batch: np.ndarray, seconds: float = 1.0) -> float:
    clf.logits(batch)
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or done == 0:
        clf.logits(batch)
        done += len(batch)
    return done / elapsed


def _top1(clf: Classifier, images: list[Image.Image], labels: np.ndarray) -> float:
    logits = clf.image_logits(images)
    return float((logits.argmax(1) == labels).mean())
