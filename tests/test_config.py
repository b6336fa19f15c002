"""Config loading: the shipped configs load; typos and wrong types fail fast, naming the key path."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from carspotter.config import load_config
from carspotter.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
STANFORD = ROOT / "configs" / "stanford_ghostnet.yaml"
THESIS = ROOT / "configs" / "thesis_c50.yaml"


def test_thesis_config_is_the_thesis_best_run() -> None:
    cfg = load_config(THESIS)
    assert cfg.model.name == "ghostnet_thesis"
    assert cfg.model.args == {"hidden_channels": 320, "drop_rate": 0.2}
    assert cfg.data.image_size == (227, 227) and not cfg.data.grayscale and cfg.data.normalize
    assert not cfg.data.crop_to_bbox and not cfg.data.erase_background
    assert [t.name for t in cfg.data.image_augmentations] == ["RandomHorizontalFlip", "RandomAffine", "ColorJitter"]
    assert cfg.loss.params == {"label_smoothing": 0.1}
    assert cfg.optimizer.name == "AdamW" and cfg.optimizer.params == {"lr": 0.001, "weight_decay": 0.6}
    assert cfg.scheduler.name == "MultiStepLR"
    assert cfg.scheduler.params == {"milestones": [67, 82, 95, 107], "gamma": 0.1}
    assert cfg.trainer.batch_size == 64 and cfg.trainer.max_epochs == 200
    assert cfg.data.val_fraction == 0.1 and not cfg.data.validate_on_test


def test_every_shipped_config_loads() -> None:
    shipped = sorted((ROOT / "configs").glob("*.yaml"))
    assert {p.stem for p in shipped} >= {"demo", "stanford_ghostnet", "thesis_c50", "finetune_folders"}
    for path in shipped:
        assert load_config(path).model.name, path


def test_misspelt_batch_size_fails_fast_naming_the_key(tmp_path: Path) -> None:
    raw = yaml.safe_load(STANFORD.read_text())
    raw["trainer"]["batchsize"] = raw["trainer"].pop("batch_size")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    start = time.perf_counter()
    with pytest.raises(UserError) as exc:
        load_config(bad)
    assert time.perf_counter() - start < 10
    assert "trainer.batchsize" in str(exc.value) and "batch_size" in str(exc.value)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optimizer.name=Adamm", "unknown optimizer 'Adamm'"),
        ("scheduler.name=Cosine", "unknown scheduler"),
        ("loss.name=FocalLoss", "unknown loss"),
        ("model.name=ghostnet_thesys", "ghostnet_thesis"),
        ("model.args.hidden=3", "hidden_channels"),
        ("trainer.max_epochs=many", "trainer.max_epochs"),
        ("data.image_augmentations.0.params.prob=0.5", "allowed: p"),
        ("optimizer.params.weight_decy=0.1", "weight_decay"),
        ("data.colour=1", "data.colour"),
        ("data.crop_to_bbox=true", "alternatives"),  # together with erase_background below
    ],
)
def test_bad_values_name_the_key_and_the_allowed_values(override: str, needle: str) -> None:
    extra = ["data.erase_background=true"] if "crop_to_bbox" in override else []
    with pytest.raises(UserError) as exc:
        load_config(THESIS, [override, *extra])
    assert needle in str(exc.value)


def test_unknown_transform_is_refused() -> None:
    with pytest.raises(UserError, match="unknown transform 'RandomFlipp'"):
        load_config(STANFORD, ["data.image_augmentations=[{RandomFlipp: {}}]"])


def test_overrides_from_the_issue_work(tmp_path: Path) -> None:
    cfg = load_config(STANFORD, [f"data.path={tmp_path}", "trainer.max_epochs=2", f"output.runs_dir={tmp_path}/r"])
    assert cfg.data.path == tmp_path and cfg.trainer.max_epochs == 2 and cfg.output.runs_dir == tmp_path / "r"


def test_augmentation_parameters_are_addressed_as_in_the_readme_and_the_sweep_file() -> None:
    augs = "data.image_augmentations"
    cfg = load_config(THESIS, [f"{augs}.1.params.degrees=20", f"{augs}.0.params.p=1"])
    affine = cfg.data.image_augmentations[1]
    assert affine.name == "RandomAffine" and affine.params["degrees"] == 20 and affine.params["shear"] == 8
    assert cfg.data.image_augmentations[0].params == {"p": 1}
    cfg = load_config(THESIS, [f"{augs}.2.name=RandomGrayscale", f"{augs}.2.params={{}}"])
    assert cfg.data.image_augmentations[2].name == "RandomGrayscale"
    with pytest.raises(UserError, match=r"as data\.image_augmentations\.1\.params\.degrees"):
        load_config(THESIS, [f"{augs}.1.RandomAffine.degrees=20"])


def test_lambda_schedulers_are_not_offered() -> None:
    with pytest.raises(UserError, match="unknown scheduler 'LambdaLR'"):
        load_config(STANFORD, ["scheduler.name=LambdaLR", "scheduler.params={lr_lambda: 'lambda e: 0.9**e'}"])
    cfg = load_config(STANFORD, ["scheduler.name=ExponentialLR", "scheduler.params={gamma: 0.97}"])
    assert cfg.scheduler.name == "ExponentialLR"
    cfg = load_config(STANFORD, ["scheduler.name=ReduceLROnPlateau", "scheduler.params={factor: 0.1, patience: 5}"])
    assert cfg.scheduler.monitor == "val/loss"
