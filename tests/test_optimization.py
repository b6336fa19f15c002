"""`carspotter.training.optimization`: run-scaled schedules (warm-up + cosine, step decay at fractions of the run),
their checked values, a --resume with more epochs continuing on the longer schedule, and weight decay that scales
with the run (`optimizer.weight_decay_scaling`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from recipe_support import RECOMMENDED, recipe_config

from carspotter.config import load_config
from carspotter.errors import UserError
from carspotter.formats.run_dir import read_epoch_metrics
from carspotter.training.optimization import build_run_schedule, per_step_weight_decay
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


@pytest.mark.slow
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


# ------------------------------------------------------------------------- weight decay that scales with the run


def _decay_in_last_ckpt(run_dir: Path) -> float:
    ckpt = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)
    (used,) = {g["weight_decay"] for g in ckpt["optimizer_states"][0]["param_groups"]}  # every weight decays alike
    return used


@pytest.mark.slow
def test_scaled_weight_decay_follows_the_runs_steps(four_classes: Path, tmp_path: Path, one_cpu_thread) -> None:
    """Issue 34, item 1: with power 1, lr x per-step decay x optimizer steps is the same for any batch and epoch
    count (twice the steps, half the decay per step); with power 0.5 twice the steps divide it by sqrt(2); the
    optimizer really uses the value the summary reports."""
    runs = {}
    for batch, epochs, power in ((8, 2, 1.0), (16, 2, 1.0), (8, 4, 1.0), (8, 2, 0.5), (8, 4, 0.5)):
        cfg = recipe_config(four_classes, tmp_path / f"b{batch}e{epochs}p{power}", f"trainer.batch_size={batch}",
                            f"trainer.max_epochs={epochs}", "optimizer.params.weight_decay=0.05",
                            f"optimizer.weight_decay_scaling={{reference_steps: 100, power: {power}}}")
        runs[batch, epochs, power] = train(cfg, progress=False).summary
    for (_, epochs, power), s in runs.items():
        assert s["optimizer_steps"] % epochs == 0 and s["epochs_run"] == epochs
        assert s["weight_decay_per_step"] == pytest.approx(0.05 * (100 / s["optimizer_steps"]) ** power, rel=1e-9)
        assert _decay_in_last_ckpt(Path(s["run_dir"])) == pytest.approx(s["weight_decay_per_step"], rel=1e-12)
    decay = {k: s["weight_decay_per_step"] * s["optimizer_steps"] for k, s in runs.items()}  # the run's total / lr
    assert decay[8, 4, 1.0] == pytest.approx(decay[8, 2, 1.0]) == pytest.approx(decay[16, 2, 1.0])
    assert runs[8, 4, 0.5]["weight_decay_per_step"] == pytest.approx(runs[8, 2, 0.5]["weight_decay_per_step"] / 2**0.5)


@pytest.mark.slow
def test_scaled_weight_decay_follows_a_resume_with_more_epochs(four_classes: Path, tmp_path: Path, one_cpu_thread):
    scaled = ("optimizer.params.weight_decay=0.05", "optimizer.weight_decay_scaling={reference_steps: 100}")
    first = train(recipe_config(four_classes, tmp_path, "trainer.max_epochs=1", *scaled), progress=False)
    resumed = train(recipe_config(four_classes, tmp_path, "trainer.max_epochs=3", *scaled), resume=first.run_dir,
                    progress=False)  # fmt: skip
    after = resumed.summary["weight_decay_per_step"]
    assert after == pytest.approx(first.summary["weight_decay_per_step"] / 3)
    assert _decay_in_last_ckpt(resumed.run_dir) == pytest.approx(after)


def test_the_recipe_scales_its_decay_from_where_it_was_chosen() -> None:
    """odd98 at batch 16 and 60 epochs (1,981 training photos: 124 steps an epoch) gets the chosen 1.2 per step; all
    196 classes (twice the photos) 1.2 / sqrt(2), the full train split (four times) half of it."""
    cfg = load_config(RECOMMENDED)
    assert per_step_weight_decay(cfg, 124 * 60) == pytest.approx(1.2)
    assert per_step_weight_decay(cfg, 2 * 124 * 60) == pytest.approx(1.2 / 2**0.5)
    assert per_step_weight_decay(cfg, 4 * 124 * 60) == pytest.approx(0.6)
    assert per_step_weight_decay(load_config(RECOMMENDED, ["optimizer.weight_decay_scaling=null"]), 10) == 1.2
    with pytest.raises(UserError, match="weight_decay_scaling scales params.weight_decay"):
        load_config(RECOMMENDED, ["optimizer.params={lr: 0.001}"])
    with pytest.raises(UserError, match="weight_decay_scaling.power"):
        load_config(RECOMMENDED, ["optimizer.weight_decay_scaling.power=2"])


# ------------------------------------------------------------------------- sharpness-aware minimisation


def test_sam_steps_with_the_gradient_at_the_moved_weights() -> None:
    """`LightningSAM` as Lightning steps it (a closure, no gradient yet): the closure runs at the weights, then at the
    weights moved rho along the normalised gradient, and the wrapped AdamW takes that second gradient from the
    original weights; the step returns the first pass's loss and counts the second pass as perturbed."""
    from carspotter.training.sam import LightningSAM

    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    model = nn.Linear(5, 3)
    twin = nn.Linear(5, 3)
    twin.load_state_dict(model.state_dict())
    sam = LightningSAM(model.parameters(), torch.optim.AdamW, rho=0.5, lr=0.1, weight_decay=0.0)
    passes = []

    def closure() -> torch.Tensor:
        sam.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        passes.append((loss.item(), sam.perturbed))
        return loss

    first = sam.step(closure)
    assert [p for _, p in passes] == [False, True] and not sam.perturbed
    assert first.item() == pytest.approx(passes[0][0]) and passes[1][0] > passes[0][0]  # uphill: the sharp side

    # By hand: gradient g at w, move to w + rho g / |g|, gradient there, one AdamW step from w.
    nn.functional.cross_entropy(twin(x), y).backward()
    grads = [p.grad.clone() for p in twin.parameters()]
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(twin.parameters(), grads, strict=True):
            p.add_(0.5 * g / norm)
    twin.zero_grad()
    nn.functional.cross_entropy(twin(x), y).backward()
    with torch.no_grad():
        for p, g in zip(twin.parameters(), grads, strict=True):
            p.sub_(0.5 * g / norm)
    torch.optim.AdamW(twin.parameters(), lr=0.1, weight_decay=0.0).step()
    for got, want in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(got, want)


