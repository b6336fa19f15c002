"""`evaluate` refuses a dataset with other classes than the model's, scores one with a subset of them by name, never
writes over an earlier report, and scores an export as its checkpoint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    assert "1 of its 10 classes are not among the model's 10 (e.g. 'Lada Niva 1977')" in proc.stderr
    assert "--allow-class-mismatch" in proc.stderr
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


def test_a_subset_of_the_models_classes_is_scored_by_name(
    trained_checkpoint: Path, synthetic_prepared: Path, tmp_path: Path
) -> None:
    """Issue 31, item 2: a dataset with 4 of the model's 10 classes, numbered its own way, is scored against the
    model's classes: the same predictions as on the whole dataset, on those photos."""
    subset = tmp_path / "four"
    shutil.copytree(synthetic_prepared, subset)
    names = pd.read_csv(subset / "classes.csv").sort_values("class_id")["class_name"].tolist()
    kept = [7, 2, 5, 0]  # the subset's ids 0..3, in another order than the model's
    pd.DataFrame({"class_id": range(len(kept)), "class_name": [names[k] for k in kept]}).to_csv(
        subset / "classes.csv", index=False
    )
    for split in ("train", "test"):
        rows = pd.read_csv(subset / f"{split}.csv")
        rows = rows[rows["class_id"].isin(kept)]
        rows.assign(class_id=rows["class_id"].map({old: new for new, old in enumerate(kept)})).to_csv(
            subset / f"{split}.csv", index=False
        )
    whole = evaluate_on_dataset(trained_checkpoint, synthetic_prepared, "test", progress=False)
    part = evaluate_on_dataset(trained_checkpoint, subset, "test", progress=False)
    assert part.class_names == whole.class_names  # the report lists the model's classes
    assert part.n == int(whole.confusion[kept].sum())
    assert (part.confusion[kept] == whole.confusion[kept]).all() and part.confusion.sum() == part.n
    assert part.top1 == pytest.approx(np.trace(whole.confusion[np.ix_(kept, kept)]) / part.n)


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
