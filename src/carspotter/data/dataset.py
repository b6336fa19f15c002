"""Torch datasets over a prepared folder, and the Lightning data module that splits it honestly.

The validation split is carved from train (stratified, seeded), so the test split is only ever evaluated once, with
the checkpoint the validation split selected. ``validate_on_test`` reproduces the thesis's protocol on request.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from carspotter.config import DataConfig
from carspotter.data import balance
from carspotter.data.epochs import EpochOrder, EpochSampler, IteratedAtFirstBatch
from carspotter.data.prepared import PreparedDataset, load_prepared, split_boxes, train_val_frames
from carspotter.data.transforms import EvalTransform, ImageTransform, TrainTransform, preprocessing_from_config
from carspotter.errors import UserError
from carspotter.preprocessing import open_image

log = logging.getLogger(__name__)


class CarImages(Dataset):
    """Rows of a prepared split → ``(image tensor, class_id)``. The box is looked up in the same row as the file."""

    def __init__(self, root: Path, frame: pd.DataFrame, transform: ImageTransform) -> None:
        self.root = Path(root)
        self.fnames = frame["fname"].astype(str).tolist()
        self.labels = frame["class_id"].to_numpy(dtype=np.int64)
        self.boxes = _boxes(frame)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.fnames)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """``key``: an index, or ``(index, seed)`` from `EpochSampler` (the transform's randomness then comes from
        that seed alone, whichever worker runs it)."""
        idx, seed = key if isinstance(key, tuple) else (key, None)
        img = open_image(self.root / self.fnames[idx])
        row = None if self.boxes is None else self.boxes[idx]
        box = None if row is None or np.isnan(row).any() else tuple(row)  # no box: the whole image, as in the cache
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            return self.transform(img, box), int(self.labels[idx])


def _boxes(frame: pd.DataFrame) -> np.ndarray | None:
    values = split_boxes(frame)
    return None if np.isnan(values).all() else values


class CarsDataModule(L.LightningDataModule):
    def __init__(self, cfg: DataConfig, batch_size: int, seed: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.batch_size = batch_size
        self.seed = seed
        self.dataset: PreparedDataset = load_prepared(cfg.path)
        self.preprocessing = preprocessing_from_config(cfg)
        self.train_frame, self.val_frame = self._split()
        if (cfg.crop_to_bbox or cfg.erase_background) and not self.dataset.manifest.get("boxes", True):
            log.warning(
                "%s has no bounding boxes (%s layout): every box is the whole image, so data.%s changes nothing",
                cfg.path,
                self.dataset.manifest.get("source_layout", "?"),
                "crop_to_bbox" if cfg.crop_to_bbox else "erase_background",
            )
        if len(self.train_frame) == 0:
            raise UserError(f"{cfg.path}: the training split is empty")

    @property
    def class_names(self) -> list[str]:
        return self.dataset.classes

    def _split(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        train = self.dataset.train
        if self.cfg.validate_on_test:
            log.warning(
                "data.validate_on_test is set: the test split selects the checkpoint (the thesis's protocol), "
                "so its test accuracy is optimistic"
            )
            return train, self.dataset.test
        return train_val_frames(train, self.cfg.val_fraction, self.seed)

    def rank_and_world_size(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_sample_weights(self) -> torch.Tensor | None:
        """With ``data.class_balance: sampler``, each training photo's draw weight (every class equally likely)."""
        if self.cfg.class_balance != "sampler":
            return None
        return balance.sample_weights(self.train_frame["class_id"], self.dataset.num_classes)

    def train_loss_weights(self) -> torch.Tensor | None:
        """With ``data.class_balance: loss``, the cross-entropy's class weights (1 / frequency, mean 1)."""
        if self.cfg.class_balance != "loss":
            return None
        return balance.loss_weights(self.train_frame["class_id"], self.dataset.num_classes)

    def describe_balance(self) -> str:
        """``data.class_balance`` and the training split's class counts, in one line for the run's log."""
        return balance.describe(self.cfg.class_balance, self.train_frame["class_id"], self.dataset.num_classes)

    def current_epoch(self) -> int:
        """The trainer's epoch (0 without a trainer): what `EpochOrder` draws the epoch's order from."""
        trainer = getattr(self, "trainer", None)
        return trainer.current_epoch if trainer is not None else 0

    def _loader(
        self, frame: pd.DataFrame, transform: ImageTransform, sampler: EpochSampler | None = None
    ) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(
            CarImages(self.dataset.root, frame, transform),
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=False,
            # Its own generator: creating an iterator (which draws the workers' base seed) leaves the global
            # random state alone, so it does not matter whether that happens before or after SeedEachEpoch.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> IteratedAtFirstBatch:  # type: ignore[override]
        rank, world = self.rank_and_world_size()
        weights = self.train_sample_weights()
        order = EpochOrder(len(self.train_frame), self.seed, True, self.current_epoch, rank, world, weights)
        return IteratedAtFirstBatch(self._loader(self.train_frame, TrainTransform(self.cfg), EpochSampler(order)))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_frame, EvalTransform(self.preprocessing))


def eval_loader(
    dataset: PreparedDataset, split: str | pd.DataFrame, preprocessing, batch_size: int = 64, workers: int = 2
) -> DataLoader:
    """A loader over a whole split (or some of its rows) with the deployed preprocessing (for `evaluate`)."""
    frame = dataset.split(split) if isinstance(split, str) else split
    return DataLoader(
        CarImages(dataset.root, frame, EvalTransform(preprocessing)),
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=False,
    )