def test_sam_refuses_fp16_loss_scaling() -> None:
    with pytest.raises(UserError, match="optimizer.sam does not work with trainer.precision 16-mixed"):
        load_config(RECOMMENDED, ["optimizer.sam={rho: 0.05}", "trainer.precision=16-mixed"])


@pytest.mark.slow
def test_a_sam_run_trains_and_resumes_with_its_optimizer_state(four_classes: Path, tmp_path: Path, one_cpu_thread):
    """A real Lightning run with optimizer.sam: AdamW's moments are in the checkpoint (SAM shares its state), a
    --resume continues from them."""
    sam = ("optimizer.sam={rho: 0.05}",)
    first = train(recipe_config(four_classes, tmp_path, "trainer.max_epochs=1", *sam), progress=False)
    state = torch.load(first.run_dir / "last.ckpt", map_location="cpu", weights_only=True)["optimizer_states"][0]
    assert state["state"] and all("exp_avg" in s and "old_p" not in s for s in state["state"].values())
    resumed = train(recipe_config(four_classes, tmp_path, "trainer.max_epochs=2", *sam), resume=first.run_dir,
                    progress=False)  # fmt: skip
    assert resumed.summary["epochs_run"] == 2 and resumed.summary["optimizer_steps"] == 2 * first.summary[
        "optimizer_steps"]
