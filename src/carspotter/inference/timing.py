"""Wall-clock latency of any callable (a PyTorch model, an ONNX Runtime session, an ExecuTorch program...), timed by
PyTorch's `torch.utils.benchmark.Timer`, so every latency carspotter reports is measured the same way."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.benchmark import Timer

__all__ = ["latency_ms"]


def latency_ms(
    fn: Callable[[], object],
    *,
    runs: int = 10,
    warmup: int = 3,
    budget_s: float | None = None,
    threads: int | None = None,
) -> list[float]:
    """The time of each of ``runs`` calls of ``fn()`` in ms, after ``warmup`` untimed calls; with ``budget_s``,
    timing stops once that many seconds have passed (at least 3 calls are timed).

    Each call is one ``Timer.timeit(1)``: one time per call, so medians and percentiles are of single calls.
    ``threads``: torch's CPU threads while timing (default: the current setting; `Timer` alone would use 1).
    """
    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads() if threads is None else threads)
    if warmup > 0:
        timer.timeit(warmup)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs:
        times.append(timer.timeit(1).mean * 1e3)
        if budget_s is not None and len(times) >= 3 and time.perf_counter() - start > budget_s:
            break
    return times
