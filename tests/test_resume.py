"""`train --resume` after `kill -9` equals the run that was never interrupted: same metrics, summary, weights and
MLflow points, in both pipelines, whether the process died in the middle of an epoch, at an epoch boundary or
between an epoch's validation and its checkpoint.

Every run is a process of its own (one CPU thread), killed by SIGKILL from inside at a chosen batch, as an
out-of-memory killer or a pulled plug would; the resume goes through the CLI as a user types it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_support import run_main
from synthetic_support import CARSPOTTER, make_synthetic_prepared

from carspotter.data.epochs import EpochOrder
from carspotter.formats.run_dir import read_epoch_metrics
from carspotter.training.loggers import local_tracking_uri

ROOT = Path(__file__).resolve().parents[1]
RECOMMENDED = ROOT / "configs" / "stanford_ghostnet.yaml"
TIMING = ("epoch_time_s", "img_s")
RUN_SPECIFIC = ("wall_time_s", "run_dir", "run_id")

# A training process (a new run, or `--resume RUN_DIR`) that SIGKILLs itself at a chosen point: "E,B" = before batch
# B of epoch E ("3,0": at the boundary, just after epoch 2's checkpoint); "val,E" = after epoch E's validation was
# logged, before its checkpoint was written; "saved,E" = just after epoch E's checkpoint was written, before
# Lightning sent the epoch's training metrics to the loggers.
DRIVER = """
import os, signal, sys
import lightning as L, torch
from lightning.pytorch.callbacks import Checkpoint
torch.set_num_threads(1)
from carspotter.config import load_config
from carspotter.training.run import load_run_config, train
kill_at, resume, config, overrides = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]

