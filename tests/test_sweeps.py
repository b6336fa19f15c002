"""Optuna sweeps on synthetic data: space validation, median pruning of real trials, and two worker processes
joining one SQLite study; the best trial's config trains as-is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from tracking_support import DEMO, ROOT, make_tiny_dataset, tiny_overrides

from carspotter.config import load_config
from carspotter.errors import UserError
from carspotter.experiments.sweeps import (
    SearchSpace,
    default_storage,
    load_space,
    open_study,
    run_sweep,
    summarise_study,
)
from carspotter.formats.run_dir import read_epoch_metrics

SPACE = """\
parameters:
  optimizer.params.lr: {type: float, low: 0.0005, high: 0.01, log: true}
  model.args.drop_rate: {type: categorical, choices: [0.0, 0.3]}
  trainer.batch_size: {type: int, low: 8, high: 16, step: 8}
pruner: {n_startup_trials: 1, n_warmup_steps: 1}
sampler: {seed: 0}
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("sweep-data"))


@pytest.fixture()
def space(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return path


def test_space_keys_are_checked_against_the_base_config(tmp_path: Path) -> None:
    base = load_config(DEMO).to_dict()
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "parameters:\n"
        "  optimizer.params.wd: {type: float, low: 0.1, high: 1.0}\n"
        "  trainer.epochs: {type: int, low: 1, high: 3}\n"
        "  model.args.drop_rate: {type: float, low: 0.0, high: 0.5}\n"
    )
    with pytest.raises(UserError, match=r"optimizer\.params\.wd .*weight_decay.*trainer\.epochs .*unknown key"):
        load_space(bad, base)
    bad.write_text("parameters:\n  model.args.drop_rate: {type: float, low: 0.5, high: 0.1}\n")
    with pytest.raises(UserError, match="low' <= 'high"):
        load_space(bad, base)
    bad.write_text("parameters:\n  model.args.drop_rate: {type: uniform, low: 0.1, high: 0.5}\n")
    with pytest.raises(UserError, match="invalid search space"):
        load_space(bad, base)


def test_shipped_space_is_valid_for_the_recommended_recipe() -> None:
    base = load_config(ROOT / "configs" / "stanford_ghostnet.yaml").to_dict()
    space = load_space(ROOT / "configs" / "sweeps" / "stanford_ghostnet.yaml", base)
    keys = set(space.parameters)
    assert {"optimizer.params.lr", "optimizer.params.weight_decay", "scheduler.params.warmup"} <= keys
    assert any(k.startswith("data.image_augmentations.0.params.scale") for k in keys)


def test_space_addresses_augmentations_as_set_does(tmp_path: Path) -> None:
    """The shipped space's key form (``...2.params.brightness``, list items by index) is the one ``--set`` takes;
    the short form (``...2.ColorJitter.brightness``) is refused in both places with the same hint."""
    stanford = ROOT / "configs" / "stanford_ghostnet.yaml"
    space = yaml.safe_load((ROOT / "configs" / "sweeps" / "stanford_ghostnet.yaml").read_text())["parameters"]
    key, scale = "data.image_augmentations.2.params.brightness", "data.image_augmentations.0.params.scale.0"
    assert key in space and scale in space
    cfg = load_config(stanford, [f"{key}=0.3", f"{scale}=0.5"])
    assert cfg.data.image_augmentations[2].params["brightness"] == 0.3
    assert cfg.data.image_augmentations[0].params["scale"] == [0.5, 1.0]
    bad = tmp_path / "short.yaml"
    bad.write_text("parameters:\n  data.image_augmentations.2.ColorJitter.brightness: {type: float, low: 0, high: 1}\n")
    with pytest.raises(UserError, match=r"as data\.image_augmentations\.2\.params\.brightness"):
        load_space(bad, load_config(stanford).to_dict())


def test_three_trial_sweep_prunes_trials_below_the_median(data: Path, space: Path, tmp_path: Path) -> None:
    """An earlier trial at 95% val top-1 per epoch is the median; tiny trials fall below it at their first epoch
    and are stopped there (1 of their 3 epochs runs)."""
    runs = tmp_path / "runs"
    space.write_text(SPACE.replace("n_warmup_steps: 1", "n_warmup_steps: 0"))
    spec = SearchSpace.model_validate(yaml.safe_load(space.read_text()))
    study = open_study(default_storage(runs), "pruning", spec)
    study.add_trial(
        optuna.trial.create_trial(
            params={"model.args.drop_rate": 0.0},
            distributions={"model.args.drop_rate": optuna.distributions.CategoricalDistribution([0.0, 0.3])},
            value=0.95,
            intermediate_values={epoch: 0.95 for epoch in range(4)},
        )
    )
    result = run_sweep(
        DEMO,
        space,
        3,
        study_name="pruning",
        overrides=tiny_overrides(data, runs, "trainer.max_epochs=3", "logging.loggers=[csv]"),
    )
    assert result.counts == {"complete": 1, "pruned": 3}
    trials = optuna.load_study(study_name="pruning", storage=default_storage(runs)).trials[1:]
    for trial in trials:
        assert trial.state == optuna.trial.TrialState.PRUNED
        assert sorted(trial.intermediate_values) == [0]
        rows = read_epoch_metrics(Path(trial.user_attrs["run_dir"]) / "metrics.csv")
        assert len(rows) == 1  # stopped after the first prunable epoch instead of running all 3
        assert float(rows[-1]["val_top1"]) == pytest.approx(trial.intermediate_values[0])
    assert result.best_value == 0.95 and result.best_config is None  # the best trial has no local run


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study_and_write_a_trainable_best_config(
    data: Path, space: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    overrides = tiny_overrides(data, runs, "trainer.max_epochs=1")  # MLflow on: both workers write mlflow.db too
    cmd = [
        sys.executable,
        "-m",
        "carspotter.cli",
        "sweep",
        "--config",
        str(DEMO),
        "--space",
        str(space),
        "--trials",
        "1",
        "--study",
        "shared",
    ]
    for item in overrides:
        cmd += ["--set", item]
    worker = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        result = run_sweep(DEMO, space, 2, study_name="shared", overrides=overrides)
    finally:
        out = worker.communicate(timeout=600)[0]
    assert worker.returncode == 0, out
    assert "study 'shared'" in out

    study = optuna.load_study(study_name="shared", storage=default_storage(runs))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    run_dirs = {Path(t.user_attrs["run_dir"]).name for t in study.trials}
    assert run_dirs == {f"shared-trial{n:03d}" for n in range(3)}  # one run folder per trial, none overwritten

    assert result.counts["complete"] >= 2  # its own two; the other worker's trial may still be running then
    final = summarise_study(study, default_storage(runs), tmp_path / "report")  # what a late worker reports
    assert final.counts == {"complete": 3}
    assert final.best_value == max(t.value for t in study.trials)
    assert set(final.importances) == {"optimizer.params.lr", "model.args.drop_rate", "trainer.batch_size"}
    best = load_config(final.best_config)
    assert best.output.run_name is None and not any(t.startswith("sweep:") for t in best.output.tags)
    assert best.optimizer.params["lr"] == pytest.approx(final.best_params["optimizer.params.lr"])
    assert best.trainer.batch_size == final.best_params["trainer.batch_size"]
    assert result.study_name == "shared"

    from mlflow.tracking import MlflowClient

    from carspotter.training.loggers import local_tracking_uri

    client = MlflowClient(tracking_uri=local_tracking_uri(runs))
    names = {r.info.run_name for r in client.search_runs([client.get_experiment_by_name("carspotter").experiment_id])}
    assert names == {f"shared-trial{n:03d}" for n in range(3)}
