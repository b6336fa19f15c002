"""`carspotter runs` in a terminal: it fits the width, its headers are the names `--sort`/`--filter`/`--columns`
take, and the commands that do not train start without importing Lightning or MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from carspotter.config import load_config
from carspotter.experiments.runs_table import COLUMNS

ROOT = Path(__file__).resolve().parents[1]


def _write_run(runs: Path, name: str, val_top1: float, weight_decay: float, epochs: int = 3) -> None:
    """A finished run folder in the format `train` writes (config, per-epoch metrics, summary)."""
    cfg = load_config(
        ROOT / "configs" / "stanford_ghostnet.yaml",
        [f"optimizer.params.weight_decay={weight_decay}", "output.tags=[thesis, a-long-tag-name]"],
    )
    run = runs / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    lines = ["epoch,train_loss,train_top1,val_loss,val_top1,val_top5,lr,epoch_time_s,img_s"]
    lines += [
        f"{e},{2 - e / 10},{val_top1 - 0.1},{2.1 - e / 10},{val_top1 * (e + 1) / epochs},0.9,0.001,10,50"
        for e in range(epochs)
    ]
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    (run / "summary.json").write_text(json.dumps({"num_parameters": 3041412, "test_top1": val_top1 - 0.05}))


@pytest.fixture()
def runs_dir(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    _write_run(runs, "ghostnet_thesis-20260101-120000", 0.62, 0.6)
    _write_run(runs, "ghostnet_thesis-20260102-093000", 0.71, 0.05)
    return runs


def _carspotter(*args: str, width: int = 80) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(width), "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "carspotter.cli", *args], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.parametrize("width", [80, 120])
def test_runs_table_fits_the_terminal_with_flag_names_as_headers(runs_dir: Path, width: int) -> None:
    proc = _carspotter("runs", "--runs-dir", str(runs_dir), "--sort", "-best_val_top1", width=width)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= width
    header = next(line for line in lines if "run_id" in line).split()
    assert "best_val_top1" in header and set(header) <= set(COLUMNS)
    body = [line for line in lines if line.lstrip().startswith("ghostnet_thesis-")]
    assert [line.split()[0] for line in body] == ["ghostnet_thesis-20260102-093000", "ghostnet_thesis-20260101-120000"]
    assert "--columns" in proc.stdout  # the hidden columns are named, with the way to show them


def test_runs_columns_chooses_what_is_shown(runs_dir: Path) -> None:
    proc = _carspotter(
        "runs", "--runs-dir", str(runs_dir), "--columns", "run_id,weight_decay,dropout", "--filter", "weight_decay<0.1"
    )
    assert proc.returncode == 0, proc.stderr
    header = next(line for line in proc.stdout.splitlines() if "run_id" in line).split()
    assert header == ["run_id", "weight_decay", "dropout"]
    assert "ghostnet_thesis-20260102-093000" in proc.stdout and "20260101" not in proc.stdout
    proc = _carspotter("runs", "--runs-dir", str(runs_dir), "--columns", "run_id,wd")
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "weight_decay" in proc.stderr


_IMPORTS = """\
import atexit, json, sys
atexit.register(lambda: sys.stderr.write("\\nMODULES " + json.dumps(sorted({m.split('.')[0] for m in sys.modules}))))
sys.argv = ["carspotter", *sys.argv[1:]]
from carspotter.cli import main
main()
"""


def _top_level_modules(*args: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", _IMPORTS, *args], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stderr.rpartition("MODULES ")[2]))


def test_commands_that_do_not_train_import_neither_lightning_nor_mlflow(
    tmp_path: Path, synthetic_prepared: Path, exported_onnx: Path
) -> None:
    (tmp_path / "empty").mkdir()
    photo = next((synthetic_prepared / "test").rglob("*.jpg"))
    for args in (
        ["--help"],
        ["runs", "--runs-dir", str(tmp_path / "empty")],
        ["models"],
        ["stats", str(synthetic_prepared), "--image-size", "32", "--plot", str(tmp_path / "stats.png")],
        ["predict", str(exported_onnx), str(photo)],
    ):
        loaded = _top_level_modules(*args)
        assert not loaded & {"lightning", "pytorch_lightning", "mlflow", "optuna"}, args
    assert "torch" not in _top_level_modules("runs", "--runs-dir", str(tmp_path / "empty"))