class Kill(L.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if kill_at == f"{trainer.current_epoch},{batch_idx}":
            os.kill(os.getpid(), signal.SIGKILL)
    def on_validation_end(self, trainer, module):
        if kill_at == f"val,{trainer.current_epoch}":
            os.kill(os.getpid(), signal.SIGKILL)

class KillAfterSave(Checkpoint):  # Lightning runs checkpoint callbacks last, so this one after last.ckpt's
    def on_train_epoch_end(self, trainer, module):
        if kill_at == f"saved,{trainer.current_epoch}":
            os.kill(os.getpid(), signal.SIGKILL)

cfg = load_run_config(resume) if resume != "-" else load_config(config, overrides)
train(cfg, resume=None if resume == "-" else resume, progress=False, extra_callbacks=[Kill(), KillAfterSave()])
"""


@pytest.fixture(scope="module")
def four_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_prepared(tmp_path_factory.mktemp("resume"), layout="updated", per_class=12, seed=3,
                                   num_classes=4)  # fmt: skip


def overrides(data: Path, runs: Path, pipeline: str, balance: str) -> list[str]:
    """The recommended recipe (EMA, per-step cosine, MixUp/CutMix, dropout) shrunk to seconds; classic with 2
    persistent DataLoader workers, whose random state outlives an epoch."""
    return [
        f"data.path={data}", f"output.runs_dir={runs}", "output.run_name=run", f"data.pipeline={pipeline}",
        f"data.class_balance={balance}",
        "data.image_size=32", "trainer.max_epochs=3", "trainer.batch_size=8", "trainer.limit_train_batches=4",
        "data.num_workers=2", "trainer.ema.decay=0.9", "logging.loggers=[mlflow]",
        "data.batch_augmentations=[{MixUp: {alpha: 0.4}}, {CutMix: {alpha: 1.0}}]",
        "optimizer.weight_decay_scaling=null",  # the reference run's decay per step, as tests/recipe_support.py says
        "loss.distillation=null",  # one stage (the own-teacher stage's resume: tests/test_distill.py)
    ]  # fmt: skip


def run(args: list[str], *, killed: bool = False) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if killed:
        assert proc.returncode == -9, proc.stderr[-3000:]
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]


def train_killed(
    data: Path, runs: Path, pipeline: str, balance: str, kill_at: str, resume: Path | None = None
) -> Path:
    args = [kill_at, str(resume or "-"), str(RECOMMENDED), *overrides(data, runs, pipeline, balance)]
    run([sys.executable, "-c", DRIVER, *args], killed=kill_at != "never")
    return runs / "run"


# (pipeline, data.class_balance): the sampler's weighted draw must resume as exactly as the permutation
CASES = [("classic", "none"), ("fast", "none"), ("classic", "sampler")]


@pytest.fixture(scope="module")
def uninterrupted(four_classes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    base = tmp_path_factory.mktemp("uninterrupted")
    return {(p, b): train_killed(four_classes, base / f"{p}-{b}", p, b, "never") for p, b in CASES}


def comparable(run_dir: Path) -> tuple[list[dict[str, str]], dict, dict[str, torch.Tensor], set]:
    rows = [{k: v for k, v in r.items() if k not in TIMING} for r in read_epoch_metrics(run_dir / "metrics.csv")]
    summary = {k: v for k, v in json.loads((run_dir / "summary.json").read_text()).items() if k not in RUN_SPECIFIC}
    weights = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=local_tracking_uri(run_dir.parent))
    (mlrun,) = client.search_runs([client.get_experiment_by_name("carspotter").experiment_id])
    points = [(key, m.step, m.value) for key in mlrun.data.metrics for m in client.get_metric_history(
        mlrun.info.run_id, key) if not key.startswith("summary/wall_time")]  # fmt: skip
    repeated = {p for p in points if points.count(p) > 1 and p[0] != "epoch"}  # Lightning logs `epoch` twice itself
    assert not repeated, f"MLflow points logged twice: {sorted(repeated)}"
    return rows, summary, weights, set(points)


KILLS = {  # where each run dies, in turn; each death loses the epoch it was in, re-done on resume
    ("classic", "none"): ["1,2", "2,0"],  # mid-epoch 1; at the boundary, just after epoch 1's checkpoint
    ("fast", "none"): ["val,1", "saved,1"],  # after epoch 1's validation, before its checkpoint; just after it
    ("classic", "sampler"): ["1,2"],
}


@pytest.mark.slow
@pytest.mark.parametrize(("pipeline", "balance"), CASES)
def test_a_run_killed_and_resumed_equals_the_uninterrupted_run(
    four_classes: Path, tmp_path: Path, uninterrupted: dict[tuple[str, str], Path], pipeline: str, balance: str
) -> None:
    run_dir = tmp_path / "run"
    for i, kill_at in enumerate(KILLS[pipeline, balance]):
        train_killed(four_classes, tmp_path, pipeline, balance, kill_at, resume=run_dir if i else None)
        stage, _, epoch = kill_at.rpartition(",") if kill_at[0].isalpha() else (None, None, kill_at.split(",")[0])
        done = int(epoch) + (stage == "saved")  # the epochs before the one it died in, and that one once saved
        assert len(read_epoch_metrics(run_dir / "metrics.csv")) == done
    assert not (run_dir / "summary.json").exists()
    assert not list(run_dir.glob("*.partial"))  # checkpoints are renamed into place, never left half-written
    run([*CARSPOTTER, "train", "--resume", str(run_dir)])

    want_rows, want_summary, want_weights, want_points = comparable(uninterrupted[pipeline, balance])
    rows, summary, weights, points = comparable(run_dir)  # no MLflow point twice
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert rows == want_rows
    assert summary == want_summary
    assert weights.keys() == want_weights.keys()
    assert all(torch.equal(weights[k], want_weights[k]) for k in weights)
    assert points == want_points


def test_a_resumed_mlflow_run_sends_each_point_once(tmp_path: Path) -> None:
    """A run killed after it sent some points (or its summary), then resumed, sends them again: MLflow keeps one."""
    from mlflow.tracking import MlflowClient

    from carspotter.training.loggers import SafeMLFlowLogger, log_run_end, prepare_mlflow_store

    uri, _ = prepare_mlflow_store(local_tracking_uri(tmp_path), "carspotter")
    first = SafeMLFlowLogger(experiment_name="carspotter", tracking_uri=uri)
    first.log_metrics({"val/top1": 0.5}, step=4)
    log_run_end([first], {"test_top1": 0.25, "epochs_run": 2}, tmp_path)  # then killed, say, and resumed twice
    for _ in range(2):
        again = SafeMLFlowLogger(experiment_name="carspotter", tracking_uri=uri, run_id=first.run_id)
        again.log_metrics({"val/top1": 0.5}, step=4)
        again.log_metrics({"val/top1": 0.75}, step=8)
        log_run_end([again], {"test_top1": 0.25, "epochs_run": 2}, tmp_path)
    client = MlflowClient(tracking_uri=uri)
    history = {k: [(m.step, m.value) for m in client.get_metric_history(first.run_id, k)]
               for k in ("val/top1", "test/top1", "summary/epochs_run")}  # fmt: skip
    assert history == {"val/top1": [(4, 0.5), (8, 0.75)], "test/top1": [(2, 0.25)], "summary/epochs_run": [(2, 2.0)]}


def test_an_epochs_order_depends_only_on_the_seed_and_the_epoch() -> None:
    epoch = 0

    def draw(seed: int = 0, rank: int = 0, world: int = 1) -> list[int]:
        return EpochOrder(10, seed, True, lambda: epoch, rank, world).draw()[0].tolist()

    first = draw()
    assert draw() == first and sorted(first) == list(range(10))
    assert draw(seed=1) != first
    epoch = 1
    assert draw() != first
    shards = [draw(rank=r, world=3) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4] and set().union(*shards) == set(range(10))  # padded, like DDP


@pytest.mark.slow
def test_a_run_folder_works_from_any_directory(
    synthetic_prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 35, item 4: a run started with relative paths (`data.path: data`) is resumed, reported and exported
    from another folder; the saved config holds absolute paths, and an older run's relative ones are found again."""
    start, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    (start / "data").symlink_to(synthetic_prepared)

    def cli(where: Path, *args: str) -> str:
        monkeypatch.chdir(where)
        code, out, err = run_main(list(args), capsys, monkeypatch)
        assert code == 0, err
        return out

    cli(start, "train", "-c", str(ROOT / "configs" / "demo.yaml"), "--set", "data.path=data", "--set",
        "output.runs_dir=runs", "--set", "trainer.max_epochs=1", "--set", "data.image_size=[32,32]", "--set",
        "logging.loggers=[csv]", "--set", "data.num_workers=0")
    (run,) = (start / "runs").iterdir()
    saved = (run / "config.yaml").read_text()
    assert f"path: {start / 'data'}" in saved and f"runs_dir: {start / 'runs'}" in saved

    cli(elsewhere, "train", "--resume", str(run), "--set", "trainer.max_epochs=2")
    assert len(read_epoch_metrics(run / "metrics.csv")) == 2
    assert "report.html" in cli(elsewhere, "report", str(run), "--examples", "2")
    exported = cli(elsewhere, "export", str(run / "best.ckpt"), "-o", "m.onnx")
    assert f"test images of {start / 'data'}" in exported  # the run's own photos, not random ones

    # A run saved by an older carspotter: paths relative to the folder training started in.
    (run / "config.yaml").write_text(saved.replace(str(start) + "/", ""))
    assert "path: data\n" in (run / "config.yaml").read_text()
    cli(elsewhere, "train", "--resume", str(run), "--set", "trainer.max_epochs=3")
    assert len(read_epoch_metrics(run / "metrics.csv")) == 3
