"""Sharpness-aware minimisation (``optimizer.sam``) as Lightning steps an optimizer; built by
`carspotter.training.optimization.build_optimizer`, which imports this module (and pytorch_optimizer) only for the
runs that ask for it."""

from __future__ import annotations

from typing import Any

import torch
from pytorch_optimizer import SAM


class LightningSAM(SAM):
    """pytorch_optimizer's `SAM`, stepped the way Lightning steps every optimizer: ``step(closure)`` with no gradient
    computed yet. The closure runs first at the weights (its loss is the step's), then SAM moves the weights, runs it
    again there and steps the wrapped optimizer with that gradient at the original weights. ``perturbed`` is true
    during the second pass, so the training step counts its photos once."""

    perturbed = False

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        if closure is None:
            raise RuntimeError("optimizer.sam needs the closure Lightning passes (not trainer.precision 16-mixed)")
        with torch.enable_grad():
            first = closure()
        self.perturbed = True
        try:
            super().step(closure)
        finally:
            self.perturbed = False
        return first
