"""`carspotter report RUN` in headless Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium): the page
renders, every image loads, nothing is fetched from anywhere, and the per-class table sorts. Also the plots behind it:
``results.png`` from ``metrics.csv`` and a confusion matrix whose size scales with the number of classes.

The browser test is skipped when Chromium, its driver or Selenium is absent (`.ci/run` installs them).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from browser_support import requires_browser, start_chromium
from PIL import Image

from carspotter.evaluation.plots import confused_pairs, plot_confusion, plot_training_curves


@pytest.fixture()
def run_copy(trained_checkpoint: Path, tmp_path: Path) -> Path:
    """A finished run folder (2 epochs on the synthetic dataset) that the test may write into."""
    run = tmp_path / trained_checkpoint.parent.name
    shutil.copytree(trained_checkpoint.parent, run)
    (run / "results.png").unlink(missing_ok=True)
    return run


@pytest.mark.slow
@requires_browser
def test_report_renders_offline_in_chromium(run_copy: Path, tmp_path: Path) -> None:
    pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.common.by import By

    proc = subprocess.run(
        [sys.executable, "-m", "carspotter.cli", "report", str(run_copy), "--examples", "12"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    page = run_copy / "report.html"
    assert page.is_file() and (run_copy / "results.png").is_file()  # drawn from metrics.csv: the run lacked it
    text = page.read_text()
    assert "http://" not in text and "https://" not in text

    driver = start_chromium(tmp_path / "profile")
    try:
        driver.get(page.as_uri())
        assert driver.title == f"carspotter run {run_copy.name}"
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) >= 14  # the curves, the calibration plots, the 12 grid photos (+ the pairs' photos)
        trust = driver.find_element(By.XPATH, "//h2[text()='How far to trust an answer']/following-sibling::p[1]")
        assert "Make top-1" in trust.text and "model top-1 (any year)" in trust.text
        assert driver.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth > 0)")
        requests = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert [r for r in requests if not r.startswith("data:")] == []
        assert len(driver.find_elements(By.CSS_SELECTOR, ".grid figure")) == 12
        assert len(driver.find_elements(By.CSS_SELECTOR, ".grid figure ol li")) == 36  # top-3 each

        def accuracies() -> list[float]:
            cells = driver.find_elements(By.CSS_SELECTOR, "#per-class tbody tr td:nth-child(4)")
            return [float(c.get_attribute("data-value")) for c in cells]

        header = driver.find_element(By.CSS_SELECTOR, "#per-class th:nth-child(4)")
        header.click()
        assert accuracies() == sorted(accuracies())
        header.click()
        assert accuracies() == sorted(accuracies(), reverse=True)
    finally:
        driver.quit()


def test_training_curves_show_a_one_epoch_run(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,train_loss,train_top1,val_loss,val_top1,val_top5,lr\n0,2.2,0.15,2.1,0.2,0.6,0.001\n")
    png = plot_training_curves(metrics, tmp_path / "results.png")
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    blue = (abs(pixels[..., 0] - 31) < 30) & (abs(pixels[..., 1] - 119) < 30) & (pixels[..., 2] > 150)
    assert blue.sum() > 20  # the markers of the single epoch (matplotlib's first colour) are drawn


def test_confusion_matrix_scales_with_the_classes_and_lists_the_confused_pairs(tmp_path: Path) -> None:
    names = [f"Make {i} Model {i} 20{i % 20:02d}" for i in range(196)]
    confusion = np.eye(196, dtype=np.int64) * 4
    confusion[5, 7] = 3
    confusion[9, 2] = 1
    png = plot_confusion(confusion, names, "Confusion matrix: top-1 21.4%, n=800", tmp_path / "cm.png")
    width, height = Image.open(png).size
    assert width >= 196 * 12 and height >= 196 * 12  # about 13 px per class: every label gets its row
    pairs = confused_pairs(confusion, names, limit=5)
    assert [(p["true_id"], p["predicted_id"], p["count"]) for p in pairs] == [(5, 7, 3), (9, 2, 1)]
    assert pairs[0]["share"] == pytest.approx(3 / 7)
