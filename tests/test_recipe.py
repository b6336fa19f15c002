"""The recommended recipe's switches: run-scaled schedules, no decay on norms and biases, EMA, MixUp/CutMix, the
batched RandomResizedCrop, last-epoch selection and test-time flip; each with --resume where it has state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from synthetic_support import make_synthetic_prepared

from carspotter.checkpoint import load_checkpoint, model_state_dict, read_checkpoint
from carspotter.config import load_config
from carspotter.data.batch_augment import BatchPreprocess
from carspotter.errors import UserError
from carspotter.evaluation.metrics import evaluate_on_dataset
from carspotter.inference import load_classifier
from carspotter.models import create_model
from carspotter.predict import predict_images
from carspotter.training.callbacks import read_epoch_metrics
from carspotter.training.finetune import parameter_groups
from carspotter.training.module import RAW_WEIGHTS_KEY, build_batch_mixing, build_run_schedule
from carspotter.training.run import train
from carspotter.training.scoring import evaluate_model

ROOT = Path(__file__).resolve().parents[1]
RECOMMENDED = ROOT / "configs" / "stanford_ghostnet.yaml"


@pytest.fixture(scope="module")
def four_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_prepared(
        tmp_path_factory.mktemp("four"), layout="updated", per_class=24, seed=3, num_classes=4
    )


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


def test_no_weight_decay_on_norms_and_biases() -> None:
    model = create_model("ghostnet_100", num_classes=5)
    cfg = load_config(RECOMMENDED)
    groups = parameter_groups(model, cfg)
    undecayed = [p for g in groups if g.get("weight_decay") == 0.0 for p in g["params"]]
    decayed = [p for g in groups if "weight_decay" not in g for p in g["params"]]
    assert undecayed and all(p.ndim == 1 for p in undecayed) and all(p.ndim > 1 for p in decayed)
    assert len(undecayed) + len(decayed) == len(list(model.parameters()))
    optimizer = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.05)
    assert sorted({g["weight_decay"] for g in optimizer.param_groups}) == [0.0, 0.05]
    # with a backbone learning rate too: four groups, the classifier's first
    both = parameter_groups(model, cfg.model_copy(update={"optimizer": cfg.optimizer.model_copy(
        update={"backbone_lr": 1e-4})}))  # fmt: skip
    assert [g.get("lr") for g in both] == [None, None, 1e-4, 1e-4] and both[1]["weight_decay"] == 0.0
    # the switch off: one group, decayed as the optimizer says
    cfg_off = load_config(RECOMMENDED, ["optimizer.weight_decay_norm_and_bias=true"])
    assert len(parameter_groups(model, cfg_off)) == 1


def test_mixup_and_cutmix_targets_are_probabilities() -> None:
    cfg = load_config(RECOMMENDED, ["data.batch_augmentations=[{MixUp: {alpha: 0.4}}, {CutMix: {alpha: 1.0}}]"])
    mixing = build_batch_mixing(cfg, num_classes=7)
    torch.manual_seed(0)
    x, y = torch.rand(16, 3, 24, 24), torch.randint(0, 7, (16,))
    mixed_any = False
    for _ in range(6):
        mx, my = mixing(x, y)
        assert my.shape == (16, 7)
        torch.testing.assert_close(my.sum(1), torch.ones(16))
        assert (my >= 0).all() and (my.max(1).values >= 0.5 - 1e-6).all()  # the batch's own label keeps the most
        mixed_any |= not torch.equal(mx, x)
    assert mixed_any
    with pytest.raises(UserError, match="not a batch augmentation"):
        load_config(RECOMMENDED, ["data.batch_augmentations=[{RandomErasing: {}}]"])
    with pytest.raises(UserError, match="come from the data"):
        load_config(RECOMMENDED, ["data.batch_augmentations=[{MixUp: {alpha: 1, num_classes: 3}}]"])


def test_batched_random_resized_crop_draws_a_crop_per_image(four_classes: Path) -> None:
    scale = "data.image_augmentations.0.params.scale=[0.25, 1.0]"
    cfg = load_config(RECOMMENDED, [f"data.path={four_classes}", "data.image_size=40", scale]).data
    assert cfg.image_augmentations[0].name == "RandomResizedCrop" and "size" not in cfg.image_augmentations[0].params
    only_crop = cfg.model_copy(update={"image_augmentations": cfg.image_augmentations[:1], "normalize": False})
    preprocess = BatchPreprocess(only_crop)
    ramp = torch.linspace(0, 255, 40).to(torch.uint8)
    images = ramp.view(1, 1, 40, 1).expand(8, 40, 40, 3).contiguous()  # brightness grows to the right
    torch.manual_seed(0)
    out = preprocess(images, train=True)
    assert out.shape == (8, 3, 40, 40)  # back to data.image_size
    left_edges = out[:, 0, 20, 0]
    assert left_edges.unique().numel() > 4  # every image has its own crop
    torch.testing.assert_close(preprocess(images, train=False), images.permute(0, 3, 1, 2).float() / 255)


def recipe_config(data: Path, runs: Path, *extra: str):
    """The recommended recipe shrunk to a few CPU seconds: 32 px, 2 epochs, MixUp/CutMix on."""
    return load_config(RECOMMENDED, [
        f"data.path={data}", f"output.runs_dir={runs}", "data.image_size=32", "trainer.max_epochs=2",
        "trainer.batch_size=8", "data.num_workers=0", "logging.loggers=[csv]", "trainer.ema.decay=0.9",
        "data.batch_augmentations=[{MixUp: {alpha: 0.4}}, {CutMix: {alpha: 1.0}}]", *extra,
    ])  # fmt: skip


@pytest.mark.parametrize("pipeline", ["fast", "classic"])
def test_ema_weights_are_validated_selected_saved_and_resumed(
    four_classes: Path, tmp_path: Path, one_cpu_thread, pipeline: str
) -> None:
    cfg = recipe_config(four_classes, tmp_path / "runs", f"data.pipeline={pipeline}", "trainer.max_epochs=1")
    first = train(cfg, progress=False)
    ckpt = read_checkpoint(first.run_dir / "last.ckpt")
    ema, raw = model_state_dict(ckpt), {k.removeprefix("model."): v for k, v in ckpt[RAW_WEIGHTS_KEY].items()}
    assert ema.keys() == raw.keys()
    moved = [k for k in ema if ema[k].is_floating_point() and not torch.equal(ema[k], raw[k])]
    assert len(moved) > len(ema) // 2  # the averaged weights are not the trained ones
    assert not any(k.startswith("ema.") for k in ckpt["state_dict"])

    resumed = train(recipe_config(four_classes, tmp_path / "runs", f"data.pipeline={pipeline}"), resume=first.run_dir,
                    progress=False)  # fmt: skip
    rows = read_epoch_metrics(resumed.run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert resumed.summary["best_epoch"] == 1 and "last epoch (EMA weights" in resumed.summary["selected_by"]
    # the resumed run continued from the saved EMA (not a fresh copy of the raw weights): its EMA moved on from it
    final = read_checkpoint(resumed.run_dir / "best.ckpt")
    assert not torch.equal(model_state_dict(final)["classifier.weight"], ema["classifier.weight"])
    # best.ckpt is what evaluate, predict and export load: the EMA weights
    model, _ = load_checkpoint(resumed.run_dir / "best.ckpt")
    torch.testing.assert_close(model.state_dict()["classifier.weight"], model_state_dict(final)["classifier.weight"])
    raw_final = final[RAW_WEIGHTS_KEY]["model.classifier.weight"]
    assert not torch.equal(model.state_dict()["classifier.weight"], raw_final)
    # trainer.test scored the EMA weights, as evaluate does: the same figures to the last digit
    scores = evaluate_on_dataset(resumed.best_ckpt, four_classes, batch_size=cfg.trainer.batch_size, progress=False)
    summary = resumed.summary
    assert (scores.top1, scores.top5, scores.n, scores.loss) == (
        summary["test_top1"], summary["test_top5"], summary["test_n"], summary["test_loss"])


def test_exported_model_carries_the_ema_weights(four_classes: Path, tmp_path: Path, one_cpu_thread) -> None:
    from carspotter.export.onnx import export

    run = train(recipe_config(four_classes, tmp_path / "runs"), progress=False)
    ckpt = read_checkpoint(run.best_ckpt)
    out = export(run.best_ckpt, tmp_path / "m.onnx", data=four_classes)
    assert out.agreement.max_abs_diff < 1e-3
    ema_model, info = load_checkpoint(run.best_ckpt)
    raw_model = create_model(info.model_name, num_classes=info.num_classes, **info.model_args)
    raw_model.load_state_dict({k.removeprefix("model."): v for k, v in ckpt[RAW_WEIGHTS_KEY].items()})
    x = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)
    onnx = load_classifier(out.path).logits(x)
    with torch.inference_mode():
        ema_logits = ema_model(torch.from_numpy(x)).numpy()
        raw_logits = raw_model.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(onnx - ema_logits).max() < 1e-3
    assert np.abs(onnx - raw_logits).max() > 1e-2


class _LeftRight(nn.Module):
    """Logits from the mean of the left and of the right half of the image: mirroring swaps them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1] // 2
        return torch.stack([x[..., :w].mean((1, 2, 3)) * 4, x[..., w:].mean((1, 2, 3)) * 3, torch.zeros(len(x))], 1)


