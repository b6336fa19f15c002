"""Experiment tracking: CSV/TensorBoard/MLflow logging of real runs, read back through MLflow's client API; the runs
table and its CLI; concurrent writers on one SQLite MLflow store."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tracking_support import make_tiny_dataset, tiny_config
from typer.testing import CliRunner

from carspotter.cli import app
from carspotter.config import load_config
from carspotter.errors import UserError
from carspotter.experiments.runs_table import collect_runs, filter_runs, plot_runs, sort_runs
from carspotter.formats.run_dir import read_epoch_metrics
from carspotter.training.loggers import flatten, local_tracking_uri
from carspotter.training.run import train


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory):
    """Two tiny trainings into one runs folder, with different settings and loggers."""
    root = tmp_path_factory.mktemp("tracking")
    data = make_tiny_dataset(root / "data")
    runs = root / "runs"
    first = train(
        tiny_config(
            data,
            runs,
            "trainer.max_epochs=2",
            "logging.loggers=[csv,mlflow,tensorboard]",
            "output.run_name=first",
            "output.tags=[alpha,shared]",
            "output.description=first run",
        ),
        progress=False,
    )
    second = train(
        tiny_config(
            data,
            runs,
            "trainer.max_epochs=1",
            "optimizer.params.lr=0.01",
            "model.args.drop_rate=0.0",
            "output.run_name=second",
            "output.tags=[beta]",
        ),
        progress=False,
    )
    return runs, first, second


def _best(run_dir: Path, key: str, pick=max) -> float:
    return pick(float(r[key]) for r in read_epoch_metrics(run_dir / "metrics.csv"))


@pytest.mark.slow
def test_runs_csv_lists_both_runs_with_their_best_metrics(two_runs) -> None:
    runs, first, second = two_runs
    result = CliRunner().invoke(app, ["runs", "--runs-dir", str(runs), "--csv"])
    assert result.exit_code == 0, result.output
    rows = {r["run_id"]: r for r in csv.DictReader(io.StringIO(result.output))}
    assert set(rows) == {"first", "second"}
    for run in (first, second):
        row = rows[run.run_dir.name]
        assert float(row["best_val_top1"]) == pytest.approx(_best(run.run_dir, "val_top1"))
        assert float(row["best_val_top1"]) == pytest.approx(run.summary["val_top1"])
        assert float(row["best_val_loss"]) == pytest.approx(_best(run.run_dir, "val_loss", min))
        assert float(row["best_train_loss"]) == pytest.approx(_best(run.run_dir, "train_loss", min))
        assert float(row["test_top1"]) == pytest.approx(run.summary["test_top1"])
        assert int(row["params"]) == run.summary["num_parameters"]
        assert row["status"] == "done" and row["model"] == "ghostnet_thesis" and row["image_size"] == "32x32"
    assert rows["first"]["epochs"] == "2" and rows["second"]["epochs"] == "1"
    assert float(rows["second"]["lr"]) == 0.01 and float(rows["second"]["dropout"]) == 0.0
    assert rows["first"]["tags"] == "alpha,shared" and rows["first"]["head_width"] == "32"


def test_mlflow_store_in_the_runs_folder_holds_both_runs(two_runs) -> None:
    from mlflow.tracking import MlflowClient

    runs, first, second = two_runs
    assert (runs / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=local_tracking_uri(runs))
    experiment = client.get_experiment_by_name("carspotter")
    found = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(found) == {"first", "second"}
    for run in (first, second):
        mlrun = found[run.run_dir.name]
        assert mlrun.info.status == "FINISHED"
        params = mlrun.data.params
        assert params["model.name"] == "ghostnet_thesis"
        assert params["optimizer.params.lr"] == str(load_config(run.run_dir / "config.yaml").optimizer.params["lr"])
        assert int(params["num_parameters"]) == run.summary["num_parameters"]
        history = client.get_metric_history(mlrun.info.run_id, "val/top1")
        assert [m.value for m in history] == pytest.approx(
            [float(r["val_top1"]) for r in read_epoch_metrics(run.run_dir / "metrics.csv")]
        )
        assert len(client.get_metric_history(mlrun.info.run_id, "lr")) == run.summary["epochs_run"]
        assert mlrun.data.metrics["test/top1"] == pytest.approx(run.summary["test_top1"])
        assert mlrun.data.metrics["summary/val_top1"] == pytest.approx(run.summary["val_top1"])
        artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
        assert {"best.ckpt", "summary.json", "metrics.csv", "config.yaml"} <= artifacts
        local = Path(client.download_artifacts(mlrun.info.run_id, "best.ckpt", str(run.run_dir / "dl")))
        assert local.read_bytes() == (run.run_dir / "best.ckpt").read_bytes()
    assert found["first"].data.tags["mlflow.note.content"] == "first run"
    assert found["first"].data.tags["carspotter.tags"] == "alpha,shared"
    assert (runs / "mlartifacts").is_dir()


def test_tensorboard_logs_per_epoch_scalars_only_when_chosen(two_runs) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, first, second = two_runs
    acc = EventAccumulator(str(first.run_dir / "tensorboard"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert {"val/top1", "val/loss", "train/loss_epoch", "lr", "test/top1"} <= set(scalars)
    assert len(acc.Scalars("val/top1")) == 2
    assert not (second.run_dir / "tensorboard").exists()


def test_runs_table_filters_sorts_and_plots(two_runs, tmp_path: Path) -> None:
    runs, first, second = two_runs
    rows = collect_runs(runs)
    assert [r["run_id"] for r in sort_runs(rows, "epochs")] == ["second", "first"]
    assert [r["run_id"] for r in sort_runs(rows, "-run_id")] == ["second", "first"]
    assert [r["run_id"] for r in filter_runs(rows, "tags~alpha")] == ["first"]
    assert [r["run_id"] for r in filter_runs(rows, "lr>=0.01, epochs=1")] == ["second"]
    with pytest.raises(UserError, match="unknown column"):
        sort_runs(rows, "accuracy")
    with pytest.raises(UserError, match="COLUMN OP VALUE"):
        filter_runs(rows, "top1 ≈ 3")
    result = CliRunner().invoke(
        app, ["runs", "--runs-dir", str(runs), "--plot", str(tmp_path / "c.png"), "first", str(second.run_dir)]
    )
    assert result.exit_code == 0, result.output
    png = (tmp_path / "c.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    plot_runs([first.run_dir], tmp_path / "one.png")


def test_incomplete_run_is_listed_as_such(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "crashed"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: {name: ghostnet_100, args: {}}\n")
    (run / "metrics.csv").write_text("epoch,train_loss,train_top1,val_loss,val_top1\n0,2.0,0.1,2.1,0.2\n")
    (row,) = collect_runs(tmp_path / "runs")
    assert row["status"] == "incomplete" and row["best_val_top1"] == 0.2 and row["test_top1"] is None


def test_flatten_config_for_trackers() -> None:
    flat = flatten({"a": {"b": 1, "c": [1, 2], "d": {}}, "e": None})
    assert flat == {"a.b": 1, "a.c": "[1, 2]", "a.d": "{}", "e": None}


def test_logger_names_are_validated_and_csv_is_always_on() -> None:
    assert load_config(None, ["logging.loggers=[tensorboard]"]).logging.loggers == ["csv", "tensorboard"]
    with pytest.raises(UserError, match="logging.loggers.0"):
        load_config(None, ["logging.loggers=[neptune]"])


_WRITER = textwrap.dedent(
    """
    import sys
    from carspotter.training.loggers import SafeMLFlowLogger
    uri, artifacts, name = sys.argv[1:]
    logger = SafeMLFlowLogger(
        experiment_name="concurrent", run_name=name, tracking_uri=uri, artifact_location=artifacts
    )
    logger.log_hyperparams({"writer": name})
    for step in range(40):
        logger.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    logger.finalize("success")
    """
)


@pytest.mark.slow
def test_two_processes_create_and_write_one_sqlite_store_at_once(tmp_path: Path) -> None:
    """A new store opened by two processes at the same moment (both would run MLflow's schema migrations), its
    experiment created and written by both: no 'table already exists', no 'database is locked', no lost rows."""
    from mlflow.tracking import MlflowClient

    uri = local_tracking_uri(tmp_path / "runs")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, uri, str(tmp_path / "art"), name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("w1", "w2")
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("concurrent")
    assert experiment.artifact_location == str(tmp_path / "art")
    found = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(found) == {"w1", "w2"}
    for run in found.values():
        assert run.info.status == "FINISHED" and run.data.params == {"writer": run.info.run_name}
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 40


def test_an_experiment_another_run_creates_meanwhile_is_joined_and_a_deleted_one_is_a_user_error(
    two_runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from carspotter.training.loggers import SafeMLFlowLogger

    runs, _, _ = two_runs
    shutil.copyfile(runs / "mlflow.db", tmp_path / "mlflow.db")  # a migrated store, without MLflow's seconds of setup
    uri = local_tracking_uri(tmp_path)
    other = MlflowClient(tracking_uri=uri)
    logger = SafeMLFlowLogger(experiment_name="raced", run_name="late", tracking_uri=uri)
    lookup = logger._mlflow_client.get_experiment_by_name

    def lookup_then_other_run_creates(name: str):
        found = lookup(name)
        if found is None:  # another run creates it between this run's lookup and its create
            other.create_experiment(name)
        return found

    monkeypatch.setattr(logger._mlflow_client, "get_experiment_by_name", lookup_then_other_run_creates)
    experiment_id = logger.experiment_id  # looked up (none), created (already exists): joins the other run's
    raced = other.get_experiment_by_name("raced")
    assert experiment_id == raced.experiment_id
    assert other.get_run(logger.run_id).info.experiment_id == raced.experiment_id

    other.delete_experiment(raced.experiment_id)
    with pytest.raises(UserError, match=f"is deleted.*restore --experiment-id {raced.experiment_id}"):
        _ = SafeMLFlowLogger(experiment_name="raced", tracking_uri=uri).experiment


def test_wandb_without_the_package_is_a_clear_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from carspotter.training.loggers import build_loggers

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if `carspotter[wandb]` were not installed
    cfg = load_config(None, ["logging.loggers=[wandb]"])
    with pytest.raises(UserError, match=r"pip install 'carspotter\[wandb\]'"):
        build_loggers(cfg, tmp_path)


@pytest.mark.slow
def test_wandb_offline_without_an_account(two_runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    runs, first, _ = two_runs
    data = Path(load_config(first.run_dir / "config.yaml").data.path)
    run = train(tiny_config(data, tmp_path, "trainer.max_epochs=1", "logging.loggers=[wandb]"), progress=False)
    (offline,) = (run.run_dir / "wandb").glob("offline-run-*")
    assert (offline / "files" / "best.ckpt").read_bytes() == (run.run_dir / "best.ckpt").read_bytes()
    assert list(offline.glob("run-*.wandb"))
