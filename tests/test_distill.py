"""Knowledge distillation (`loss.distillation`): Hinton's loss term, and a real run that learns from a teacher
checkpoint of another input size without training or saving it; a teacher of other classes is refused before a run
folder exists."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from recipe_support import recipe_config

from carspotter.errors import UserError
from carspotter.experiments.runs_table import read_run
from carspotter.formats.checkpoint import read_checkpoint
from carspotter.inference.torch_backend import load_checkpoint
from carspotter.training.optimization import distillation_loss
from carspotter.training.run import load_run_config, train


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
def test_a_student_learns_from_a_teacher_it_never_saves(synthetic_prepared: Path, trained_checkpoint: Path,
                                                        tmp_path: Path, one_cpu_thread):  # fmt: skip
    """The teacher: a 48 px run of another config (the demo's) on the same classes; the student trains at 32 px."""
    distill = f"loss.distillation={{teacher: {trained_checkpoint}, weight: 0.7, temperature: 2}}"
    student = train(recipe_config(synthetic_prepared, tmp_path, distill), progress=False)
    said = student.summary["teacher"]
    assert said["checkpoint"] == str(trained_checkpoint) and said["image_size"] == [48, 48]  # fed resized batches
    teacher_run = json.loads((trained_checkpoint.parent / "summary.json").read_text())
    assert said["test_top1"] == teacher_run["test_top1"] and said["wall_time_s"] > 0  # its compute, apart
    plain = train(recipe_config(synthetic_prepared, tmp_path / "plain", "trainer.max_epochs=1"), progress=False)
    taught = read_checkpoint(student.best_ckpt)["state_dict"]
    assert set(taught) == set(read_checkpoint(plain.best_ckpt)["state_dict"])  # the student alone, no teacher
    _, info = load_checkpoint(student.best_ckpt)
    assert info.preprocessing.image_size == (32, 32) and info.model_args["hidden_channels"] == 1280


@pytest.mark.slow
def test_a_teacher_of_other_classes_is_refused_before_a_run_folder(four_classes: Path, trained_checkpoint: Path,
                                                                   tmp_path: Path, one_cpu_thread):  # fmt: skip
    runs = tmp_path / "student"
    cfg = recipe_config(four_classes, runs, f"loss.distillation={{teacher: {trained_checkpoint}}}")
    with pytest.raises(UserError, match="trained on other classes"):
        train(cfg, progress=False)
    assert not runs.exists() or not any(runs.iterdir())
    with pytest.raises(UserError, match="no such checkpoint"):
        train(recipe_config(four_classes, runs, f"loss.distillation={{teacher: {tmp_path / 'missing.ckpt'}}}"),
              progress=False)  # fmt: skip


@pytest.mark.slow
def test_teacher_self_trains_the_teacher_then_the_student_in_one_folder(synthetic_prepared: Path, tmp_path: Path,
                                                                        one_cpu_thread):  # fmt: skip
    """`teacher: self` (born-again): the same settings without distillation train first into ``<run>/teacher``; each
    stage resumes on its own, a finished teacher is never trained again."""
    cfg = recipe_config(synthetic_prepared, tmp_path, "loss.distillation={teacher: self}", "trainer.max_epochs=1")
    started = time.perf_counter()
    run = train(cfg, progress=False)
    elapsed = time.perf_counter() - started
    teacher = run.run_dir / "teacher"
    said, own = run.summary["teacher"], json.loads((teacher / "summary.json").read_text())
    assert said["checkpoint"] == str(teacher / "best.ckpt") and said["test_top1"] == own["test_top1"]
    assert run.summary["wall_time_s"] <= elapsed - own["wall_time_s"] + 0.05  # the student's own time: teacher's apart
    assert read_run(run.run_dir)["teacher_top1"] == own["test_top1"]  # `carspotter runs` shows it beside the student
    assert load_run_config(teacher).loss.distillation is None
    assert load_run_config(run.run_dir).loss.distillation.teacher == "self"  # the run's config says what it did
    # Interrupted after the teacher (the student's files gone): --resume trains the student only.
    for name in ("last.ckpt", "best.ckpt", "summary.json", "metrics.csv"):
        (run.run_dir / name).unlink()
    teacher_weights = (teacher / "best.ckpt").read_bytes()
    again = train(load_run_config(run.run_dir), resume=run.run_dir, progress=False)
    assert again.run_dir == run.run_dir and (teacher / "best.ckpt").read_bytes() == teacher_weights
    assert again.summary["teacher"]["test_top1"] == own["test_top1"] and again.best_ckpt.is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [run.run_dir.name]  # no second run folder
    # Interrupted in the teacher's stage (its last.ckpt there, no summary yet): the teacher resumes, not restarts.
    for path in (teacher / "summary.json", run.run_dir / "last.ckpt", run.run_dir / "summary.json"):
        path.unlink()
    epochs_before = (teacher / "metrics.csv").read_text()
    third = train(load_run_config(run.run_dir), resume=run.run_dir, progress=False)
    assert (teacher / "metrics.csv").read_text() == epochs_before and (teacher / "summary.json").is_file()
    assert third.summary["teacher"]["test_top1"] == own["test_top1"]


def test_teacher_self_is_refused_on_several_devices_and_leaves_nothing_when_refused(four_classes: Path,
                                                                                     tmp_path: Path):  # fmt: skip
    runs = tmp_path / "runs"
    with pytest.raises(UserError, match="several devices"):
        train(recipe_config(four_classes, runs, "loss.distillation={teacher: self}", "trainer.devices=2"),
              progress=False)  # fmt: skip
    with pytest.raises(UserError):  # the data is missing: refused by the teacher's stage, no run folder kept
        train(recipe_config(tmp_path / "no-data", runs, "loss.distillation={teacher: self}"), progress=False)
    assert not runs.exists() or not any(runs.iterdir())
