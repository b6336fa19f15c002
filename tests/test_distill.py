"""Knowledge distillation (`loss.distillation`): Hinton's loss term, and a real run that learns from a teacher
checkpoint of another input size without training or saving it; a teacher of other classes is refused before a run
folder exists."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from recipe_support import recipe_config

from carspotter.errors import UserError
from carspotter.formats.checkpoint import read_checkpoint
from carspotter.inference.torch_backend import load_checkpoint
from carspotter.training.optimization import distillation_loss
from carspotter.training.run import train


def test_the_distillation_term_is_hintons() -> None:
    torch.manual_seed(0)
    student = torch.randn(8, 5, requires_grad=True)
    teacher = torch.randn(8, 5)
    labels_loss = torch.tensor(1.7)
    assert distillation_loss(labels_loss, student, teacher, 0.0, 4.0).item() == pytest.approx(1.7)
    assert distillation_loss(labels_loss, teacher, teacher, 1.0, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    # Its gradient: T x (softmax(s / T) - softmax(t / T)) / batch, the form that makes T² keep it the labels' size.
    t = 3.0
    distillation_loss(labels_loss, student, teacher, 1.0, t).backward()
    want = t * (torch.softmax(student.detach() / t, 1) - torch.softmax(teacher / t, 1)) / 8
    torch.testing.assert_close(student.grad, want)


@pytest.mark.slow
def test_a_student_learns_from_a_teacher_it_never_saves(synthetic_prepared: Path, tmp_path: Path, one_cpu_thread):
    teacher = train(recipe_config(synthetic_prepared, tmp_path / "teacher"), progress=False)
    distill = f"loss.distillation={{teacher: {teacher.best_ckpt}, weight: 0.7, temperature: 2}}"
    student = train(recipe_config(synthetic_prepared, tmp_path / "student", "data.image_size=48", distill),
                    progress=False)  # fmt: skip
    said = student.summary["teacher"]
    assert said["checkpoint"] == str(teacher.best_ckpt) and said["image_size"] == [32, 32]  # fed resized batches
    assert said["test_top1"] == teacher.summary["test_top1"] and said["wall_time_s"] > 0  # its compute, apart
    plain = read_checkpoint(teacher.best_ckpt)["state_dict"]
    taught = read_checkpoint(student.best_ckpt)["state_dict"]
    assert set(taught) == set(plain)  # the student's own network, nothing of the teacher's
    model, info = load_checkpoint(student.best_ckpt)
    assert info.preprocessing.image_size == (48, 48)


@pytest.mark.slow
def test_a_teacher_of_other_classes_is_refused_before_a_run_folder(synthetic_prepared: Path, four_classes: Path,
                                                                   tmp_path: Path, one_cpu_thread):  # fmt: skip
    teacher = train(recipe_config(synthetic_prepared, tmp_path / "teacher", "trainer.max_epochs=1"), progress=False)
    runs = tmp_path / "student"
    cfg = recipe_config(four_classes, runs, f"loss.distillation={{teacher: {teacher.best_ckpt}}}")
    with pytest.raises(UserError, match="trained on other classes"):
        train(cfg, progress=False)
    assert not runs.exists() or not any(runs.iterdir())
    with pytest.raises(UserError, match="no such checkpoint"):
        train(recipe_config(four_classes, runs, f"loss.distillation={{teacher: {tmp_path / 'missing.ckpt'}}}"),
              progress=False)  # fmt: skip
