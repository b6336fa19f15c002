"""Synthetic prepared datasets for tests (imported by conftest and test modules)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


def make_synthetic_prepared(root: Path, *, layout: str, per_class: int, seed: int, num_classes: int = 10) -> Path:
    """Synthesise a raw dataset under ``root/raw`` and prepare it into ``root/prepared`` (returned)."""
    from carspotter.data.prepare import prepare
    from carspotter.data.synth import synthesize

    synthesize(root / "raw", layout=layout, num_classes=num_classes, per_class=per_class, seed=seed)
    prepare(root / "raw", root / "prepared")
    return root / "prepared"


def interrupt_prepare_after(monkeypatch: pytest.MonkeyPatch, placed: int) -> Callable[..., None]:
    """Make the prepared-folder writer stop (KeyboardInterrupt) after placing ``placed`` images, as a user's Ctrl-C
    would; returns the real ``writer._place``."""
    from carspotter.data import writer

    real_place = writer._place
    calls = {"n": 0}

    def crash_after(source: Path, dest: Path, *, move: bool) -> None:
        calls["n"] += 1
        if calls["n"] > placed:
            raise KeyboardInterrupt
        real_place(source, dest, move=move)

    monkeypatch.setattr(writer, "_place", crash_after)
    return real_place
