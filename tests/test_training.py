"""End to end on synthetic data: the model learns, runs are repeatable and resumable, and the run's test figures
(`trainer.test`) agree with `evaluate` and `predict` on the same checkpoint; config values that fail only when used,
and a hostile checkpoint given to --resume, are refused before anything is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from recipe_support import recipe_config

from carspotter.config import load_config
from carspotter.data.prepared import load_prepared
from carspotter.errors import UserError
from carspotter.evaluation.metrics import evaluate_on_dataset
from carspotter.formats.checkpoint import read_checkpoint
from carspotter.formats.run_dir import read_epoch_metrics
from carspotter.inference import load_classifier
from carspotter.inference.predict import predict_images
from carspotter.inference.torch_backend import load_checkpoint
from carspotter.runtime import training_runtime
from carspotter.training.run import train

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"


def tiny_config(data: Path, runs: Path, *extra: str):
    return load_config(
        DEMO,
        [f"data.path={data}", f"output.runs_dir={runs}", "data.num_workers=0", "data.image_size=[48,48]", *extra],
    )


@pytest.fixture(scope="module")
def learned_run(learnable_prepared: Path, tmp_path_factory: pytest.TempPathFactory):
    runs = tmp_path_factory.mktemp("runs")
    cfg = tiny_config(learnable_prepared, runs, "trainer.max_epochs=10", "scheduler.params.T_max=10")
    return train(cfg, progress=False)


@pytest.mark.slow
def test_model_learns_synthetic_cars_well_above_chance(learned_run, learnable_prepared: Path) -> None:
    chance = 1 / load_prepared(learnable_prepared).num_classes
    s = learned_run.summary
    print(f"synthetic cars: val top-1 {s['val_top1']:.3f}, test top-1 {s['test_top1']:.3f} (chance {chance:.2f})")
    assert s["test_top1"] >= 3 * chance, s
    assert s["val_top1"] >= 3 * chance, s
    assert s["test_n"] == len(load_prepared(learnable_prepared).test)


@pytest.mark.slow
def test_run_folder_holds_everything(learned_run) -> None:
    run = learned_run.run_dir
    for name in ("config.yaml", "best.ckpt", "last.ckpt", "metrics.csv", "summary.json", "results.png"):
        assert (run / name).is_file(), name
    rows = read_epoch_metrics(run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(10))
    assert all(r["val_top1"] and r["train_loss"] and r["lr"] and r["epoch_time_s"] for r in rows)
    best = max(rows, key=lambda r: float(r["val_top1"]))
    assert learned_run.summary["best_epoch"] == int(best["epoch"])
    assert load_config(run / "config.yaml").output.run_name == run.name


@pytest.mark.slow
def test_checkpoint_describes_itself(learned_run, learnable_prepared: Path) -> None:
    ckpt = read_checkpoint(learned_run.best_ckpt)  # weights_only=True
    meta = ckpt["carspotter"]
    assert meta["model"]["name"] == "ghostnet_thesis"
    assert meta["class_names"] == load_prepared(learnable_prepared).classes
    assert meta["preprocessing"]["image_size"] == [48, 48]
    model, info = load_checkpoint(learned_run.best_ckpt)
    assert info.num_classes == len(meta["class_names"]) and not model.training


@pytest.mark.slow
def test_trainer_test_and_evaluate_agree_to_the_last_digit(learned_run, learnable_prepared: Path) -> None:
    """The summary's test figures come from `trainer.test` on the module the run trained (`CarClassifier.test_step`);
    `evaluate` rebuilds the network from best.ckpt and runs its own loop. Two code paths, compared with ==."""
    s = learned_run.summary
    batch_size = load_config(learned_run.run_dir / "config.yaml").trainer.batch_size
    result = evaluate_on_dataset(learned_run.best_ckpt, learnable_prepared, "test", batch_size=batch_size,
                                 progress=False)  # fmt: skip
    assert (result.top1, result.top5, result.n) == (s["test_top1"], s["test_top5"], s["test_n"])
    assert result.loss == s["test_loss"]  # same batches, same layout: same float32 sums (channels_last alone would
    # move the logits by ~1e-6 on the CPU)
    dataset = load_prepared(learnable_prepared)
    assert result.n == result.confusion.sum() == len(dataset.test)
    assert s["test_top1"] == np.trace(result.confusion) / result.n  # top-1: the matrix's diagonal share
    assert 0 < s["test_top1"] <= s["test_top5"] <= 1.0  # top-5 holds top-1's hits
    # predict: a third path (NumPy preprocessing, one photo at a time) agrees on every top-1 hit
    paths = [dataset.root / f for f in dataset.test["fname"]]
    preds = predict_images(load_classifier(learned_run.best_ckpt), paths, top_k=1)
    hits = [p["predictions"][0]["class_id"] == c for p, c in zip(preds, dataset.test["class_id"], strict=True)]
    assert np.mean(hits) == pytest.approx(result.top1, abs=1e-9)


def test_training_runtime_decides_the_auto_settings_once(learnable_prepared: Path, tmp_path: Path) -> None:
    cuda = torch.cuda.is_available()
    auto = training_runtime(tiny_config(learnable_prepared, tmp_path))  # pipeline, precision and layout: auto
    assert (auto.pipeline, auto.precision, auto.channels_last) == ("fast", "bf16-mixed" if cuda else "32-true", True)
    assert auto.why.startswith("fast pipeline; ")
    classic_cpu = ("data.pipeline=classic", "trainer.accelerator=cpu")
    cpu = training_runtime(tiny_config(learnable_prepared, tmp_path, *classic_cpu))
    assert (cpu.pipeline, cpu.precision, cpu.channels_last) == ("classic", "32-true", False)
    chosen = ("data.pipeline=fast", "trainer.precision=bf16-mixed", "trainer.channels_last=false")
    fixed = training_runtime(tiny_config(learnable_prepared, tmp_path, *chosen))
    assert (fixed.pipeline, fixed.precision, fixed.channels_last) == ("fast", "bf16-mixed", False)
    assert fixed.why == "as configured"


def test_runs_are_repeatable_and_never_overwritten(synthetic_prepared: Path, tmp_path: Path) -> None:
    overrides = ("trainer.max_epochs=1", "trainer.limit_train_batches=3", "output.run_name=same")
    a = train(tiny_config(synthetic_prepared, tmp_path, *overrides), progress=False)
    b = train(tiny_config(synthetic_prepared, tmp_path, *overrides), progress=False)
    assert a.run_dir != b.run_dir and a.run_dir.name == "same" and b.run_dir.name == "same-2"
    ra, rb = (read_epoch_metrics(r.run_dir / "metrics.csv")[0] for r in (a, b))
    assert ra["train_loss"] == rb["train_loss"] and ra["val_loss"] == rb["val_loss"]


@pytest.mark.slow
def test_resume_continues_an_interrupted_run(synthetic_prepared: Path, tmp_path: Path) -> None:
    first = train(tiny_config(synthetic_prepared, tmp_path, "trainer.max_epochs=2", "trainer.limit_train_batches=2"),
                  progress=False)
    cfg = load_config(first.run_dir / "config.yaml", ["trainer.max_epochs=3"])
    resumed = train(cfg, resume=first.run_dir, progress=False)
    assert resumed.run_dir == first.run_dir
    assert [int(r["epoch"]) for r in read_epoch_metrics(first.run_dir / "metrics.csv")] == [0, 1, 2]
    assert torch.load(first.run_dir / "last.ckpt", weights_only=True)["epoch"] == 2
    assert resumed.summary["epochs_run"] == 3
    # anything but the run's length (and limits) would continue another experiment under this run's name
    saved = (first.run_dir / "config.yaml").read_text()
    changed = load_config(first.run_dir / "config.yaml", ["trainer.max_epochs=4", "optimizer.params.lr=0.5"])
    with pytest.raises(UserError, match=r"these differ from it: optimizer\.params\.lr \(a resume may change only"):
        train(changed, resume=first.run_dir, progress=False)
    assert (first.run_dir / "config.yaml").read_text() == saved


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nothing to resume"):
        train(load_config(DEMO), resume=tmp_path)


def test_validate_on_test_reproduces_the_thesis_protocol(synthetic_prepared: Path, tmp_path: Path, caplog) -> None:
    cfg = tiny_config(synthetic_prepared, tmp_path, "data.validate_on_test=true", "trainer.max_epochs=1",
                      "trainer.limit_train_batches=2")
    result = train(cfg, progress=False)
    assert "optimistic" in caplog.text
    assert result.summary["validated_on_test"] is True and result.summary["test_top1"] is None


def test_cli_reports_config_mistakes_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEMO.read_text().replace("batch_size:", "batchsize:"))
    proc = subprocess.run([sys.executable, "-m", "carspotter.cli", "train", "--config", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "trainer.batchsize" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_cli_train_evaluate_predict(learned_run, learnable_prepared: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "carspotter.cli", "evaluate", str(learned_run.best_ckpt), "--data",
         str(learnable_prepared), "--json", "--out", str(tmp_path / "eval")],
        capture_output=True, text=True, timeout=300, check=True,
    )
    metrics = json.loads(out.stdout.strip().splitlines()[-1])
    assert metrics["top1"] == pytest.approx(learned_run.summary["test_top1"])
    assert metrics["n"] == learned_run.summary["test_n"]
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 1000
    per_class = pd.read_csv(tmp_path / "eval" / "per_class_accuracy.csv")
    assert len(per_class) == load_prepared(learnable_prepared).num_classes
    assert (per_class["correct"] == (per_class["recall"] * per_class["n"]).round()).all()
    assert metrics["balanced_top1"] == pytest.approx(per_class["recall"].mean())
    assert learned_run.summary["test_balanced_top1"] == pytest.approx(metrics["balanced_top1"])

    image = learnable_prepared / load_prepared(learnable_prepared).test["fname"].iloc[0]
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    proc = subprocess.run(
        [sys.executable, "-m", "carspotter.cli", "predict", str(learned_run.best_ckpt), str(image), str(junk),
         "--json", "--top-k", "3"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2  # one of two images failed: a user error; the other one is still predicted
    results = json.loads(proc.stdout)
    assert [r["image"] for r in results] == [str(image), str(junk)]
    assert len(results[0]["predictions"]) == 3 and "error" in results[1]
    probs = [p["probability"] for p in results[0]["predictions"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_missing_dataset_fails_before_a_run_folder_is_made(tmp_path: Path) -> None:
    cfg = load_config(DEMO, [f"data.path={tmp_path / 'nowhere'}", f"output.runs_dir={tmp_path / 'runs'}"])
    with pytest.raises(UserError, match="no such dataset folder"):
        train(cfg, progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_file_that_is_not_a_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "model.ckpt"
    fake.write_text("not a checkpoint")
    with pytest.raises(UserError) as exc:
        load_checkpoint(fake)
    assert "not a readable PyTorch checkpoint" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.slow
def test_ctrl_c_during_train_says_how_to_continue(synthetic_prepared: Path, tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) after the first epoch: exit 130 and the exact command that resumes the run; before it, the
    run printed no warning lines."""
    import os
    import signal
    import time

    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "carspotter.cli", "train", "-c", str(DEMO), "--set", f"data.path={synthetic_prepared}",
           "--set", f"output.runs_dir={runs}", "--set", "output.run_name=ctrl-c", "--set", "trainer.max_epochs=500",
           "--set", "data.image_size=32", "--set", "data.num_workers=0", "--set", "logging.loggers=[csv]"]  # fmt: skip
    # An in-process Lightning run interrupted earlier in this session may have left SIGINT ignored, and a child
    # inherits that: start it with the default disposition, as a shell does.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + 600
    while not (runs / "ctrl-c" / "last.ckpt").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert f"carspotter train --resume {runs / 'ctrl-c'}" in err.replace("\n", ""), err[-3000:]
    assert "Traceback" not in err
    noise = [line for line in err.splitlines() if "warn" in line.lower() or "deprecat" in line.lower()]
    assert noise == []  # a normal run prints its progress and results only
    chatter = [line for line in err.splitlines() if "litlogger" in line or "GPU available" in line]
    assert chatter == []  # Lightning's start-up lines and advert (they used to come twice)


