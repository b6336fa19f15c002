"""`benchmarks/zoo_real.py` end to end on tiny synthetic data (issue 29's smoke test): two models trained for one
epoch through `carspotter train`, exported to ONNX fp32 and int8, timed and scored; the CSV has exactly the issue's
columns, the picture and the provenance JSON are written, and a second call keeps the measured rows."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
COLUMNS = ["model", "top1", "top5", "int8_top1", "params_m", "macs_m", "macs_m_227", "latency_ms", "int8_latency_ms",
           "train_minutes", "image_size", "epochs", "seed", "setting", "config_sha256"]  # fmt: skip


@pytest.mark.slow
def test_the_zoo_benchmark_writes_every_column_for_two_models(four_classes: Path, tmp_path: Path) -> None:
    out = tmp_path / "zoo"
    command = [sys.executable, "zoo_real.py", "--data", str(four_classes), "--models",
               "ghostnet_050,mobilenetv3_small_100", "--size", "32", "--epochs", "1", "--workdir", str(out),
               "--csv", str(out / "zoo.csv"), "--plot", str(out / "zoo.png"), "--jobs", "2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=BENCHMARKS, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-1500:]

    with (out / "zoo.csv").open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS
    assert sorted(r["model"] for r in rows) == ["ghostnet_050", "mobilenetv3_small_100"]
    for r in rows:
        assert all(r[c] != "" for c in COLUMNS), r
        assert 0.0 <= float(r["top1"]) <= float(r["top5"]) <= 1.0 and 0.0 <= float(r["int8_top1"]) <= 1.0
        assert float(r["params_m"]) > 0 and float(r["macs_m_227"]) > float(r["macs_m"]) > 0
        assert float(r["latency_ms"]) > 0 and float(r["int8_latency_ms"]) > 0
        assert (r["image_size"], r["epochs"], r["seed"], r["setting"]) == ("32", "1", "42", "recipe")
        assert len(r["config_sha256"]) == 64
    assert (out / "zoo.png").stat().st_size > 10_000
    record = json.loads((out / "zoo.json").read_text())
    assert record["machine"]["cores"] and all(set(row["commands"]) >= {"train", "export", "export_int8", "bench"}
                                              for row in record["rows"])  # fmt: skip

    again = subprocess.run(command, cwd=BENCHMARKS, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-1500:]
    assert again.stdout.count("measured before") == 2 and ": training" not in again.stdout
    with (out / "zoo.csv").open() as f:
        assert list(csv.DictReader(f)) == rows  # kept, not measured again
