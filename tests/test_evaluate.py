"""`evaluate` refuses a dataset with other classes than the model's, never writes over an earlier report, and scores
an export as its checkpoint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from carspotter.evaluation.metrics import evaluate_on_dataset, new_report_dir, write_report


@pytest.fixture()
def renamed_dataset(synthetic_prepared: Path, tmp_path: Path) -> Path:
    """The synthetic dataset with class 3 under another name: a dataset the checkpoint was not trained on."""
    other = tmp_path / "other_cars"
    shutil.copytree(synthetic_prepared, other)
    classes = pd.read_csv(other / "classes.csv")
    classes.loc[classes["class_id"] == 3, "class_name"] = "Lada Niva 1977"
    classes.to_csv(other / "classes.csv", index=False)
    return other


def _evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "carspotter.cli", "evaluate", *args], capture_output=True, text=True, timeout=300
    )


def test_evaluate_refuses_other_classes_naming_the_first_difference(
    trained_checkpoint: Path, renamed_dataset: Path, tmp_path: Path
) -> None:
    proc = _evaluate(str(trained_checkpoint), "--data", str(renamed_dataset), "--out", str(tmp_path / "r"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
    assert "class 3 is 'Lada Niva 1977'" in proc.stderr and "--allow-class-mismatch" in proc.stderr
    assert not (tmp_path / "r").exists()

    proc = _evaluate(
        str(trained_checkpoint),
        "--data",
        str(renamed_dataset),
        "--out",
        str(tmp_path / "r"),
        "--allow-class-mismatch",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "r" / "metrics.json").is_file()


def test_report_folder_names_the_dataset_and_split_and_is_never_overwritten(
    trained_checkpoint: Path, synthetic_prepared: Path
) -> None:
    result = evaluate_on_dataset(trained_checkpoint, synthetic_prepared, "test", progress=False)
    first = write_report(result, new_report_dir(trained_checkpoint, synthetic_prepared, "test"))["metrics"].parent
    second = write_report(result, new_report_dir(trained_checkpoint, synthetic_prepared, "test"))["metrics"].parent
    assert first.name == f"eval-best-{synthetic_prepared.name}-test" and first.parent == trained_checkpoint.parent
    assert second.name == f"{first.name}-2"
    assert (first / "metrics.json").is_file() and (second / "metrics.json").is_file()


@pytest.mark.slow
def test_exports_are_evaluated_as_their_checkpoint(
    responsive_checkpoint: Path, responsive_onnx: Path, exported_pte: Path, synthetic_prepared: Path
) -> None:
    """`evaluate` on the ONNX and ExecuTorch exports counts what it counts on their checkpoint (their logits differ
    by under 1e-3, so at most a near-tie may flip)."""
    reference = evaluate_on_dataset(responsive_checkpoint, synthetic_prepared, progress=False)
    for export in (responsive_onnx, exported_pte):
        scores = evaluate_on_dataset(export, synthetic_prepared, progress=False)
        assert scores.n == reference.n == int(scores.confusion.sum())
        assert abs(scores.top1 - reference.top1) <= 1 / reference.n and abs(scores.loss - reference.loss) < 1e-4