def test_test_time_flip_averages_the_photo_and_its_mirror() -> None:
    x = torch.rand(6, 3, 8, 8)
    x[:3, ..., :4] += 1.0  # brighter left half: class 0 without flip
    x[3:, ..., 4:] += 1.5  # brighter right half: class 1 without flip
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    plain = evaluate_model(_LeftRight(), [(x, y)], ["a", "b", "c"], progress=False)
    flipped = evaluate_model(_LeftRight(), [(x, y)], ["a", "b", "c"], progress=False, tta_flip=True)
    logits = _LeftRight()(x)
    mean_probs = (logits.softmax(1) + _LeftRight()(x.flip(3)).softmax(1)) / 2
    expected_loss = float(nn.functional.nll_loss(mean_probs.log(), y))
    assert flipped.loss == pytest.approx(expected_loss, rel=1e-5) and plain.loss != pytest.approx(expected_loss)
    assert flipped.top1 == (mean_probs.argmax(1) == y).float().mean().item()


def test_predict_tta_flip_on_checkpoint_and_onnx(
    trained_checkpoint: Path, exported_onnx: Path, synthetic_prepared: Path, tmp_path: Path
) -> None:
    """With --tta-flip a photo's probabilities are the mean of the photo's and of its mirror image's."""
    from PIL import Image, ImageOps

    from carspotter.data.prepared import load_prepared

    data = load_prepared(synthetic_prepared)
    images = [data.root / f for f in data.test["fname"][:4]]
    mirrored = []
    for i, src in enumerate(images):
        mirrored.append(tmp_path / f"mirror{i}.png")
        ImageOps.mirror(Image.open(src).convert("RGB")).save(mirrored[-1])
    k = len(data.classes)
    for model in (trained_checkpoint, exported_onnx):
        clf = load_classifier(model)
        plain, mirror = predict_images(clf, images, top_k=k), predict_images(clf, mirrored, top_k=k)
        flip = predict_images(clf, images, top_k=k, tta_flip=True)
        for a, m, f in zip(plain, mirror, flip, strict=True):
            pa = {p["class_name"]: p["probability"] for p in a["predictions"]}
            pm = {p["class_name"]: p["probability"] for p in m["predictions"]}
            for p in f["predictions"]:
                assert p["probability"] == pytest.approx((pa[p["class_name"]] + pm[p["class_name"]]) / 2, abs=1e-4)
        assert any(abs(pa[c] - pm[c]) > 1e-3 for c in pa)  # the mirror image is a different input


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


