"""`carspotter stats`: exact per-channel mean and std of a prepared training split, and a picture of the data.

The statistics are taken over every pixel of every training image after the same resize the model sees
(`carspotter.preprocessing.resize_image`), streaming: each image contributes its pixel count, mean and sum of squared
deviations (float64), merged exactly (Chan et al.), so nothing is held in memory and no precision is lost. The thesis
computed these in a notebook and reported the mean of per-image stds as "std"; this is the std of all pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from carspotter.data.prepared import PreparedDataset, load_prepared
from carspotter.defaults import DEFAULT_IMAGE_SIZE
from carspotter.errors import UserError
from carspotter.preprocessing import Preprocessing, open_image, resize_image

log = logging.getLogger(__name__)


@dataclass
class RunningMoments:
    """Per-channel count, mean and sum of squared deviations, merged batch by batch without loss (Chan et al.)."""

    channels: int
    count: int = 0
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.mean = np.zeros(self.channels, dtype=np.float64)
        self.m2 = np.zeros(self.channels, dtype=np.float64)

    def update(self, pixels: np.ndarray) -> None:
        """Add an (N, channels) array of pixel values."""
        pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, self.channels)
        n = pixels.shape[0]
        if n == 0:
            return
        batch_mean = pixels.mean(axis=0)
        batch_m2 = ((pixels - batch_mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def std(self) -> np.ndarray:
        """Population std (ddof=0) over all pixels seen."""
        return np.sqrt(self.m2 / self.count) if self.count else np.zeros(self.channels)


@dataclass(frozen=True)
class DatasetStats:
    """What `compute_stats` found; `yaml_snippet` is ready to paste into a training config."""

    root: Path
    split: str
    image_size: tuple[int, int]  # (height, width) the images were resized to
    grayscale: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_images: int
    num_pixels: int  # per channel
    unreadable: list[str]
    class_counts: dict[str, dict[str, int]]  # split -> class name -> images
    sizes: dict[str, np.ndarray]  # split -> (N, 2) original (width, height)

    def yaml_snippet(self) -> str:
        def fmt(values: tuple[float, ...]) -> str:
            return "[" + ", ".join(f"{v:.6f}" for v in values) + "]"

        h, w = self.image_size
        mode = "grayscale" if self.grayscale else "RGB"
        return (
            f"# {self.num_images} {self.split} images of {self.root}, resized to {h}x{w} ({mode}), "
            f"{self.num_pixels} pixels per channel\n"
            "data:\n"
            f"  mean: {fmt(self.mean)}\n"
            f"  std: {fmt(self.std)}\n"
        )


def channel_moments(
    paths: list[Path], prep: Preprocessing, *, progress: bool = True, unreadable: list[str] | None = None
) -> RunningMoments:
    """Stream ``paths`` through the model's resize and accumulate per-channel moments of the [0, 1] pixel values.

    Unreadable files are appended to ``unreadable`` (when given) and skipped; without the list they raise.
    """
    moments = RunningMoments(prep.channels)
    for path in tqdm(paths, desc="stats", unit="img", disable=not progress, leave=False):
        try:
            img = open_image(path)
        except UserError:
            if unreadable is None:
                raise
            unreadable.append(str(path))
            continue
        arr = np.asarray(resize_image(img, prep), dtype=np.float64) / 255.0
        moments.update(arr.reshape(-1, prep.channels))
    return moments


def compute_stats(
    prepared: str | Path | PreparedDataset,
    *,
    image_size: int | tuple[int, int] = DEFAULT_IMAGE_SIZE,
    grayscale: bool = False,
    split: str = "train",
    progress: bool = True,
) -> DatasetStats:
    """Exact mean/std of ``split`` (the training split by default: the test split must not leak into the model)."""
    dataset = prepared if isinstance(prepared, PreparedDataset) else load_prepared(prepared)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or min(size) < 1:
        raise UserError(f"image size must be positive (height, width), got {image_size}")
    frame = dataset.split(split)
    if len(frame) == 0:
        raise UserError(f"{dataset.root}: the {split} split has no images")
    prep = Preprocessing(image_size=(int(size[0]), int(size[1])), grayscale=grayscale)
    unreadable: list[str] = []
    paths = [dataset.root / f for f in frame["fname"].astype(str)]
    moments = channel_moments(paths, prep, progress=progress, unreadable=unreadable)
    if moments.count == 0:
        raise UserError(f"{dataset.root}: none of the {len(paths)} {split} images could be read")
    if unreadable:
        log.warning("%d unreadable image(s) left out of the statistics: %s", len(unreadable), ", ".join(unreadable[:5]))
    counts = {
        s: {name: int((dataset.split(s)["class_id"] == i).sum()) for i, name in enumerate(dataset.classes)}
        for s in ("train", "test")
    }
    sizes = {s: dataset.split(s)[["width", "height"]].to_numpy(dtype=np.int64) for s in ("train", "test")}
    return DatasetStats(
        root=dataset.root,
        split=split,
        image_size=prep.image_size,
        grayscale=grayscale,
        mean=tuple(float(v) for v in moments.mean),
        std=tuple(float(v) for v in moments.std),
        num_images=len(paths) - len(unreadable),
        num_pixels=moments.count,
        unreadable=unreadable,
        class_counts=counts,
        sizes=sizes,
    )


def plot_stats(stats: DatasetStats, path: str | Path) -> Path:
    """Class counts (train and test, stacked) and the original image sizes, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(stats.class_counts["train"])
    train = np.array([stats.class_counts["train"][n] for n in names])
    test = np.array([stats.class_counts["test"][n] for n in names])
    fig, (ax_classes, ax_sizes) = plt.subplots(
        1, 2, figsize=(max(12.0, min(0.12 * len(names) + 6, 40.0)), 5.5), gridspec_kw={"width_ratios": [2, 1]}
    )
    x = np.arange(len(names))
    ax_classes.bar(x, train, label=f"train ({train.sum()})", color="tab:blue")
    ax_classes.bar(x, test, bottom=train, label=f"test ({test.sum()})", color="tab:orange")
    ax_classes.set_title(f"images per class ({len(names)} classes; train min {train.min()}, max {train.max()})")
    ax_classes.set_ylabel("images")
    ax_classes.set_ylim(0, 1.2 * max(1, int((train + test).max())))  # room for the legend
    if len(names) <= 40:
        ax_classes.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    else:
        ax_classes.set_xlabel("class id")
    ax_classes.legend()
    for split, color in (("train", "tab:blue"), ("test", "tab:orange")):
        wh = stats.sizes[split]
        if len(wh):
            ax_sizes.scatter(wh[:, 0], wh[:, 1], s=4, alpha=0.4, color=color, label=split)
    train_wh = stats.sizes["train"]
    ax_sizes.set_title(
        f"original image sizes (train median {int(np.median(train_wh[:, 0]))}x{int(np.median(train_wh[:, 1]))})"
    )
    ax_sizes.set_xlabel("width (px)")
    ax_sizes.set_ylabel("height (px)")
    ax_sizes.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
