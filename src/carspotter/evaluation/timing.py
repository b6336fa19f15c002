"""Wall-clock latency of any callable (a PyTorch model, an ONNX Runtime session, an ExecuTorch program...), timed by
PyTorch's `torch.utils.benchmark.Timer`, so every latency carspotter reports is measured the same way."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.benchmark import Timer

__all__ = ["latency_ms"]


def latency_ms(
    fn: Callable[[], object], *, runs: int = 10, warmup: int = 3, budget_s: float = 5.0, threads: int | None = None
) -> list[float]:
    """Times of one ``fn()`` call in ms, one per measured block: ``Timer.blocked_autorange`` over about ``runs``
    calls (as long as ``warmup`` calls took, times ``runs``), at most ``budget_s`` seconds; take the median of them.

    A block is one call unless calls are so short (under ~1 ms) that the timer's own overhead would show; then each
    time is its block's mean. ``threads``: torch's CPU threads while timing (default: the current setting; `Timer`
    alone would use 1).
    """
    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads() if threads is None else threads)
    per_call = timer.timeit(max(warmup, 1)).mean  # the warm-up, which also says how long one call takes
    measurement = timer.blocked_autorange(min_run_time=min(budget_s, runs * per_call))
    return [t * 1e3 for t in measurement.times]
