"""The fast pipeline: the decoded-image cache holds exactly the classic path's pixels, batched augmentation draws
per-sample parameters from the same ranges as torchvision, and training through it learns like the classic path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from carspotter.config import load_config
from carspotter.data.batch_augment import BatchPreprocess, unsupported_transforms
from carspotter.data.cache import cache_key, load_or_build_cache
from carspotter.data.fast import DeviceBatches, FastCarsDataModule, resolve_pipeline
from carspotter.data.prepared import load_prepared
from carspotter.data.transforms import EvalTransform, crop_to_box, preprocessing_from_config
from carspotter.errors import UserError
from carspotter.evaluation.metrics import evaluate_on_dataset
from carspotter.formats.run_dir import read_epoch_metrics
from carspotter.preprocessing import open_image, resize_image
from carspotter.training.run import train

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
THESIS = ROOT / "configs" / "thesis_c50.yaml"


def data_config(prepared: Path, *extra: str):
    return load_config(THESIS, [f"data.path={prepared}", "data.image_size=[40,56]", *extra]).data


@pytest.mark.parametrize(
    ("mode", "grayscale"), [("none", False), ("crop", False), ("none", True)], ids=["plain", "crop", "gray"]
)
def test_cached_image_equals_decoded_and_resized_image(synthetic_prepared: Path, tmp_path: Path, mode, grayscale):
    cfg = data_config(synthetic_prepared, f"data.grayscale={str(grayscale).lower()}", "data.mean=null", "data.std=null")
    prep = preprocessing_from_config(cfg)
    dataset = load_prepared(synthetic_prepared)
    cached = load_or_build_cache(dataset, "train", prep, mode, tmp_path, progress=False)
    assert cached.images.shape == (len(dataset.train), 40, 56, 1 if grayscale else 3)
    for i, row in dataset.train.iterrows():
        img = open_image(synthetic_prepared / row["fname"])
        if mode == "crop":
            img = crop_to_box(img, tuple(float(row[c]) for c in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")))
        expected = np.asarray(resize_image(img, prep))
        np.testing.assert_array_equal(cached.images[i].reshape(expected.shape), expected, err_msg=row["fname"])
        assert cached.labels[i] == row["class_id"]


def test_cached_eval_batch_equals_classic_eval_tensor(synthetic_prepared: Path, tmp_path: Path) -> None:
    cfg = data_config(synthetic_prepared)
    dataset = load_prepared(synthetic_prepared)
    cached = load_or_build_cache(dataset, "test", preprocessing_from_config(cfg), "none", tmp_path, progress=False)
    batch = BatchPreprocess(cfg)(torch.from_numpy(np.array(cached.images[:16])), train=False)
    classic = EvalTransform(preprocessing_from_config(cfg))
    for i in range(16):
        expected = classic(open_image(synthetic_prepared / cached.fnames[i]))
        torch.testing.assert_close(batch[i], expected, rtol=0, atol=1e-6)


def test_cache_is_reused_and_rebuilt_when_a_setting_or_the_dataset_changes(synthetic_prepared: Path, tmp_path: Path):
    dataset = load_prepared(synthetic_prepared)
    prep = preprocessing_from_config(data_config(synthetic_prepared))
    first = load_or_build_cache(dataset, "test", prep, "none", tmp_path, progress=False)
    stamp = first.path.stat().st_mtime_ns
    assert load_or_build_cache(dataset, "test", prep, "none", tmp_path, progress=False).path.stat().st_mtime_ns == stamp
    keys = {cache_key(dataset, "test", prep, "none")}
    for changed in (["data.image_size=[40,40]"], ["data.grayscale=true", "data.mean=null", "data.std=null"]):
        changed_prep = preprocessing_from_config(data_config(synthetic_prepared, *changed))
        keys.add(cache_key(dataset, "test", changed_prep, "none"))
    keys.add(cache_key(dataset, "test", prep, "crop"))
    keys.add(cache_key(dataset, "train", prep, "none"))
    reprepared = type(dataset)(**{**dataset.__dict__, "manifest": {**dataset.manifest, "created": "later"}})
    keys.add(cache_key(reprepared, "test", prep, "none"))
    assert len(keys) == 6
    # A re-prepared dataset gets a new cache; the old one can never be valid again and is removed.
    second = load_or_build_cache(reprepared, "test", prep, "none", tmp_path, progress=False)
    assert second.path != first.path and not first.path.exists()
    assert json.loads(second.path.with_suffix(".json").read_text())["shape"] == list(second.images.shape)
    assert not list(tmp_path.glob(".*tmp"))


def test_batched_augmentation_parameters_vary_per_sample_within_ranges(synthetic_prepared: Path, tmp_path: Path):
    torch.manual_seed(0)
    cfg = data_config(synthetic_prepared, "data.tensor_augmentations=[{RandomErasing: {p: 0.5}}]")
    augment = BatchPreprocess(cfg)
    flip, affine, jitter = augment.image_augs
    n, shape = 512, torch.Size([512, 3, 40, 56])
    p = affine.forward_parameters(shape)
    assert p["angle"].abs().max() <= 25 and p["angle"].std() > 5
    assert (p["translations"][:, 0].abs() <= 0.1 * 56 + 1e-4).all() and (
        p["translations"][:, 1].abs() <= 4 + 1e-4
    ).all()
    assert ((p["scale"] >= 0.9) & (p["scale"] <= 1.1)).all() and p["scale"].std() > 0.02
    assert p["shear_x"].abs().max() <= 8 and p["shear_x"].std() > 1 and (p["shear_y"] == 0).all()
    flipped = flip.forward_parameters(shape)["batch_prob"].float().mean()
    assert 0.4 < flipped < 0.6
    j = jitter.forward_parameters(shape)
    for name, lo, hi in (
        ("brightness", 0.8, 1.2),
        ("contrast", 0.8, 1.2),
        ("saturation", 0.8, 1.2),
        ("hue", -0.1, 0.1),
    ):
        f = j[f"{name}_factor"]
        assert len(f) == n and lo - 1e-6 <= f.min() and f.max() <= hi + 1e-6 and f.std() > 0.02, name
    # On a batch of one image repeated, every augmented copy differs: the parameters are drawn per sample.
    same = torch.from_numpy(np.array(load_or_build_cache(
        load_prepared(synthetic_prepared), "test", preprocessing_from_config(cfg), "none",
        tmp_path, progress=False).images[:1])).repeat(32, 1, 1, 1)  # fmt: skip
    out = augment(same, train=True).flatten(1)
    assert torch.cdist(out, out).add(torch.eye(32) * 1e9).min() > 0
    torch.testing.assert_close(augment(same, train=False)[0], augment(same, train=False)[31])


def _torchvision_draws(transform: v2.Transform, n: int) -> dict[str, np.ndarray]:
    img = torch.zeros(3, 40, 56)
    draws: dict[str, list[float]] = {}
    for _ in range(n):
        for key, value in transform.make_params([img]).items():
            if key == "fn_idx":
                continue
            values = value if isinstance(value, tuple) else (value,)
            for k, v in enumerate(values):
                draws.setdefault(f"{key}{k}", []).append(float(v))
    return {k: np.asarray(v) for k, v in draws.items()}


def test_classic_and_fast_pipelines_draw_from_the_same_ranges(synthetic_prepared: Path) -> None:
    """torchvision (classic, per image) and kornia (fast, per sample) sampled side by side: same bounds, both used."""
    torch.manual_seed(1)
    cfg = data_config(synthetic_prepared)
    classic = {s.name: getattr(v2, s.name)(**s.params) for s in cfg.image_augmentations}
    _, affine, jitter = BatchPreprocess(cfg).image_augs
    shape = torch.Size([2000, 3, 40, 56])
    tv_affine = _torchvision_draws(classic["RandomAffine"], 2000)
    k_affine = affine.forward_parameters(shape)
    pairs = {
        "angle": (tv_affine["angle0"], k_affine["angle"], (-25, 25)),
        "translate x (px)": (tv_affine["translate0"], k_affine["translations"][:, 0], (-5.6, 5.6)),
        "translate y (px)": (tv_affine["translate1"], k_affine["translations"][:, 1], (-4, 4)),
        "scale": (tv_affine["scale0"], k_affine["scale"][:, 0], (0.9, 1.1)),
        "shear x": (tv_affine["shear0"], k_affine["shear_x"], (-8, 8)),
        "shear y": (tv_affine["shear1"], k_affine["shear_y"], (0, 0)),
    }
    tv_jitter = _torchvision_draws(classic["ColorJitter"], 2000)
    k_jitter = jitter.forward_parameters(shape)
    for name, bounds in (("brightness", (0.8, 1.2)), ("contrast", (0.8, 1.2)), ("saturation", (0.8, 1.2)),
                         ("hue", (-0.1, 0.1))):  # fmt: skip
        pairs[name] = (tv_jitter[f"{name}_factor0"], k_jitter[f"{name}_factor"], bounds)
    for name, (tv, kornia, (lo, hi)) in pairs.items():
        kornia = np.asarray(kornia, dtype=np.float64)
        for which, draws in (("torchvision", tv), ("kornia", kornia)):
            # torchvision rounds translations to whole pixels: allow half a pixel there.
            slack = 0.5 if "translate" in name else 1e-4
            assert lo - slack <= draws.min() and draws.max() <= hi + slack, (name, which, draws.min(), draws.max())
        width = hi - lo
        if width:
            assert abs(tv.mean() - kornia.mean()) < 0.05 * width, (name, tv.mean(), kornia.mean())
            assert abs(tv.std() - kornia.std()) < 0.1 * width, (name, tv.std(), kornia.std())


def test_transform_without_batched_equivalent(synthetic_prepared: Path) -> None:
    cfg = data_config(synthetic_prepared, "data.image_augmentations=[{GaussianBlur: {kernel_size: 3}}]")
    assert unsupported_transforms(cfg) and "GaussianBlur" in unsupported_transforms(cfg)[0]
    assert resolve_pipeline(cfg) == "classic"  # auto falls back, with a warning
    with pytest.raises(UserError, match="GaussianBlur.*no batched equivalent|no batched equivalent.*GaussianBlur"):
        BatchPreprocess(cfg.model_copy(update={"pipeline": "fast"}))
    erasing = data_config(synthetic_prepared, "data.tensor_augmentations=[{RandomErasing: {value: random}}]")
    assert "RandomErasing" in unsupported_transforms(erasing)[0]
    supported = data_config(synthetic_prepared)
    assert resolve_pipeline(supported) == "fast"


def test_device_batches_cover_the_split_once_per_epoch_and_shard_across_ranks() -> None:
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 2, 2, 3).contiguous()
    labels, rows = torch.arange(10), torch.tensor([1, 3, 4, 6, 7, 9, 0])
    seen = [int(y) for _, ys in DeviceBatches(images, labels, rows, 3, shuffle=True, seed=0) for y in ys]
    assert sorted(seen) == sorted(rows.tolist()) and len(DeviceBatches(images, labels, rows, 3, shuffle=True)) == 3
    shards = [[int(y) for _, ys in DeviceBatches(images, labels, rows, 2, shuffle=True, seed=5, rank=r, world_size=2)
               for y in ys] for r in (0, 1)]  # fmt: skip
    assert set(shards[0]) | set(shards[1]) == set(rows.tolist()) and len(shards[0]) == len(shards[1]) == 4
    for x, y in DeviceBatches(images, labels, rows, 4, shuffle=True):
        assert (x[:, 0, 0, 0].long() == y).all()


def _tiny(prepared: Path, runs: Path, pipeline: str, cache: Path, *extra: str):
    return load_config(
        DEMO,
        [f"data.path={prepared}", f"output.runs_dir={runs}", "data.num_workers=0", "data.image_size=[48,48]",
         f"data.pipeline={pipeline}", f"data.cache_dir={cache}", "logging.loggers=[csv]", *extra],
    )  # fmt: skip


def test_fast_pipeline_trains_and_its_checkpoint_evaluates_classically(synthetic_prepared: Path, tmp_path: Path):
    # Learning to well above chance takes ~12 epochs (the slow test below); here: the loss falls, the run completes,
    # best.ckpt is tested through the classic evaluation path (what `evaluate` counts), and only the training split
    # was cached.
    cfg = _tiny(synthetic_prepared, tmp_path / "runs", "fast", tmp_path / "cache", "trainer.max_epochs=3",
                "scheduler.params.T_max=3")  # fmt: skip
    result = train(cfg, progress=False)
    rows = read_epoch_metrics(result.run_dir / "metrics.csv")
    assert len(rows) == 3 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"]), rows
    assert result.summary["test_n"] == len(load_prepared(synthetic_prepared).test)
    # the run's own test score (trainer.test) is what the classic `evaluate` counts on its best.ckpt
    batch = cfg.trainer.batch_size
    scores = evaluate_on_dataset(result.best_ckpt, synthetic_prepared, batch_size=batch, progress=False)
    assert (scores.top1, scores.top5, scores.n) == (
        result.summary["test_top1"], result.summary["test_top5"], result.summary["test_n"])
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").glob("*.npy")) == ["train"]


@pytest.mark.slow
def test_fast_pipeline_learns_as_well_as_the_classic_pipeline(learnable_prepared: Path, tmp_path: Path) -> None:
    """Same config, same seed, 8 epochs each on 10 classes × ~35 training images: the fast path fits the training data
    and generalises to the test split as well as the classic path (within 10 points), both far above chance."""
    results, curves = {}, {}
    for pipeline in ("classic", "fast"):
        cfg = _tiny(learnable_prepared, tmp_path / pipeline, pipeline, tmp_path / "cache", "trainer.max_epochs=8",
                    "scheduler.params.T_max=8")  # fmt: skip
        result = train(cfg, progress=False)
        results[pipeline] = result.summary
        curves[pipeline] = read_epoch_metrics(result.run_dir / "metrics.csv")
    chance = 1 / load_prepared(learnable_prepared).num_classes
    best = {k: max(float(r["train_top1"]) for r in rows) for k, rows in curves.items()}
    print({k: (round(best[k], 3), round(r["test_top1"], 3)) for k, r in results.items()}, "(train, test top-1)")
    assert best["fast"] >= 3 * chance and best["fast"] >= best["classic"] - 0.1, (best, results)
    assert results["fast"]["test_top1"] >= 3 * chance, results
    assert results["fast"]["test_top1"] >= results["classic"]["test_top1"] - 0.1, results



def test_fast_datamodule_splits_like_the_classic_one(synthetic_prepared: Path, tmp_path: Path) -> None:
    cfg = data_config(synthetic_prepared, f"data.cache_dir={tmp_path}")
    dm = FastCarsDataModule(cfg, batch_size=8, seed=3, progress=False)
    val = [int(y) for _, ys in dm.val_dataloader() for y in ys]
    assert val == dm.val_frame["class_id"].tolist()
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (8, 40, 56, 3) and y.dtype == torch.int64
