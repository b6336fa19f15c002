"""What an epoch draws, as a function of (seed, epoch) alone, so that `train --resume` equals an uninterrupted run.

Lightning creates the first epoch's batch iterator (and, after ``--resume``, the resumed epoch's) before
``on_train_epoch_start``, and later ones after it; DataLoader workers may live across epochs. So the order of the
samples cannot come from a global random state reseeded in a hook, nor from a generator that advances once per
epoch: `EpochOrder` reads the trainer's current epoch when iteration starts and draws the order, and one augmentation
seed per sample, from a generator seeded by (seed, epoch). `SeedEachEpoch` then seeds the training process's own
random state (dropout, batch augmentation on the device, MixUp/CutMix) from (seed, epoch) before the first batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, WeightedRandomSampler

ORDER_STREAM, PROCESS_STREAM = 0, 1


def derived_seed(seed: int, epoch: int, stream: int) -> int:
    """A well-mixed 63-bit seed for one (run seed, epoch, purpose)."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class EpochOrder:
    """The current epoch's order of ``n`` samples (shuffled or in order) and a seed for each, for one rank.

    With ``weights`` (one per sample, `carspotter.data.balance.sample_weights`) a shuffled epoch is instead ``n``
    draws with replacement by those weights (torch's `WeightedRandomSampler`, from the same (seed, epoch) generator).
    Under DDP the order is padded to a multiple of ``world_size`` (like `DistributedSampler`) and each rank takes
    every ``world_size``-th entry of the same permutation, so the ranks see disjoint samples.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        shuffle: bool,
        epoch: Callable[[], int],
        rank: int = 0,
        world_size: int = 1,
        weights: torch.Tensor | None = None,
    ) -> None:
        if weights is not None and len(weights) != n:
            raise ValueError(f"{len(weights)} sample weights for {n} samples")
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, epoch
        self.rank, self.world_size, self.weights = rank, world_size, weights

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size)

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch(), ORDER_STREAM))
        if not self.shuffle:
            order = torch.arange(self.n)
        elif self.weights is None:
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.tensor(list(WeightedRandomSampler(self.weights, self.n, generator=generator)))
        seeds = torch.randint(0, 2**62, (self.n,), generator=generator)
        if self.world_size > 1:
            pad = len(self) * self.world_size - self.n
            order, seeds = torch.cat([order, order[:pad]]), torch.cat([seeds, seeds[:pad]])
            order, seeds = order[self.rank :: self.world_size], seeds[self.rank :: self.world_size]
        return order, seeds


class EpochSampler(Sampler[tuple[int, int]]):
    """A DataLoader sampler yielding ``(index, augmentation seed)``: the dataset seeds each sample's transform
    with it, so the augmentation does not depend on which worker draws the sample, nor on how long it lived."""

    def __init__(self, order: EpochOrder) -> None:
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, seeds = self.order.draw()
        yield from zip(order.tolist(), seeds.tolist(), strict=True)


class IteratedAtFirstBatch:
    """A training DataLoader whose iterator is created when the first batch is asked for, not when Lightning
    calls ``iter()`` (a DataLoader with workers draws its first indices at once, and Lightning calls ``iter()``
    for the first and the resumed epoch before it has restored the run's epoch)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        yield from self.loader


class SeedEachEpoch(L.Callback):
    """Seeds the training process from (seed, epoch) when each epoch starts, so an epoch's dropout masks and batch
    augmentations are the same whether the run got there uninterrupted or by ``--resume``."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Python's, NumPy's and torch's (CPU and every GPU) random state; Lightning takes seeds below 2**32.
        seed = derived_seed(self.seed, trainer.current_epoch, PROCESS_STREAM) % 2**32
        L.seed_everything(seed, workers=True, verbose=False)