@pytest.mark.parametrize(
    ("override", "section"),
    [
        ("data.image_augmentations=[{RandomHorizontalFlip: {p: high}}]", "data.image_augmentations"),
        ("optimizer.params.lr=-1", "optimizer"),
        ("model.args={hidden_channels: big}", "model"),
        ("data.batch_augmentations=[{MixUp: {alpha: -1}}]", "data.batch_augmentations"),
    ],
)
@pytest.mark.parametrize("pipeline", ["fast", "classic"])
def test_values_that_fail_only_when_used_are_one_line_and_leave_no_run_folder(
    four_classes: Path, tmp_path: Path, override: str, section: str, pipeline: str
) -> None:
    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        f"data.path={four_classes}", f"output.runs_dir={tmp_path / 'runs'}", f"data.pipeline={pipeline}", override,
    ])  # fmt: skip
    with pytest.raises(UserError, match=section.replace(".", r"\.")):
        train(cfg, progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_hostile_checkpoint_given_to_resume_is_refused_before_anything_is_written(
    four_classes: Path, tmp_path: Path
) -> None:
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    cfg = recipe_config(four_classes, tmp_path / "runs")
    (run / "config.yaml").write_text("written by the user\n")
    (run / "last.ckpt").write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        train(cfg, resume=run, progress=False)
    assert not (tmp_path / "pwned").exists()
    assert (run / "config.yaml").read_text() == "written by the user\n"
