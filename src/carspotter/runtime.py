"""One runtime policy: the device, precision, memory layout and (for training) data pipeline every command runs with.

- `inference_runtime` — evaluate, predict, serve, report and bench-infer on a checkpoint, and the test score at the
  end of training: bf16 autocast and channels_last on a GPU, fp32 in the default layout on a CPU. Every one of them
  runs a checkpoint through `TorchClassifier` with it, so `evaluate` and `predict` give the same numbers on the
  same device. Exports run in their own runtimes (ONNX Runtime, ExecuTorch), on the CPU.
- `training_runtime` — `train`: the config's ``auto`` settings decided from the hardware.

torch is imported when a runtime is decided, not with this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from carspotter.config import Config


@dataclass(frozen=True)
class Runtime:
    """How a network runs on this machine, decided once."""

    device: str  # "cpu", "cuda" or "cuda:N"
    precision: str  # Lightning's name: "32-true", "bf16-mixed" or "16-mixed"
    channels_last: bool
    pipeline: str | None = None  # training's data path: "classic" or "fast"
    why: str = ""  # how the ``auto`` settings were decided, in words (training logs it at the start)

    @property
    def autocast_dtype(self) -> object | None:
        """The dtype to autocast to, or None for full precision."""
        import torch

        return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(self.precision)


def inference_runtime(device: str | None = None) -> Runtime:
    """How a checkpoint is run for an answer or a score on ``device`` (default: the GPU if there is one): bf16 and
    channels_last on a GPU (as training runs there by default), fp32 in the default layout on a CPU."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch.device(device).type == "cuda"
    return Runtime(device, "bf16-mixed" if cuda else "32-true", channels_last=cuda)


def training_runtime(cfg: Config) -> Runtime:
    """The ``auto`` settings of a run, decided. Pipeline: `resolve_pipeline`. Precision: bf16-mixed on a GPU; fp32 on
    a CPU, where bf16 autocast learned worse on real photos (odd98 at 96 px: docs/training.md, "Precision and
    test-time flip"), even on CPUs with native bf16, so no CPU feature is asked. channels_last: on with CUDA or the fast
    pipeline (its batches are channels_last in memory already)."""
    import torch

    from carspotter.data.fast import resolve_pipeline

    cuda = torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    where = "GPU" if cuda else "CPU"
    pipeline = resolve_pipeline(cfg.data)
    why = [f"{pipeline} pipeline"] if cfg.data.pipeline == "auto" else []
    precision = cfg.trainer.precision
    if precision == "auto":
        precision = "bf16-mixed" if cuda else "32-true"
        why.append(f"{precision} on the {where}")
    channels_last = cfg.trainer.channels_last
    if channels_last == "auto":
        channels_last = cuda or pipeline == "fast"
        why.append(f"channels_last {'on' if channels_last else 'off'} ({where}, {pipeline} pipeline)")
    device = "cuda" if cuda else "cpu"
    return Runtime(device, precision, bool(channels_last), pipeline, "; ".join(why) or "as configured")
