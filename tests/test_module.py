"""`carspotter.training.module`: with trainer.ema on, the averaged weights are validated, selected, saved as the
model (raw weights beside them for --resume), resumed, scored by trainer.test and exported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from recipe_support import recipe_config

from carspotter.evaluation.metrics import evaluate_on_dataset
from carspotter.formats.checkpoint import RAW_WEIGHTS_KEY, model_state_dict, read_checkpoint
from carspotter.formats.run_dir import read_epoch_metrics
from carspotter.inference import load_classifier
from carspotter.inference.torch_backend import load_checkpoint
from carspotter.models import create_model
from carspotter.training.run import train


@pytest.mark.slow
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
        summary["test_top1"],
        summary["test_top5"],
        summary["test_n"],
        summary["test_loss"],
    )


@pytest.mark.slow
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
