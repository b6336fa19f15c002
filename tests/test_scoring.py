"""`score_classifier` and its `SplitScores` (what `trainer.test` counts with too): torchmetrics' counts equal a count by
hand over the same logits, the confusion matrix included; test-time flip averages the photo and its mirror."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from carspotter.evaluation.scoring import score_classifier
from carspotter.inference.torch_backend import TorchClassifier
from carspotter.preprocessing import Preprocessing


def evaluate_model(model: nn.Module, loader, classes: list[str], **kwargs) -> object:  # noqa: ANN001
    """A module scored as `evaluate` scores a checkpoint: through `TorchClassifier` (on the CPU, fp32)."""
    return score_classifier(TorchClassifier(model, classes, Preprocessing()), loader, **kwargs)


def test_scores_equal_a_count_by_hand() -> None:
    torch.manual_seed(0)
    classes = [f"car {i}" for i in range(7)]
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, len(classes)))
    x = torch.randn(50, 3, 4, 4)
    y = torch.randint(0, len(classes), (50,))
    loader = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 50, 16)]  # a short last batch, as loaders give
    result = evaluate_model(model, loader, classes, progress=False)

    with torch.no_grad():
        logits = model(x)
    ranked = logits.argsort(dim=1, descending=True).numpy()
    truth = y.numpy()
    assert result.n == 50
    assert result.top1 == (ranked[:, 0] == truth).mean()
    assert result.top5 == np.mean([t in r[:5] for t, r in zip(truth, ranked, strict=True)])
    assert 0.1 < result.top5 and result.top1 < result.top5 < 1.0  # an untrained model: neither empty nor full
    expected = np.zeros((7, 7), dtype=np.int64)
    np.add.at(expected, (truth, ranked[:, 0]), 1)
    assert np.array_equal(result.confusion, expected)
    assert np.allclose(result.per_class_accuracy, np.diag(expected) / np.maximum(expected.sum(1), 1))
    assert np.isclose(result.loss, float(nn.functional.cross_entropy(logits, y)), rtol=1e-6)


class _LeftRight(nn.Module):
    """Logits from the mean of the left and of the right half of the image: mirroring swaps them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1] // 2
        return torch.stack([x[..., :w].mean((1, 2, 3)) * 4, x[..., w:].mean((1, 2, 3)) * 3, torch.zeros(len(x))], 1)


def test_test_time_flip_averages_the_photo_and_its_mirror() -> None:
    x = torch.rand(6, 3, 8, 8)
    x[:3, ..., :4] += 1.0  # brighter left half: class 0 without flip
    x[3:, ..., 4:] += 1.5  # brighter right half: class 1 without flip
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    plain = evaluate_model(_LeftRight(), [(x, y)], ["a", "b", "c"], progress=False)
    flipped = evaluate_model(_LeftRight(), [(x, y)], ["a", "b", "c"], progress=False, tta_flip=True)
    logits = _LeftRight()(x)
    mean_probs = (logits.softmax(1) + _LeftRight()(x.flip(3)).softmax(1)) / 2
    expected_loss = float(nn.functional.nll_loss(mean_probs.log(), y))
    assert flipped.loss == pytest.approx(expected_loss, rel=1e-5) and plain.loss != pytest.approx(expected_loss)
    assert flipped.top1 == (mean_probs.argmax(1) == y).float().mean().item()
