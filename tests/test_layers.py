"""The package's layers, checked from the source: what may import what (issue 33's review, kept true)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "carspotter"

# importer package -> packages it must not import (directly, at any depth of the function)
FORBIDDEN = {
    "inference": ("export", "training", "evaluation", "experiments", "serve"),  # export checks with inference
    "evaluation": ("training", "experiments", "serve"),  # training scores with evaluation's metric set
    "export": ("data", "training"),  # an export reads its calibration photos through inference.inputs
    "formats": ("models", "training", "export", "inference", "data", "evaluation", "experiments", "serve"),
    "data": ("export", "inference", "training", "evaluation", "experiments", "serve"),
    "models": ("training", "export", "inference", "data", "evaluation", "experiments", "serve"),
}
TORCH_FREE = ("formats/metadata.py", "formats/run_dir.py", "formats/files.py")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules_of(package: str) -> list[Path]:
    return sorted((PACKAGE / package).rglob("*.py"))


@pytest.mark.parametrize("importer", sorted(FORBIDDEN))
def test_a_layer_does_not_import_the_layers_above_it(importer: str) -> None:
    offences = []
    for path in modules_of(importer):
        for name in imported_modules(path):
            for banned in FORBIDDEN[importer]:
                if name == f"carspotter.{banned}" or name.startswith(f"carspotter.{banned}."):
                    offences.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert modules_of(importer), f"no modules found under {importer}/"
    assert not offences, "\n".join(sorted(set(offences)))


def test_the_metadata_and_run_folder_formats_import_no_torch() -> None:
    for rel in TORCH_FREE:
        names = imported_modules(PACKAGE / rel)
        assert not [n for n in names if n == "torch" or n.startswith("torch.")], rel


def test_each_shared_reader_is_defined_once() -> None:
    for function in ("read_epoch_metrics", "checkpoint_info", "sha256_file"):
        defined = [p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py")
                   if re.search(rf"^def {function}\(", p.read_text(encoding="utf-8"), re.M)]  # fmt: skip
        assert len(defined) == 1, f"{function} defined in {defined}"


def test_the_default_input_size_is_written_at_most_twice() -> None:
    """227 as a number in code (not in strings or comments): the default input size lives in one place."""
    places = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and type(node.value) is int and node.value == 227:
                places.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert len(places) <= 2, places
