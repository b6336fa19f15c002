"""The checkpoint layout: the one place that says what training writes and every reader reads.

A carspotter checkpoint is Lightning's ``.ckpt``: ``ckpt["state_dict"]`` holds the weights under the ``model.``
prefix (the Lightning module's attribute) and ``ckpt["carspotter"]`` what `CheckpointInfo.describe` writes (model
name and arguments, class names with their make/model/year, preprocessing, the resolved config, the calibration),
so evaluate, predict and export rebuild the
model from the file alone (`carspotter.inference.torch_backend.load_checkpoint` builds it). With ``trainer.ema``
the ``model.`` weights are the averaged ones and the trained ones travel under `RAW_WEIGHTS_KEY`, for ``--resume``
(`swap_in_ema`, `swap_out_ema`). Every file is read with ``weights_only=True``.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from carspotter.config import Config, parse_config
from carspotter.errors import UserError
from carspotter.formats.calibration import UNCALIBRATED, Calibration
from carspotter.formats.car_names import CarName, car_names
from carspotter.preprocessing import Preprocessing

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
STATE_PREFIX = "model."  # the Lightning module's attribute holding the network
EMA_PREFIX = "ema.module."  # where the Lightning module keeps the averaged network (timm's ModelEmaV3)
RAW_WEIGHTS_KEY = "raw_state_dict"  # with EMA on: the trained (not averaged) weights, under their ``model.`` keys

# Lightning stores MultiStepLR's milestones as a Counter; allow it so checkpoints load with weights_only=True.
torch.serialization.add_safe_globals([collections.Counter])


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says about its model. ``config`` is None when the run's config no longer validates (a
    checkpoint from an older carspotter): the model, classes and preprocessing are all that inference needs."""

    model_name: str
    model_args: dict[str, Any]
    num_classes: int
    in_chans: int
    class_names: list[str]
    preprocessing: Preprocessing
    config: Config | None
    path: Path
    classes: list[CarName] | None = None  # make, model, year per class (None: parsed from the names)
    calibration: Calibration = UNCALIBRATED

    def describe(self) -> dict[str, Any]:
        """``ckpt["carspotter"]``, as training writes it."""
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
            "config": {} if self.config is None else self.config.to_dict(),
            "classes": [c.to_dict() for c in self.car_names],
            "calibration": self.calibration.to_dict(),
        }

    @property
    def car_names(self) -> list[CarName]:
        return self.classes if self.classes is not None else car_names(self.class_names)


def torch_load(path: Path, what: str) -> Any:
    """``torch.load(weights_only=True)``; a missing file or one that is not a safe torch file is a `UserError`."""
    if not path.is_file():
        raise UserError(f"{path}: no such {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a file we can read"
        first_line = str(exc).strip().splitlines()[0].split(". ")[0][:160] if str(exc).strip() else ""
        raise UserError(f"{path}: not a readable PyTorch {what} ({exc.__class__.__name__}: {first_line})") from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A carspotter checkpoint as a dict, read safely; a missing, foreign or hostile file is a `UserError`."""
    path = Path(path)
    ckpt = torch_load(path, "checkpoint")
    if not isinstance(ckpt, dict) or "carspotter" not in ckpt or "state_dict" not in ckpt:
        raise UserError(f"{path}: not a carspotter checkpoint (no model description inside)")
    return ckpt


def checkpoint_info(ckpt: dict[str, Any], path: str | Path) -> CheckpointInfo:
    meta = ckpt["carspotter"]
    model = meta["model"]
    config = None
    if meta.get("config"):
        try:
            config = parse_config(meta["config"], f"{path} (its run's config)")
        except UserError as exc:
            log.warning("%s; the checkpoint is used without it", exc)
    return CheckpointInfo(
        model_name=model["name"],
        model_args=dict(model["args"]),
        num_classes=int(model["num_classes"]),
        in_chans=int(model["in_chans"]),
        class_names=list(meta["class_names"]),
        preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
        config=config,
        path=Path(path),
        classes=car_names(meta["class_names"], meta["classes"]) if meta.get("classes") else None,
        calibration=Calibration.from_dict(meta.get("calibration"), str(path)),
    )


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    return checkpoint_info(read_checkpoint(path), path)


def model_state_dict(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's own weights, without the Lightning module's ``model.`` prefix."""
    return {k.removeprefix(STATE_PREFIX): v for k, v in ckpt["state_dict"].items() if k.startswith(STATE_PREFIX)}


def swap_in_ema(checkpoint: dict[str, Any]) -> None:
    """As training saves with EMA on: the checkpoint's model (``model.*``, what evaluate, predict and export load)
    becomes the averaged network, and the trained weights go beside it under `RAW_WEIGHTS_KEY`, for ``--resume``."""
    state = checkpoint["state_dict"]
    checkpoint[RAW_WEIGHTS_KEY] = {k: state.pop(k) for k in list(state) if k.startswith(STATE_PREFIX)}
    for key in [k for k in state if k.startswith(EMA_PREFIX)]:
        state[STATE_PREFIX + key.removeprefix(EMA_PREFIX)] = state.pop(key)


def swap_out_ema(checkpoint: dict[str, Any], *, ema_on: bool) -> None:
    """`swap_in_ema` undone, as ``--resume`` loads: the averaged network back under `EMA_PREFIX`, the trained weights
    under ``model.``. A run without EMA drops any trained weights the file carries."""
    raw = checkpoint.pop(RAW_WEIGHTS_KEY, None)
    if not ema_on:
        return
    if raw is None:
        raise UserError("this run has trainer.ema on, but its checkpoint was written without EMA weights")
    state = checkpoint["state_dict"]
    for key in [k for k in state if k.startswith(STATE_PREFIX)]:
        state[EMA_PREFIX + key.removeprefix(STATE_PREFIX)] = state.pop(key)
    state.update(raw)


def write_calibration(path: str | Path, calibration: Calibration) -> None:
    """Store ``calibration`` in the checkpoint at ``path`` (written to a temporary file, then renamed over it)."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    ckpt["carspotter"]["calibration"] = calibration.to_dict()
    tmp = path.with_name(f".{path.name}.calibrating")
    torch.save(ckpt, tmp)
    tmp.replace(path)
