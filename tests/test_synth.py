"""`synth`: the synthetic raw dataset has the real releases' files, is deterministic, varied, and learnable."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from carspotter.data.prepared import load_prepared
from carspotter.data.synth import class_styles, synthesize
from carspotter.errors import UserError


def _names(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return tar.getnames()


def test_updated_layout_files_are_named_as_the_release(tmp_path: Path) -> None:
    report = synthesize(tmp_path / "raw", layout="updated", num_classes=3, per_class=4, seed=0)
    assert report.files == ["car_devkit.tgz", "car_ims.tgz", "cars_annos.mat"]
    assert [n for n in _names(tmp_path / "raw" / "car_ims.tgz") if n.endswith(".jpg")] == [
        f"car_ims/{i:06d}.jpg" for i in range(1, 13)
    ]
    assert "devkit/cars_meta.mat" in _names(tmp_path / "raw" / "car_devkit.tgz")
    mat = scipy.io.loadmat(tmp_path / "raw" / "cars_annos.mat")
    ann = mat["annotations"]
    assert ann.shape == (1, 12)
    assert ann.dtype.names == ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")
    assert ann[0, 0]["relative_im_path"][0] == "car_ims/000001.jpg"
    assert ann[0, 0]["class"].dtype == np.uint8 and ann[0, 0]["class"].shape == (1, 1)
    assert mat["class_names"].shape == (1, 3) and str(mat["class_names"][0, 0][0]) == report.classes[0]
    assert sorted(int(a["test"][0, 0]) for a in ann[0]) == [0] * 6 + [1] * 6


def test_original_layout_files_are_named_as_the_release(tmp_path: Path) -> None:
    report = synthesize(tmp_path / "raw", layout="original", num_classes=3, per_class=4, seed=0)
    assert report.files == ["car_devkit.tgz", "cars_test.tgz", "cars_test_annos_withlabels.mat", "cars_train.tgz"]
    assert "cars_train/00001.jpg" in _names(tmp_path / "raw" / "cars_train.tgz")
    assert "cars_test/00006.jpg" in _names(tmp_path / "raw" / "cars_test.tgz")
    assert {"devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "devkit/cars_test_annos.mat"} <= set(
        _names(tmp_path / "raw" / "car_devkit.tgz")
    )
    folders = synthesize(tmp_path / "raw2", layout="original", num_classes=3, per_class=4, seed=0, archives=False,
                         nested=True, test_labels_in_devkit=True)
    assert folders.files == ["cars_test/", "cars_train/", "devkit/"]
    assert (tmp_path / "raw2" / "cars_train" / "cars_train" / "00001.jpg").is_file()
    assert (tmp_path / "raw2" / "devkit" / "cars_test_annos_withlabels.mat").is_file()


def test_synth_is_deterministic(tmp_path: Path) -> None:
    def files(seed: int, name: str) -> dict[str, bytes]:
        root = tmp_path / name
        synthesize(root, layout="original", num_classes=4, per_class=3, seed=seed, archives=False)
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}

    a, b, c = files(7, "a"), files(7, "b"), files(8, "c")
    assert a == b
    assert a.keys() == c.keys() and a != c
    # a class looks the same whatever the number of classes (per-image seeds)
    assert [s.name for s in class_styles(3)] == [s.name for s in class_styles(200)[:3]]
    assert len({s.name for s in class_styles(400)}) == 400


def test_synth_refuses_a_non_empty_out_and_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not an empty folder"):
        synthesize(tmp_path / "raw", layout="original", num_classes=2, per_class=2, seed=0)
    assert (tmp_path / "raw" / "keep.txt").read_text() == "mine"
    with pytest.raises(UserError, match="unknown layout"):
        synthesize(tmp_path / "new", layout="kaggle", num_classes=2, per_class=2, seed=0)
    with pytest.raises(UserError, match="at least 1"):
        synthesize(tmp_path / "new", layout="updated", num_classes=0, per_class=2, seed=0)
    assert not (tmp_path / "new").exists()


def test_synthetic_images_vary(synthetic_prepared: Path) -> None:
    ds = load_prepared(synthetic_prepared)
    rows = [r for df in (ds.train, ds.test) for r in df.itertuples()]
    widths = np.array([r.width for r in rows])
    aspects = np.array([r.height / r.width for r in rows])
    assert widths.min() < 160 and widths.max() > 320 and aspects.max() - aspects.min() > 0.15
    modes = {}
    for r in rows:
        with Image.open(synthetic_prepared / r.fname) as im:
            assert im.format == "JPEG"
            modes[im.mode] = modes.get(im.mode, 0) + 1
        assert 0 <= r.bbox_x1 < r.bbox_x2 <= r.width and 0 <= r.bbox_y1 < r.bbox_y2 <= r.height
        box_area = (r.bbox_x2 - r.bbox_x1) * (r.bbox_y2 - r.bbox_y1)
        assert 0.15 < box_area / (r.width * r.height) < 1.0  # a car with some background around it
    assert 0 < modes.get("L", 0) < 0.15 * len(rows)  # a few grayscale photos, as in the real dataset
    assert all(re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+ [A-Za-z]+ (19|20)\d\d", name) for name in ds.classes)


def _hue_histograms(root: Path, fnames: list[str]) -> np.ndarray:
    feats = []
    for f in fnames:
        with Image.open(root / f) as im:
            hsv = np.asarray(im.convert("RGB").resize((32, 32)).convert("HSV"), dtype=np.float32)
        weight = (hsv[..., 1] > 100).ravel().astype(np.float32)  # saturated pixels only
        hist = np.histogram(hsv[..., 0].ravel(), bins=24, range=(0, 256), weights=weight)[0]
        feats.append(hist / (weight.sum() + 1))
    return np.asarray(feats)


def test_classes_are_learnable_but_not_trivial(synthetic_prepared: Path) -> None:
    """A colour-histogram nearest-centroid classifier beats chance by far, but is far from perfect."""
    ds = load_prepared(synthetic_prepared)
    x_train = _hue_histograms(synthetic_prepared, ds.train["fname"].tolist())
    x_test = _hue_histograms(synthetic_prepared, ds.test["fname"].tolist())
    y_train, y_test = ds.train["class_id"].to_numpy(), ds.test["class_id"].to_numpy()
    centroids = np.stack([x_train[y_train == k].mean(0) for k in range(ds.num_classes)])
    predicted = ((x_test[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    accuracy = float((predicted == y_test).mean())
    chance = 1 / ds.num_classes
    assert 3 * chance <= accuracy < 0.95, accuracy


@pytest.mark.slow
def test_a_small_ghostnet_learns_the_synthetic_classes(tmp_path: Path) -> None:
    """The demo's promise: 10 classes × 40 images, 64×64, 10 CPU epochs from scratch → well above 10% chance."""
    import torch

    from carspotter.data.prepare import prepare
    from carspotter.models import create_model

    synthesize(tmp_path / "raw", layout="original", num_classes=10, per_class=40, seed=0)
    ds = load_prepared(prepare(tmp_path / "raw", tmp_path / "prepared").out)

    def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        df = ds.split(split)
        images = [np.asarray(Image.open(ds.root / f).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR))
                  for f in df["fname"]]
        x = torch.tensor(np.stack(images), dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
        return (x - 0.5) / 0.25, torch.tensor(df["class_id"].to_numpy())

    torch.manual_seed(0)
    (x_train, y_train), (x_test, y_test) = tensors("train"), tensors("test")
    model = create_model("ghostnet_050", num_classes=ds.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    epochs = 10
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_train))
        for i in range(0, len(order), 32):
            idx = order[i : i + 32]
            xb = x_train[idx]
            flip = torch.rand(len(idx)) < 0.5
            xb[flip] = xb[flip].flip(-1)
            loss = torch.nn.functional.cross_entropy(model(xb), y_train[idx], label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy >= 0.5, accuracy
