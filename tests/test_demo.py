"""`carspotter demo` (what `make demo` runs) end to end on a shortened budget, and the packaged configs it and a
pip-installed carspotter use (no source checkout needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carspotter import demo
from carspotter.config import load_config, packaged_configs
from carspotter.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_configs_are_packaged_and_found_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import carspotter

    package = Path(carspotter.__file__).parent
    assert {"demo", "stanford_ghostnet", "thesis_c50"} <= set(packaged_configs())
    assert all(p.is_relative_to(package) for p in packaged_configs().values())  # inside the package, not a checkout
    assert demo.default_demo_config() == packaged_configs()["demo"]
    assert (ROOT / "configs" / "stanford_ghostnet.yaml").read_text() == packaged_configs()[
        "stanford_ghostnet"
    ].read_text()
    monkeypatch.chdir(tmp_path)  # no configs/ here: a name finds the packaged recipe
    assert load_config("stanford_ghostnet").trainer.select == "last"
    assert load_config("thesis_c50.yaml").model.args == load_config(ROOT / "configs" / "thesis_c50.yaml").model.args
    with pytest.raises(UserError, match="no such config file.*stanford_ghostnet"):
        load_config("stanford_ghostnets")


@pytest.mark.slow
def test_demo_runs_every_step_and_again_safely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step on a smaller synthetic set (20 photos per class) and budget; run twice in one folder, as a user
    re-running `make demo` does: the data is reused (the training's image cache in it included), a new run is made."""
    monkeypatch.setattr(demo, "DEMO_PER_CLASS", 20)
    shorter = ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "data.image_size=32", "data.num_workers=0"]
    first: list[str] = []
    result = demo.run_demo(tmp_path, None, shorter, echo=first.append)
    assert [line[:4] for line in first if line[:1].isdigit()] == ["1/5 ", "2/5 ", "3/5 ", "4/5 ", "5/5 "]
    assert result.num_classes == demo.DEMO_CLASSES and (result.run_dir / "best.ckpt").is_file()
    # step 4's `evaluate` report agrees with the training's own test score (two code paths)
    assert json.loads((result.run_dir / "eval-test" / "metrics.json").read_text())["top1"] == result.test_top1
    assert json.loads((result.run_dir / "summary.json").read_text())["test_top1"] == result.test_top1
    assert json.loads((result.run_dir / "summary.json").read_text())["epochs_run"] == 1
    assert len(result.prediction["predictions"]) == 3

    second: list[str] = []
    again = demo.run_demo(tmp_path, None, shorter, echo=second.append)
    assert second[0].startswith("1/5 synthetic raw data already in")
    assert again.run_dir != result.run_dir and (result.run_dir / "best.ckpt").is_file()
