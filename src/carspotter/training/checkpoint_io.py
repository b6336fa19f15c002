"""`AtomicCheckpointIO`: Lightning's checkpoint writer, made atomic (what a checkpoint holds: formats/checkpoint.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """The file is written beside its target, then renamed over it, so a run killed while saving keeps its previous
    ``last.ckpt`` whole (``--resume`` always finds a readable one)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        target = Path(path)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            super().save_checkpoint(checkpoint, partial, storage_options)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
