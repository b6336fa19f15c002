"""Synthetic prepared datasets for tests (imported by conftest and test modules)."""

from __future__ import annotations

from pathlib import Path


def make_synthetic_prepared(root: Path, *, layout: str, per_class: int, seed: int, num_classes: int = 10) -> Path:
    """Synthesise a raw dataset under ``root/raw`` and prepare it into ``root/prepared`` (returned)."""
    from carspotter.data.prepare import prepare
    from carspotter.data.synth import synthesize

    synthesize(root / "raw", layout=layout, num_classes=num_classes, per_class=per_class, seed=seed)
    prepare(root / "raw", root / "prepared")
    return root / "prepared"
