"""The recommended recipe (configs/stanford_ghostnet.yaml) shrunk for tests (imported by test modules)."""

from __future__ import annotations

from pathlib import Path

from carspotter.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RECOMMENDED = ROOT / "configs" / "stanford_ghostnet.yaml"


def recipe_config(data: Path, runs: Path, *extra: str):
    """The recommended recipe shrunk to a few CPU seconds: 32 px, 2 epochs, MixUp/CutMix on; its weight decay per step
    as in the recipe's reference run (scaled to a run a thousand times shorter, it would erase every weight); one run,
    not the recipe's two (its own teacher first: tests/test_distill.py trains that)."""
    return load_config(RECOMMENDED, [
        f"data.path={data}", f"output.runs_dir={runs}", "data.image_size=32", "trainer.max_epochs=2",
        "trainer.batch_size=8", "data.num_workers=0", "logging.loggers=[csv]", "trainer.ema.decay=0.9",
        "data.batch_augmentations=[{MixUp: {alpha: 0.4}}, {CutMix: {alpha: 1.0}}]",
        "optimizer.weight_decay_scaling=null", "loss.distillation=null", *extra,
    ])  # fmt: skip
