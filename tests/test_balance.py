"""``data.class_balance``: unbalanced classes drawn equally (sampler) or weighted in the loss (loss), in both
pipelines; ``stats`` says how unbalanced a dataset is, ``evaluate`` and the run's summary give balanced top-1.
Resuming a run with the sampler is in tests/test_resume.py."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from cli_support import run_main

from carspotter.config import load_config
from carspotter.data import balance
from carspotter.data.dataset import CarsDataModule
from carspotter.data.epochs import EpochOrder
from carspotter.data.fast import FastCarsDataModule
from carspotter.data.prepared import load_prepared
from carspotter.errors import UserError
from carspotter.training.optimization import build_loss
from carspotter.training.run import train

ROOT = Path(__file__).resolve().parents[1]
RECOMMENDED = ROOT / "configs" / "stanford_ghostnet.yaml"


def unbalanced_copy(prepared: Path, out: Path, keep: dict[int, int]) -> Path:
    """A copy of ``prepared`` whose training split keeps only the first ``keep[class_id]`` photos of those classes
    (the others keep all theirs), as a street where a few car models are everywhere and the rest are rare."""
    shutil.copytree(prepared, out, ignore=shutil.ignore_patterns(".cache"))
    train = pd.read_csv(out / "train.csv", keep_default_na=False)
    rank = train.groupby("class_id").cumcount()
    limit = train["class_id"].map(keep).fillna(len(train))
    train[rank < limit].to_csv(out / "train.csv", index=False)
    return out


@pytest.fixture(scope="module")
def unbalanced(four_classes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`four_classes` (12 training photos per class) with classes 1, 2 and 3 cut to 2 training photos each."""
    return unbalanced_copy(four_classes, tmp_path_factory.mktemp("unbalanced") / "data", {1: 2, 2: 2, 3: 2})


def test_weights_follow_one_over_the_class_frequency() -> None:
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)  # class 3 has no photo
    draw = balance.sample_weights(labels, 4)
    assert [float(draw[labels == c].sum()) for c in range(3)] == pytest.approx([1.0, 1.0, 1.0])
    weights = balance.loss_weights(labels, 4)
    assert weights[:3].tolist() == pytest.approx(np.array([1 / 6, 1 / 3, 1.0]) / np.mean([1 / 6, 1 / 3, 1.0]))
    assert float(weights[:3].mean()) == pytest.approx(1.0) and float(weights[3]) == 1.0
    assert balance.imbalance(balance.class_counts(labels, 4)) == 6.0
    assert "1 to 6 photos (imbalance 6.0x)" in balance.describe("sampler", labels, 4)


def test_a_weighted_epoch_draws_classes_equally_and_depends_only_on_seed_and_epoch() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    weights = balance.sample_weights(labels, 2)
    epoch = 0

    def draw(seed: int = 0, rank: int = 0, world: int = 1) -> list[int]:
        return EpochOrder(100, seed, True, lambda: epoch, rank, world, weights).draw()[0].tolist()

    first = draw()
    assert draw() == first and draw(seed=1) != first and len(first) == 100
    seen = Counter()
    for epoch in range(20):  # noqa: B007 - draw() reads it
        seen.update(labels[draw()].tolist())
    assert 0.42 < seen[1] / 2000 < 0.58  # the rare class is drawn about half the time (10% of the photos)
    shards = [draw(rank=r, world=3) for r in range(3)]
    assert [len(s) for s in shards] == [34, 34, 34]
    with pytest.raises(ValueError, match="3 sample weights for 100 samples"):
        EpochOrder(100, 0, True, lambda: 0, weights=weights[:3])


def test_the_loss_weights_classes_and_stays_out_of_checkpoints() -> None:
    cfg = load_config(None, ["data.class_balance=loss", "loss.params.label_smoothing=0.0"])
    weights = torch.tensor([0.5, 1.5])
    loss = build_loss(cfg, weights)
    logits, target = torch.randn(6, 2), torch.tensor([0, 0, 0, 0, 1, 1])
    assert torch.allclose(loss(logits, target), F.cross_entropy(logits, target, weight=weights))
    assert not torch.allclose(loss(logits, target), F.cross_entropy(logits, target))
    assert "weight" not in loss.state_dict()
    assert float(loss.to(torch.float64).weight[1]) == 1.5  # a buffer: it moves with its module


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.class_balance=loss", "loss.name=NLLLoss", "loss.params={}"], "weights CrossEntropyLoss"),
        (["data.class_balance=loss", "loss.params.weight=[1.0, 2.0]"], "remove loss.params.weight"),
        (["data.class_balance=rare"], "class_balance"),
    ],
)
def test_bad_class_balance_settings_are_one_line_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_config(None, overrides)


