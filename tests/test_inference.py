"""`carspotter.inference`: one loader for every format, the same answers from each, test-time flip included."""

from __future__ import annotations

from pathlib import Path

import pytest
from ranking_support import assert_ranking_matches

from carspotter.errors import UserError
from carspotter.inference import load_classifier
from carspotter.inference.predict import predict_images

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.mark.slow
@pytest.mark.realdata
def test_checkpoint_onnx_and_pte_give_the_same_top5_on_real_photos(
    stanford_shared: Path, responsive_checkpoint: Path, responsive_onnx: Path, exported_pte: Path
) -> None:
    """The same model as a `.ckpt`, its `.onnx` and its `.pte`, each through `load_classifier` and `predict`: the
    same five classes in the same order on real photos (a swap only between classes whose probabilities tie within
    twice the measured difference, `ranking_support`)."""
    photos = sorted((stanford_shared / "sample" / "images").glob("*.jpg"))[::10]
    assert len(photos) >= 40
    models = (responsive_checkpoint, responsive_onnx, exported_pte)
    classifiers = {path.suffix: load_classifier(path) for path in models}
    assert {c.label for c in classifiers.values()} == {"pytorch-eager", "onnx-fp32", "executorch-xnnpack"}
    reference = predict_images(classifiers[".ckpt"], photos, top_k=1000)
    for suffix in (".onnx", ".pte"):
        results = predict_images(classifiers[suffix], photos, top_k=5)
        for want, got in zip(reference, results, strict=True):
            every = {p["class_id"]: p["probability"] for p in want["predictions"]}
            shown = [(p["class_id"], p["probability"]) for p in got["predictions"]]
            assert_ranking_matches(shown, every, f"{suffix} {Path(got['image']).name}")
        assert [r["predictions"][0]["class_id"] for r in results] != [0] * len(results)  # not one answer for all


def test_unknown_or_missing_model_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such model file"):
        load_classifier(tmp_path / "nope.onnx")
    (tmp_path / "model.h5").write_bytes(b"\0" * 8)
    with pytest.raises(UserError, match=r"unknown model type '\.h5'.*\.pte"):
        load_classifier(tmp_path / "model.h5")


def test_predict_tta_flip_on_checkpoint_and_onnx(
    trained_checkpoint: Path, exported_onnx: Path, synthetic_prepared: Path, tmp_path: Path
) -> None:
    """With --tta-flip a photo's probabilities are the mean of the photo's and of its mirror image's."""
    from PIL import Image, ImageOps

    from carspotter.data.prepared import load_prepared

    data = load_prepared(synthetic_prepared)
    images = [data.root / f for f in data.test["fname"][:4]]
    mirrored = []
    for i, src in enumerate(images):
        mirrored.append(tmp_path / f"mirror{i}.png")
        ImageOps.mirror(Image.open(src).convert("RGB")).save(mirrored[-1])
    k = len(data.classes)
    for model in (trained_checkpoint, exported_onnx):
        clf = load_classifier(model)
        plain, mirror = predict_images(clf, images, top_k=k), predict_images(clf, mirrored, top_k=k)
        flip = predict_images(clf, images, top_k=k, tta_flip=True)
        for a, m, f in zip(plain, mirror, flip, strict=True):
            pa = {p["class_name"]: p["probability"] for p in a["predictions"]}
            pm = {p["class_name"]: p["probability"] for p in m["predictions"]}
            for p in f["predictions"]:
                assert p["probability"] == pytest.approx((pa[p["class_name"]] + pm[p["class_name"]]) / 2, abs=1e-4)
        assert any(abs(pa[c] - pm[c]) > 1e-3 for c in pa)  # the mirror image is a different input
