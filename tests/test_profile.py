"""Model profiling: MACs from PyTorch's counter, latency, best accuracy from run folders, and the written files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from carspotter.evaluation.profile import count_macs, profile_models, write_profiles
from carspotter.models import create_model

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def test_families_name_the_architecture_not_the_module_that_builds_it() -> None:
    from carspotter.evaluation.profile import model_family

    names = ["ghostnet_thesis", "mobilenetv3_small_100", "mobilenetv2_100", "efficientnet_b3", "ghostnetv2_100",
             "hardnet39ds", "timm/resnet18"]  # fmt: skip
    assert [model_family(n) for n in names] == ["ghostnet", "mobilenet", "mobilenet", "efficientnet", "ghostnetv2",
                                                "hardnet", "timm"]  # fmt: skip


def test_ghostnet_macs_match_the_paper() -> None:
    # The paper reports 141M FLOPs (multiply-adds) for GhostNet 1.0x at 224x224, 1000 classes.
    macs = count_macs(create_model("ghostnet_100").eval(), 224)
    assert 141e6 <= macs <= 150e6


def _write_summary(runs: Path, run_id: str, model: str, test_top1: float | None, args: dict | None = None) -> None:
    (runs / run_id).mkdir(parents=True)
    summary = {"run_id": run_id, "model": {"name": model, "args": args or {}}, "test_top1": test_top1, "val_top1": 0.5,
               "num_parameters": 1}  # fmt: skip
    (runs / run_id / "summary.json").write_text(json.dumps(summary))


def test_profile_two_models_and_write_files(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _write_summary(runs, "a", "ghostnet_050", 0.61)
    _write_summary(runs, "b", "ghostnet_050", 0.74)
    _write_summary(runs, "c", "ghostnet_050", None)
    _write_summary(runs, "d", "squeezenext23_100", 0.42)
    (runs / "broken").mkdir()
    (runs / "broken" / "summary.json").write_text("{not json")

    profiles = profile_models(["ghostnet_050", "squeezenext23_100"], 64, 10, runs, repeats=3, progress=False)

    by_name = {p.name: p for p in profiles}
    g = by_name["ghostnet_050"]
    assert g.family == "ghostnet" and g.best_test_top1 == 0.74 and g.best_run == "b"
    assert g.params == sum(p.numel() for p in create_model("ghostnet_050", num_classes=10).parameters())
    assert 4 * g.params / 1e6 <= g.weights_mb < 4 * g.params / 1e6 * 1.1  # fp32 weights + BN statistics
    assert 0 < g.macs < 30e6 and g.latency_ms > 0
    assert by_name["squeezenext23_100"].best_test_top1 == 0.42
    assert [p.macs for p in profiles] == sorted(p.macs for p in profiles)

    paths = write_profiles(profiles, tmp_path / "out")
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [p.name for p in profiles]
    payload = json.loads(paths["json"].read_text())
    assert payload["machine"] and len(payload["models"]) == 2
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| ghostnet_050 | ghostnet |" in paths["md"].read_text()


def test_runs_are_matched_to_models_by_their_actual_arguments(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _write_summary(runs, "small-head", "ghostnet_thesis", 0.55, {"hidden_channels": 320})
    profiles = profile_models(["ghostnet_thesis", "ghostnet_050"], 64, 196, runs, repeats=3, progress=False)
    by_label = {p.label: p for p in profiles}
    assert set(by_label) == {"ghostnet_thesis", "ghostnet_thesis(hidden_channels=320)", "ghostnet_050"}
    trained = by_label["ghostnet_thesis(hidden_channels=320)"]
    assert trained.best_test_top1 == 0.55 and trained.best_run == "small-head"
    assert trained.params == 3_041_412  # the thesis's C-50 head, not the 1280-channel default
    assert by_label["ghostnet_thesis"].best_test_top1 is None
    assert by_label["ghostnet_thesis"].params > 3.5e6
    paths = write_profiles(profiles, tmp_path / "out")
    assert "| ghostnet_thesis(hidden_channels=320) | ghostnet |" in paths["md"].read_text()


def test_models_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from carspotter.cli import app

    runner = CliRunner()
    listing = runner.invoke(app, ["models", "--filter", "hardnet*"])
    assert listing.exit_code == 0, listing.output
    assert "hardnet39ds" in listing.output and "ghostnet" not in listing.output

    out = tmp_path / "profile"
    result = runner.invoke(
        app, ["models", "--profile", "--filter", "squeezenext23_100", "--image-size", "64", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "squeezenext23_100" in result.output
    assert sorted(p.suffix for p in out.iterdir()) == [".csv", ".json", ".md", ".png"]


def test_a_zoo_results_file_puts_real_photo_accuracy_beside_the_profile(tmp_path: Path) -> None:
    """`models --profile --results zoo_odd98.csv`: each model's mean test top-1 over its seeds (benchmarks/zoo_real.py
    writes the file); a file without the columns is one error line."""
    from typer.testing import CliRunner

    from carspotter.cli import app

    zoo = tmp_path / "zoo.csv"
    zoo.write_text("model,top1,seed\nghostnet_050,0.30,42\nghostnet_050,0.40,43\nsqueezenet1_1,0.25,42\n")
    profiles = profile_models(["ghostnet_050"], 64, 10, results=zoo, repeats=3, progress=False)
    assert profiles[0].best_test_top1 == pytest.approx(0.35) and profiles[0].best_run == "zoo.csv (2 seeds)"
    result = CliRunner().invoke(app, ["models", "--profile", "--filter", "ghostnet_050", "--image-size", "64",
                                      "--results", str(zoo), "--out", str(tmp_path / "p")])  # fmt: skip
    assert result.exit_code == 0 and "35.00%" in result.output, result.output
    (tmp_path / "bad.csv").write_text("name,accuracy\nx,1\n")
    bad = CliRunner().invoke(app, ["models", "--profile", "--filter", "ghostnet_050", "--results",
                                   str(tmp_path / "bad.csv"), "--out", str(tmp_path / "q")])  # fmt: skip
    assert bad.exit_code != 0 and "not a zoo results CSV" in str(bad.exception or bad.output)
