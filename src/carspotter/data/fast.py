"""The fast data path: training from the decoded-image cache, augmented a whole batch at a time on the device.

Per epoch the classic path decodes every JPEG and runs PIL transforms image by image in worker processes. Here each
split is decoded once into the uint8 cache (`carspotter.data.cache`); on a GPU the whole split then lives in device
memory (Stanford Cars at 227×227 is 1.26 GB), a batch is a gather of random indices, and `BatchPreprocess` augments
it with per-sample parameters and normalises it on the device, in the LightningModule's ``on_after_batch_transfer``.
On the CPU the same loader reads from the memory map, so no JPEG is decoded after the first epoch.

Validation images come from an evaluation cache (no box crop or erase, like the classic `EvalTransform`) and get
only the deterministic resize and normalisation, so they equal the classic evaluation tensors. The test split is
scored through `evaluate`'s own loader (`carspotter.training.run.score_test_split`), never from the cache.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from carspotter.config import DataConfig
from carspotter.data.batch_augment import BatchPreprocess, unsupported_transforms
from carspotter.data.cache import CachedSplit, box_mode, load_or_build_cache
from carspotter.data.dataset import CarsDataModule
from carspotter.data.epochs import EpochOrder
from carspotter.data.prepared import CACHE_DIR
from carspotter.errors import UserError

log = logging.getLogger(__name__)


def resolve_pipeline(cfg: DataConfig) -> str:
    """``classic`` or ``fast``. ``auto`` is fast (no JPEG decoded after the cache is built, channels_last with it;
    `benchmarks/train_throughput.py` measures both pipelines), except with an augmentation that has no batched
    equivalent or without a writable cache folder (then classic, with a warning)."""
    if cfg.pipeline != "auto":
        return cfg.pipeline
    problems = unsupported_transforms(cfg)
    if problems:
        log.warning("data.pipeline auto: using the classic pipeline, since %s", "; ".join(problems))
        return "classic"
    folder = Path(cfg.cache_dir) if cfg.cache_dir is not None else Path(cfg.path) / CACHE_DIR
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not os.access(existing, os.W_OK):
        log.warning("data.pipeline auto: using the classic pipeline: %s is not writable (set data.cache_dir)", folder)
        return "classic"
    return "fast"


class DeviceBatches:
    """Batches ``(uint8 N×H×W×C, int64 labels)`` gathered from a tensor that may live on the GPU.

    Shuffled (or drawn by ``weights``, `data.class_balance: sampler`) by (seed, epoch) and sharded over DDP ranks by
    `EpochOrder`, the classic pipeline's draw; ``epoch`` is read when the first batch is drawn, so a resumed run sees
    the same batches as an uninterrupted one.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        rows: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        epoch: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
        weights: torch.Tensor | None = None,
    ) -> None:
        self.images, self.labels, self.rows = images, labels, rows
        self.batch_size = batch_size
        self.order = EpochOrder(len(rows), seed, shuffle, epoch, rank, world_size, weights)

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, _ = self.order.draw()
        rows = self.rows[order]
        for start in range(0, len(rows), self.batch_size):
            idx = rows[start : start + self.batch_size]
            if self.images.device.type == "cpu":
                idx = idx.sort().values  # memory-map locality; the order inside a batch does not matter
            idx = idx.to(self.images.device, non_blocking=True)
            yield self.images.index_select(0, idx), self.labels.index_select(0, idx)


class FastCarsDataModule(CarsDataModule):
    """Same splits as `CarsDataModule` (it is one), fed from the image cache; ``batch_transform`` runs on device."""

    def __init__(
        self, cfg: DataConfig, batch_size: int, seed: int, progress: bool = True, device: str | None = None
    ) -> None:
        super().__init__(cfg, batch_size, seed)
        self._device = torch.device(device) if device is not None else None  # without a trainer (benchmarks)
        self.batch_transform = BatchPreprocess(cfg)
        self.progress = progress
        self._train_mode = box_mode(cfg.crop_to_bbox, cfg.erase_background)
        self._on_device: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def _cache(self, split: str, mode: str) -> CachedSplit:
        return load_or_build_cache(
            self.dataset,
            split,
            self.preprocessing,
            mode,  # type: ignore[arg-type]
            self.cfg.cache_dir,
            workers=max(1, self.cfg.num_workers),
            progress=self.progress,
        )

    def _needed(self) -> list[tuple[str, str]]:
        """The (split, box mode) caches training reads: train, and the split validation scores."""
        val_split = "test" if self.cfg.validate_on_test else "train"
        return list(dict.fromkeys([("train", self._train_mode), (val_split, "none")]))

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node: the cache is built once, the ranks then read it.
        for split, mode in self._needed():
            self._cache(split, mode)

    def setup(self, stage: str | None = None) -> None:
        for key in self._needed():
            self._resident(*key)

    @property
    def device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.strategy.root_device
        return self._device or torch.device("cpu")

    def _resident(self, split: str, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The split's images as a tensor on the training device when they fit there, else the CPU memory map."""
        key = (split, mode)
        if key in self._on_device:
            return self._on_device[key]
        cached = self._cache(split, mode)
        labels = torch.tensor(cached.labels)
        device = self.device
        if device.type == "cuda" and _fits(cached.images.nbytes, device):
            images = torch.empty(cached.images.shape, dtype=torch.uint8, device=device)
            for start in range(0, len(cached), 1024):  # chunked: no second full copy in host memory
                chunk = np.array(cached.images[start : start + 1024])  # a writable host copy of 1024 images
                images[start : start + len(chunk)].copy_(torch.from_numpy(chunk))
            labels = labels.to(device)
            log.info("%s split on %s: %.2f GB of uint8 images", split, device, cached.images.nbytes / 1e9)
        else:
            if device.type == "cuda":
                log.warning("%s split does not fit in %s memory; batches are copied from host memory", split, device)
            # A private copy-on-write map: writable for torch, nothing is ever written back.
            images = torch.from_numpy(np.load(cached.path, mmap_mode="c"))
        self._on_device[key] = (images, labels)
        return images, labels

    def _rows(self, split: str, frame: pd.DataFrame) -> torch.Tensor:
        """Row numbers in the split's cache of ``frame``'s images (looked up by file name)."""
        position = {name: i for i, name in enumerate(self.dataset.split(split)["fname"].astype(str))}
        try:
            return torch.tensor([position[n] for n in frame["fname"].astype(str)], dtype=torch.long)
        except KeyError as exc:
            raise UserError(f"{self.cfg.path}: image {exc} is not in the {split} split") from None

    def _batches(
        self, split: str, mode: str, frame: pd.DataFrame, shuffle: bool, weights: torch.Tensor | None = None
    ) -> DeviceBatches:
        images, labels = self._resident(split, mode)
        rank, world = self.rank_and_world_size()
        return DeviceBatches(
            images, labels, self._rows(split, frame), self.batch_size,
            shuffle=shuffle, seed=self.seed, epoch=self.current_epoch, rank=rank, world_size=world, weights=weights,
        )  # fmt: skip

    def train_dataloader(self) -> DeviceBatches:  # type: ignore[override]
        weights = self.train_sample_weights()
        return self._batches("train", self._train_mode, self.train_frame, shuffle=True, weights=weights)

    def val_dataloader(self) -> DeviceBatches:  # type: ignore[override]
        return self._batches("test" if self.cfg.validate_on_test else "train", "none", self.val_frame, shuffle=False)


def _fits(nbytes: int, device: torch.device) -> bool:
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes < 0.5 * free  # leave at least as much for the model, activations and the allocator
