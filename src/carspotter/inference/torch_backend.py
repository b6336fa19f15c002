"""`TorchClassifier`: a network in PyTorch, eval mode, on the CPU (a checkpoint, or a model export has in hand)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from carspotter.checkpoint import load_checkpoint
from carspotter.inference.base import Classifier
from carspotter.preprocessing import Preprocessing


class TorchClassifier(Classifier):
    label = "pytorch-eager"

    def __init__(self, model: nn.Module, class_names: list[str], preprocessing: Preprocessing) -> None:
        self.model = model.eval()
        self.class_names = list(class_names)
        self.preprocessing = preprocessing

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, threads: int | None = None) -> TorchClassifier:
        if threads is not None:
            torch.set_num_threads(threads)
        model, info = load_checkpoint(path)
        return cls(model, info.class_names, info.preprocessing)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(np.ascontiguousarray(batch))).float().numpy()

    def weights_mb(self) -> float:
        """The network's weights (parameters and buffers), not its checkpoint: that also holds optimizer state."""
        return sum(t.numel() * t.element_size() for t in self.model.state_dict().values()) / 1e6