@pytest.mark.parametrize(
    ("override", "section"),
    [
        ("data.image_augmentations=[{RandomHorizontalFlip: {p: high}}]", "data.image_augmentations"),
        ("optimizer.params.lr=-1", "optimizer"),
        ("model.args={hidden_channels: big}", "model"),
        ("data.batch_augmentations=[{MixUp: {alpha: -1}}]", "data.batch_augmentations"),
    ],
)
@pytest.mark.parametrize("pipeline", ["fast", "classic"])
def test_values_that_fail_only_when_used_are_one_line_and_leave_no_run_folder(
    four_classes: Path, tmp_path: Path, override: str, section: str, pipeline: str
) -> None:
    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        f"data.path={four_classes}", f"output.runs_dir={tmp_path / 'runs'}", f"data.pipeline={pipeline}", override,
    ])  # fmt: skip
    with pytest.raises(UserError, match=section.replace(".", r"\.")):
        train(cfg, progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_hostile_checkpoint_given_to_resume_is_refused_before_anything_is_written(
    four_classes: Path, tmp_path: Path
) -> None:
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    cfg = recipe_config(four_classes, tmp_path / "runs")
    (run / "config.yaml").write_text("written by the user\n")
    (run / "last.ckpt").write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        train(cfg, resume=run, progress=False)
    assert not (tmp_path / "pwned").exists()
    assert (run / "config.yaml").read_text() == "written by the user\n"
