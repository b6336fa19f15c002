"""Self-describing checkpoints: everything `evaluate`, `predict` and `export` need travels inside the `.ckpt`.

``ckpt["carspotter"]`` holds the model name and arguments, the class names, the preprocessing and the resolved
config; ``ckpt["state_dict"]`` holds the weights under the ``model.`` prefix (the Lightning module's attribute).
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from lightning.pytorch.plugins.io import TorchCheckpointIO

from carspotter.errors import UserError
from carspotter.models import create_model
from carspotter.preprocessing import Preprocessing

FORMAT_VERSION = 1
STATE_PREFIX = "model."

# Lightning stores MultiStepLR's milestones as a Counter; allow it so checkpoints load with weights_only=True.
torch.serialization.add_safe_globals([collections.Counter])


@dataclass(frozen=True)
class CheckpointInfo:
    model_name: str
    model_args: dict[str, Any]
    num_classes: int
    in_chans: int
    class_names: list[str]
    preprocessing: Preprocessing
    config: dict[str, Any]
    path: Path

    def describe(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model": {
                "name": self.model_name,
                "args": self.model_args,
                "num_classes": self.num_classes,
                "in_chans": self.in_chans,
            },
            "class_names": list(self.class_names),
            "preprocessing": self.preprocessing.to_dict(),
            "config": self.config,
        }


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load`` a checkpoint safely (``weights_only=True``); a missing or foreign file is a `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint we can read"
        first_line = str(exc).strip().splitlines()[0].split(". ")[0][:160] if str(exc).strip() else ""
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({exc.__class__.__name__}: {first_line})") from None
    if not isinstance(ckpt, dict) or "carspotter" not in ckpt or "state_dict" not in ckpt:
        raise UserError(f"{path}: not a carspotter checkpoint (no model description inside)")
    return ckpt


def checkpoint_info(ckpt: dict[str, Any], path: str | Path) -> CheckpointInfo:
    meta = ckpt["carspotter"]
    model = meta["model"]
    return CheckpointInfo(
        model_name=model["name"],
        model_args=dict(model["args"]),
        num_classes=int(model["num_classes"]),
        in_chans=int(model["in_chans"]),
        class_names=list(meta["class_names"]),
        preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
        config=meta.get("config", {}),
        path=Path(path),
    )


def model_state_dict(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's own weights, without the Lightning module's ``model.`` prefix."""
    return {k.removeprefix(STATE_PREFIX): v for k, v in ckpt["state_dict"].items() if k.startswith(STATE_PREFIX)}


def load_checkpoint(path: str | Path) -> tuple[nn.Module, CheckpointInfo]:
    """Rebuild the network from the checkpoint alone, in eval mode, on CPU."""
    ckpt = read_checkpoint(path)
    info = checkpoint_info(ckpt, path)
    model = create_model(info.model_name, num_classes=info.num_classes, in_chans=info.in_chans, **info.model_args)
    model.load_state_dict(model_state_dict(ckpt), strict=True)
    return model.eval(), info


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic: the file is written beside its target, then renamed over it, so
    a run killed while saving keeps its previous ``last.ckpt`` whole (``--resume`` always finds a readable one)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        target = Path(path)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            super().save_checkpoint(checkpoint, partial, storage_options)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
