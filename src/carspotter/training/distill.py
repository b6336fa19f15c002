"""Knowledge distillation's teacher (``loss.distillation``): a trained carspotter checkpoint, checked against the
student's data before a run folder exists, run in eval mode on the student's batches.

The loss itself is `carspotter.training.optimization.distillation_loss`; `CarClassifier` calls `Teacher` on every
training batch. The teacher is not a submodule of the student: it is never trained, and never saved in the
student's checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from carspotter.errors import UserError
from carspotter.formats.run_dir import SUMMARY_FILE
from carspotter.inference.torch_backend import load_checkpoint
from carspotter.preprocessing import Preprocessing


class Teacher:
    """The teacher network and the input size it was trained at; batches of another size are resized to it."""

    def __init__(self, model: nn.Module, image_size: tuple[int, int], path: Path) -> None:
        self.model = model.eval().requires_grad_(False)
        self.image_size = tuple(image_size)
        self.path = path

    def to(self, device: torch.device, memory_format: torch.memory_format) -> Teacher:
        self.model.to(device).to(memory_format=memory_format)
        return self

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", antialias=True, align_corners=False)
        return self.model(x)

    def describe(self) -> dict[str, Any]:
        """What the run's summary says of its teacher: the checkpoint, and its own run's test top-1 and wall time when
        its run folder is beside it (the teacher's compute, reported apart from the student's)."""
        said: dict[str, Any] = {"checkpoint": str(self.path), "image_size": list(self.image_size)}
        summary = self.path.parent / SUMMARY_FILE
        if summary.is_file():
            run = json.loads(summary.read_text())
            said |= {k: run[k] for k in ("test_top1", "wall_time_s", "epochs_run") if k in run}
        return said


def load_teacher(path: Path, class_names: list[str], preprocessing: Preprocessing) -> Teacher:
    """The checkpoint at ``path`` as a teacher for a student of ``class_names`` fed ``preprocessing``'s inputs; a
    teacher of other classes (or in another order), channels or normalisation is refused in one line."""
    if not path.is_file():
        raise UserError(f"loss.distillation.teacher: {path}: no such checkpoint")
    model, info = load_checkpoint(path)
    if list(info.class_names) != list(class_names):
        raise UserError(f"loss.distillation.teacher: {path} was trained on other classes ({info.num_classes}, "
                        f"this data has {len(class_names)}, or in another order): a teacher must know the same classes")
    theirs = info.preprocessing
    if (theirs.grayscale, theirs.normalize, tuple(theirs.mean), tuple(theirs.std)) != (
        preprocessing.grayscale, preprocessing.normalize, tuple(preprocessing.mean), tuple(preprocessing.std)
    ):  # fmt: skip
        raise UserError(f"loss.distillation.teacher: {path} reads its inputs otherwise (channels or normalisation) "
                        "than this run feeds them")
    return Teacher(model, theirs.image_size, path)
