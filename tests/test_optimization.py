"""`carspotter.training.optimization`: run-scaled schedules (warm-up + cosine, step decay at fractions of the run),
their checked values, and a --resume with more epochs continuing on the longer schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from recipe_support import RECOMMENDED, recipe_config

from carspotter.config import load_config
from carspotter.errors import UserError
from carspotter.run_files import read_epoch_metrics
from carspotter.training.optimization import build_run_schedule
from carspotter.training.run import train


def lrs(name: str, params: dict, total: int) -> list[float]:
    """The learning rate of each of ``total`` optimizer steps (base lr 1)."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = build_run_schedule(name, params, optimizer, total)
    seen = []
    for _ in range(total):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return seen


@pytest.mark.parametrize("total", [300, 1200])  # e.g. 10 and 40 epochs of 30 batches: the same shape
def test_warmup_then_cosine_scales_with_the_run(total: int) -> None:
    seen = lrs("cosine", {"warmup": 0.1, "final_lr": 0.01}, total)
    warm = total // 10
    assert seen[0] == pytest.approx(1 / (warm + 1))  # linear warm-up from base/(warm+1) ...
    assert seen[warm // 2] == pytest.approx((1 + warm // 2) / (warm + 1))
    assert seen[warm] == pytest.approx(1.0)  # ... to the base lr at 10% of the run
    assert all(a < b for a, b in zip(seen[:warm], seen[1 : warm + 1], strict=True))
    middle = warm + (total - warm) // 2  # cosine: half way between the base lr and the final one
    assert seen[middle] == pytest.approx((1 + 0.01) / 2, abs=1e-9)
    assert seen[-1] == pytest.approx(0.01, abs=1e-3)  # the last step ends at final_lr x base
    assert all(a >= b for a, b in zip(seen[warm:], seen[warm + 1 :], strict=False))


def test_step_schedule_decays_at_fractions_of_the_run() -> None:
    for total in (200, 800):
        seen = lrs("step", {"milestones": [0.5, 0.75], "gamma": 0.1}, total)
        assert seen[total // 2 - 1] == 1.0 and seen[total // 2] == pytest.approx(0.1)
        assert seen[3 * total // 4 - 1] == pytest.approx(0.1) and seen[3 * total // 4] == pytest.approx(0.01)


def test_run_schedule_values_are_checked() -> None:
    for bad, message in [
        ("scheduler.params={warmup: 2}", "warmup is a fraction"),
        ("scheduler.params={T_max: 5}", "no parameter"),
        ("scheduler.params={milestones: [60, 80]}", "milestones are increasing fractions"),
    ]:
        with pytest.raises(UserError, match=message):
            load_config(RECOMMENDED, ["scheduler.name=step" if "milestones" in bad else "scheduler.name=cosine", bad])


def test_resume_with_more_epochs_continues_on_the_longer_schedule(four_classes: Path, tmp_path: Path, one_cpu_thread):
    """Interrupted after 1 epoch and resumed with trainer.max_epochs raised to 3: the cosine is laid out over the new
    length (the learning rate of each epoch is the one an uninterrupted 3-epoch run has)."""
    three = train(recipe_config(four_classes, tmp_path / "a", "trainer.max_epochs=3"), progress=False)
    first = train(recipe_config(four_classes, tmp_path / "b", "trainer.max_epochs=1"), progress=False)
    resumed = train(recipe_config(four_classes, tmp_path / "b", "trainer.max_epochs=3"), resume=first.run_dir,
                    progress=False)  # fmt: skip
    want = [float(r["lr"]) for r in read_epoch_metrics(three.run_dir / "metrics.csv")]
    got = [float(r["lr"]) for r in read_epoch_metrics(resumed.run_dir / "metrics.csv")]
    assert len(want) == 3 and got[1:] == pytest.approx(want[1:], rel=1e-6)
