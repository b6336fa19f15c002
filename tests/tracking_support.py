"""Shared by the tracking/sweep/DDP/notebook tests: a very small synthetic prepared dataset and tiny run configs."""

from __future__ import annotations

from pathlib import Path

from carspotter.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"

# A 0.2M-parameter GhostNet on 32x32 images, one batch per epoch: seconds per run on a CPU.
TINY = [
    "data.num_workers=0",
    "data.image_size=[32,32]",
    "data.image_augmentations=[]",
    "model.args.width=0.25",
    "model.args.hidden_channels=32",
    "trainer.batch_size=16",
    "trainer.precision=32-true",
]


def make_tiny_dataset(root: Path, classes: int = 4, per_class: int = 8) -> Path:
    """Synthesise and prepare a small dataset under ``root`` (once); returns the prepared folder."""
    from carspotter.data.prepare import prepare
    from carspotter.data.synth import synthesize

    raw, prepared = root / "raw", root / "prepared"
    if not (prepared / "manifest.json").is_file():
        synthesize(raw, layout="updated", num_classes=classes, per_class=per_class, seed=0, archives=False)
        prepare(raw, prepared)
    return prepared


def tiny_overrides(data: Path, runs: Path, *extra: str) -> list[str]:
    return [f"data.path={data}", f"output.runs_dir={runs}", *TINY, *extra]


def tiny_config(data: Path, runs: Path, *extra: str) -> Config:
    return load_config(DEMO, tiny_overrides(data, runs, *extra))