def test_both_pipelines_draw_the_same_balanced_epochs(unbalanced: Path) -> None:
    cfg = load_config(RECOMMENDED, [f"data.path={unbalanced}", "data.class_balance=sampler", "data.image_size=32"])
    classic = CarsDataModule(cfg.data, batch_size=8, seed=5)
    fast = FastCarsDataModule(cfg.data, batch_size=8, seed=5, progress=False)
    drawn = list(classic.train_dataloader().loader.sampler)
    assert [i for i, _ in drawn] == fast.train_dataloader().order.draw()[0].tolist()
    labels = classic.train_frame["class_id"].to_numpy()
    assert Counter(labels.tolist())[0] == 11 * Counter(labels.tolist())[1]  # unbalanced photos...
    seen = Counter(int(y) for _, ys in fast.train_dataloader() for y in ys)
    assert seen[0] < 0.6 * len(labels)  # ...and balanced draws (class 0 holds 11 of the 14 photos)


class SeenLabels(L.Callback):
    """The class ids training was fed, and the training loss's class weights."""

    def __init__(self) -> None:
        self.labels: list[int] = []
        self.loss_weights: torch.Tensor | None = None

    def on_train_start(self, trainer, module) -> None:
        self.loss_weights = module.criterion.weight

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        y = batch[1]
        self.labels += (y.argmax(1) if y.ndim == 2 else y).tolist()


@pytest.mark.parametrize(("pipeline", "mode"), [("classic", "sampler"), ("fast", "sampler"), ("fast", "loss"),
                                                ("classic", "loss")])  # fmt: skip
def test_training_balances_the_classes_in_both_pipelines(
    unbalanced: Path, tmp_path: Path, pipeline: str, mode: str, one_cpu_thread, caplog
) -> None:
    cfg = load_config(RECOMMENDED, [
        f"data.path={unbalanced}", f"output.runs_dir={tmp_path}", f"data.pipeline={pipeline}",
        f"data.class_balance={mode}", "data.image_size=32", "trainer.max_epochs=2", "trainer.batch_size=7",
        "data.num_workers=0", "data.batch_augmentations=[]", "logging.loggers=[]", "loss.distillation=null",
    ])  # fmt: skip
    seen = SeenLabels()
    with caplog.at_level("INFO", logger="carspotter"):
        result = train(cfg, progress=False, extra_callbacks=[seen])
    assert f"data.class_balance {mode}:" in caplog.text
    counts = Counter(seen.labels)
    if mode == "sampler":
        assert counts[0] < 0.6 * len(seen.labels)  # 11 of the 14 photos are class 0; drawn about a quarter of the time
    else:
        assert counts[0] == 11 / 14 * len(seen.labels)  # the photos as they are; the loss weighs the rare ones up
        weights = seen.loss_weights.tolist()
        assert weights[1] == pytest.approx(11 * weights[0]) and np.mean(weights) == pytest.approx(1.0)
    if mode == "sampler":
        assert seen.loss_weights is None
    summary = result.summary
    assert 0.0 <= summary["test_balanced_top1"] <= 1.0 and summary["test_n"] == len(load_prepared(unbalanced).test)


def test_stats_says_how_unbalanced_the_classes_are(
    unbalanced: Path, four_classes: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    code, _, err = run_main(["stats", str(unbalanced), "--image-size", "32", "--plot", str(tmp_path / "u.png")],
                            capsys, monkeypatch)  # fmt: skip
    assert code == 0 and "2 to 12 images each; largest/smallest class 6.0x" in err and "data.class_balance" in err
    code, _, err = run_main(["stats", str(four_classes), "--image-size", "32", "--plot", str(tmp_path / "b.png")],
                            capsys, monkeypatch)  # fmt: skip
    assert code == 0 and "largest/smallest class 1.0x" in err and "data.class_balance" not in err
