"""Multi-process training: `trainer.strategy: ddp` with 2 CPU processes (gloo), launched by `carspotter train`.

Lightning re-runs the command for rank 1; only rank 0 may create the run folder, write metrics/summary, log to
MLflow and print.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tracking_support import DEMO, ROOT, make_tiny_dataset, tiny_overrides

from carspotter.evaluation.metrics import evaluate_on_dataset
from carspotter.formats.run_dir import read_epoch_metrics
from carspotter.training.loggers import local_tracking_uri


@pytest.mark.slow
def test_two_process_ddp_on_cpu_writes_one_run_from_rank_zero(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "data", classes=4, per_class=8)  # 4 train, 4 test images per class
    runs = tmp_path / "runs"
    overrides = tiny_overrides(
        data,
        runs,
        "trainer.batch_size=8",
        "data.val_fraction=0.25",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
    )
    cmd = [sys.executable, "-m", "carspotter.cli", "train", "--config", str(DEMO)]
    for item in overrides:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    (run,) = [p for p in runs.iterdir() if p.is_dir() and (p / "config.yaml").is_file()]
    assert proc.stdout.count("best epoch") == 1  # rank 1 prints nothing
    assert proc.stdout.count("run folder:") == 1 and str(run) in proc.stdout.replace("\n", "")  # rich wraps
    rows = read_epoch_metrics(run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]  # one row per epoch: only rank 0 writes
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["test_n"] == 16
    # rank 0 scored the whole test split alone (a distributed sampler pads it): what `evaluate` says, to the digit
    result = evaluate_on_dataset(run / "best.ckpt", data, "test", batch_size=8, progress=False)
    assert (result.top1, result.top5, result.n, result.loss) == tuple(
        summary[k] for k in ("test_top1", "test_top5", "test_n", "test_loss")
    )
    # 12 train images split over 2 ranks → 6 each → 1 batch of 8 per epoch (one process would need 2).
    assert torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 2

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=local_tracking_uri(runs))
    (mlrun,) = client.search_runs([client.get_experiment_by_name("carspotter").experiment_id])
    assert mlrun.info.run_name == run.name and mlrun.info.status == "FINISHED"
    assert len(client.get_metric_history(mlrun.info.run_id, "val/top1")) == 2


@pytest.mark.parametrize("key", ["trainer.num_nodes=0", "trainer.strategy=horovod"])
def test_distributed_settings_are_validated(key: str) -> None:
    from carspotter.config import load_config
    from carspotter.errors import UserError

    with pytest.raises(UserError, match=key.split("=")[0]):
        load_config(DEMO, [key])
