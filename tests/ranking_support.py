"""Comparing a deployed model's ranking with `predict`'s when the two differ by a bounded numerical error.

The pixels model's in-graph resize lands one level away from PIL's on about 0.02% of pixels (PIL's fixed-point
weights, which ONNX's float ``Resize`` cannot reproduce for every photo size), so probabilities move by up to
about 1e-3. Where `predict`'s two classes are closer than that, either order is the same answer: the check is that
each shown class is `predict`'s class at that rank, or one whose probability ties with it within twice the
measured difference (each of the two can move by that much).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

BOUND = 1e-2  # the bound on |Δ probability|


def assert_ranking_matches(
    shown: list[tuple[Hashable, float]], reference: Mapping[Hashable, float], what: str, diff: float | None = None
) -> tuple[float, int]:
    """``shown``: (class, probability), most likely first (top-1 or top-5); ``reference``: `predict`'s probability
    of every class (the same keys: ids or names); ``diff``: the photo's largest |Δ probability| over every class
    when known (default: over the shown ones). Returns that difference and how many ranks were a tie that swapped."""
    diff = max([abs(p - reference[c]) for c, p in shown] + [diff or 0.0])
    assert diff <= BOUND, f"{what}: |Δ probability| {diff:.2e}"
    ranked = sorted(reference.values(), reverse=True)
    swapped = 0
    for rank, (c, _) in enumerate(shown):
        gap = ranked[rank] - reference[c]
        assert gap <= 2 * diff, f"{what}: rank {rank + 1} is {c} ({reference[c]:.4f}); predict's: {ranked[rank]:.4f}"
        swapped += gap > 0
    return diff, swapped
