"""How far a model's probabilities can be trusted: its temperature and its "not sure" threshold, as stored in a
checkpoint (``ckpt["carspotter"]["calibration"]``) and in every export's metadata (key ``calibration``).

- ``temperature`` T: probabilities are softmax(logits / T), T fitted on validation photos by minimising their
  negative log-likelihood (temperature scaling, Guo et al. 2017). It never changes which class is first.
- ``min_confidence`` P: an answer whose top probability is below P is marked ``unsure``. Fitted with T: the lowest P
  at which the validation photos it answers are at least ``target_accuracy`` right (None: no P reaches it).

Torch-free: the server and the exports' readers use it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from carspotter.errors import UserError

log = logging.getLogger(__name__)

TARGET_ACCURACY = 0.9  # the default threshold answers validation photos at least this often right


@dataclass(frozen=True)
class Calibration:
    temperature: float = 1.0
    min_confidence: float | None = None
    target_accuracy: float = TARGET_ACCURACY
    fitted_on: str | None = None  # in words: which photos, how many; None: not fitted (temperature 1)
    ece_before: float | None = None  # on the photos it was fitted on
    ece_after: float | None = None

    @property
    def answer_threshold(self) -> float:
        """The "not sure" threshold answers use by default: the fitted one, 0 (every answer sure) without one."""
        return 0.0 if self.min_confidence is None else self.min_confidence

    @property
    def fitted(self) -> bool:
        return self.fitted_on is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, where: str) -> Calibration:
        """A stored calibration, checked: a tampered temperature or threshold is a `UserError` naming the file."""
        if d is None:
            return UNCALIBRATED
        if not isinstance(d, Mapping):
            raise UserError(f"{where}: calibration must be a mapping, got {type(d).__name__}")
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        cal = cls(**known)
        if not _positive_finite(cal.temperature):
            raise UserError(f"{where}: calibration temperature {cal.temperature!r} is not a positive finite number")
        if cal.min_confidence is not None:
            check_min_confidence(cal.min_confidence, f"{where}: calibration min_confidence")
        return cal


UNCALIBRATED = Calibration()


def check_min_confidence(value: Any, what: str = "--min-confidence") -> float:
    """A probability threshold in [0, 1], else a `UserError`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise UserError(f"{what} {value!r}: must be a probability between 0 and 1")
    return float(value)


def _positive_finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


_said: set[str] = set()


def say_if_uncalibrated(calibration: Calibration, source: str) -> None:
    """Once per model file and process: a model without a fitted temperature gives the raw softmax."""
    if not calibration.fitted and source not in _said:
        _said.add(source)
        log.info("%s: no calibration stored; probabilities use temperature 1 (`carspotter calibrate` fits one)", source)
