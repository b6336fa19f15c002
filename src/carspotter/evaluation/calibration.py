"""Fitting and measuring how far a model's probabilities can be trusted.

- `fit_calibration`: the temperature that minimises the negative log-likelihood of held-out photos (temperature
  scaling, Guo et al. 2017: one parameter, so the ranking of classes and every accuracy stay as they are), and the
  default "not sure" threshold: the lowest top probability at which the photos answered are at least 90% right.
- `trust_scores`: what `evaluate --json` adds: make and model top-1 (the right make or model, any year), balanced
  top-1 (mean per-class accuracy), the 15-bin expected calibration error (torchmetrics ``CalibrationError``) with and
  without the temperature, and the coverage at the threshold with the accuracy of the photos answered.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from carspotter.data.dataset import eval_loader
from carspotter.data.prepared import PreparedDataset, train_val_frames
from carspotter.errors import UserError
from carspotter.evaluation.scoring import score_classifier
from carspotter.formats.calibration import TARGET_ACCURACY, Calibration
from carspotter.formats.car_names import CarName
from carspotter.formats.checkpoint import CheckpointInfo, write_calibration
from carspotter.inference import load_classifier
from carspotter.preprocessing import softmax

ECE_BINS = 15


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the mean cross-entropy of softmax(logits / T) (L-BFGS on log T, in float64)."""
    if len(labels) == 0:
        raise UserError("calibration needs at least one photo")
    z = torch.from_numpy(np.asarray(logits, dtype=np.float64))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t) or t <= 0:
        raise UserError(f"calibration failed (temperature {t}); are the photos' labels the model's classes?")
    return t


def coverage_curve(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Photos sorted by top probability, most confident first: (threshold, coverage, accuracy of those answered)
    when answering the first n of them, for every n."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    order = np.argsort(-conf, kind="stable")
    n = np.arange(1, len(order) + 1)
    return conf[order], n / len(order), np.cumsum(correct[order]) / n


def threshold_for(probs: np.ndarray, labels: np.ndarray, target: float = TARGET_ACCURACY) -> float:
    """The lowest top probability P at which the photos with top probability ≥ P are at least ``target`` right;
    1.0 (every answer unsure) when no P reaches it."""
    thresholds, _, accuracy = coverage_curve(probs, labels)
    # photos tied at the threshold are answered together: only the last of a run of equal thresholds counts
    last_of_tie = np.append(thresholds[1:] != thresholds[:-1], True)
    ok = np.flatnonzero((accuracy >= target) & last_of_tie)
    return float(thresholds[ok[-1]]) if len(ok) else 1.0


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray) -> float:
    """15-bin expected calibration error of the top probability (torchmetrics, L1)."""
    return float(
        multiclass_calibration_error(
            torch.from_numpy(np.asarray(probs, dtype=np.float32)),
            torch.from_numpy(np.asarray(labels, dtype=np.int64)),
            num_classes=probs.shape[1],
            n_bins=ECE_BINS,
            norm="l1",
        )
    )


def fit_calibration(
    logits: np.ndarray, labels: np.ndarray, fitted_on: str, target: float = TARGET_ACCURACY
) -> Calibration:
    """Temperature and threshold from held-out photos' logits (never the test split's), with the ECE before and
    after on those photos."""
    temperature = fit_temperature(logits, labels)
    probs = softmax(logits / temperature)
    return Calibration(
        temperature=round(temperature, 6),
        min_confidence=round(threshold_for(probs, labels, target), 6),
        target_accuracy=target,
        fitted_on=f"{fitted_on}, {len(labels)} photos",
        ece_before=round(expected_calibration_error(softmax(logits), labels), 6),
        ece_after=round(expected_calibration_error(probs, labels), 6),
    )


def grouped_top1(probs: np.ndarray, labels: np.ndarray, groups: list[str]) -> float:
    """Top-1 at a coarser level: the group (make, model) with the most summed probability is the true class's."""
    names, index = np.unique(np.asarray(groups, dtype=object), return_inverse=True)
    summed = np.zeros((len(probs), len(names)))
    np.add.at(summed.T, index, probs.T)
    return float(np.mean(summed.argmax(axis=1) == index[labels]))


def trust_scores(
    logits: np.ndarray, labels: np.ndarray, classes: list[CarName], calibration: Calibration
) -> dict[str, float | None]:
    """`evaluate --json`'s fields beyond top-1/top-5, for one split's logits (fp32) and true class ids."""
    raw = softmax(logits)
    probs = softmax(logits / calibration.temperature)
    hits = probs.argmax(axis=1) == labels
    present = np.unique(labels)
    out: dict[str, float | None] = {
        "make_top1": grouped_top1(probs, labels, [c.make for c in classes]),
        "model_top1": grouped_top1(probs, labels, [c.model for c in classes]),
        "balanced_top1": float(np.mean([hits[labels == c].mean() for c in present])),
        "ece": expected_calibration_error(probs, labels),
        "ece_uncalibrated": expected_calibration_error(raw, labels),
        "temperature": calibration.temperature,
        "min_confidence": calibration.min_confidence,
        "coverage": None,
        "answered_top1": None,
    }
    if calibration.min_confidence is not None:
        answered = probs.max(axis=1) >= calibration.min_confidence
        out["coverage"] = float(answered.mean())
        out["answered_top1"] = float(hits[answered].mean()) if answered.any() else None
    return out


def calibrate_checkpoint(
    ckpt: str | Path,
    dataset: PreparedDataset,
    frame: pd.DataFrame,
    fitted_on: str,
    *,
    device: str | None = None,
    batch_size: int = 64,
    workers: int = 2,
    progress: bool = False,
) -> Calibration:
    """Fit `fit_calibration` on ``frame``'s photos (held out from training: the run's validation split) with the
    checkpoint's own weights and preprocessing, and store it in the checkpoint (`write_calibration`)."""
    classifier = load_classifier(ckpt, device=device)
    loader = eval_loader(dataset, frame, classifier.preprocessing, batch_size=batch_size, workers=workers)
    result = score_classifier(classifier, loader, progress=progress)
    if result.logits is None:
        raise UserError(f"{fitted_on}: no photos to calibrate on")
    calibration = fit_calibration(result.logits, result.labels, fitted_on)
    write_calibration(ckpt, calibration)
    return calibration


def validation_frame(dataset: PreparedDataset, info: CheckpointInfo) -> pd.DataFrame:
    """The validation photos the checkpoint's run carved from ``dataset``'s train split (its config's
    ``data.val_fraction`` and ``trainer.seed``); a `UserError` when the run validated on test or has no config."""
    cfg = info.config
    if cfg is None:
        raise UserError(f"{info.path}: its run's config is unreadable, so its validation split is unknown; "
                        "choose --split train or test")  # fmt: skip
    if cfg.data.validate_on_test:
        raise UserError(f"{info.path}: its run validated on the test split (thesis protocol); calibrating on it "
                        "would make the test's calibration figures optimistic; choose --split explicitly")  # fmt: skip
    return train_val_frames(dataset.train, cfg.data.val_fraction, cfg.trainer.seed)[1]
