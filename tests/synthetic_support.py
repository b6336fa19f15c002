"""Synthetic prepared datasets for tests (imported by conftest and test modules)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

CARSPOTTER = [sys.executable, "-m", "carspotter.cli"]  # the CLI as a user runs it, in a process of its own


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


def rewrite_first_annotation(mat: Path, field: str, value: str) -> None:
    """Point the first annotation of a Stanford .mat file elsewhere, written with the project's own .mat writer."""
    import scipy.io

    from carspotter.data.stanford_mat import mat_struct, read_struct

    variables = {k: v for k, v in scipy.io.loadmat(str(mat)).items() if not k.startswith("__")}
    rows = read_struct(mat, "annotations", ())
    rows[0][field] = value
    variables["annotations"] = mat_struct(rows, tuple(rows[0]))
    scipy.io.savemat(str(mat), variables, format="5", do_compression=True)
