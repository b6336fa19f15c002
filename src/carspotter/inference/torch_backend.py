"""`TorchClassifier`: a network in PyTorch, eval mode, run as its `Runtime` says (a checkpoint, or a model an export
has in hand: those run on the CPU in fp32, as the exports' parity references)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from carspotter.formats.checkpoint import CheckpointInfo, checkpoint_info, model_state_dict, read_checkpoint
from carspotter.inference.base import Classifier
from carspotter.models import create_model
from carspotter.preprocessing import Preprocessing
from carspotter.runtime import Runtime, inference_runtime


def load_checkpoint(path: str | Path) -> tuple[nn.Module, CheckpointInfo]:
    """Rebuild the network from the checkpoint alone, in eval mode, on CPU."""
    ckpt = read_checkpoint(path)
    info = checkpoint_info(ckpt, path)
    model = create_model(info.model_name, num_classes=info.num_classes, in_chans=info.in_chans, **info.model_args)
    model.load_state_dict(model_state_dict(ckpt), strict=True)
    return model.eval(), info


class TorchClassifier(Classifier):
    label = "pytorch-eager"

    def __init__(
        self, model: nn.Module, class_names: list[str], preprocessing: Preprocessing, runtime: Runtime | None = None
    ) -> None:
        self.runtime = runtime or inference_runtime("cpu")
        layout = torch.channels_last if self.runtime.channels_last else torch.contiguous_format
        self.model = model.eval().to(self.runtime.device).to(memory_format=layout)
        self.class_names = list(class_names)
        self.preprocessing = preprocessing

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, threads: int | None = None, device: str | None = None
    ) -> TorchClassifier:
        """``device``: None for the GPU if there is one (`inference_runtime`)."""
        if threads is not None:
            torch.set_num_threads(threads)
        model, info = load_checkpoint(path)
        classifier = cls(model, info.class_names, info.preprocessing, inference_runtime(device))
        classifier.classes = info.car_names
        classifier.calibration = info.calibration
        return classifier

    @property
    def device(self) -> torch.device:
        return torch.device(self.runtime.device)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        if self.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = self.runtime.autocast_dtype
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            return self.model(x).float().cpu().numpy()

    def weights_mb(self) -> float:
        """The network's weights (parameters and buffers), not its checkpoint: that also holds optimizer state."""
        return sum(t.numel() * t.element_size() for t in self.model.state_dict().values()) / 1e6
