"""`carspotter.inference`: one loader for every format, the same answers from each."""

from __future__ import annotations

from pathlib import Path

import pytest
from ranking_support import assert_ranking_matches

from carspotter.errors import UserError
from carspotter.inference import load_classifier
from carspotter.predict import predict_images

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.mark.slow
@pytest.mark.realdata
def test_checkpoint_onnx_and_pte_give_the_same_top5_on_real_photos(
    stanford_shared: Path, responsive_checkpoint: Path, exported_pte: Path, synthetic_prepared: Path, tmp_path: Path
) -> None:
    """The same model as a `.ckpt`, its `.onnx` and its `.pte`, each through `load_classifier` and `predict`: the
    same five classes in the same order on real photos (a swap only between classes whose probabilities tie within
    twice the measured difference, `ranking_support`)."""
    from carspotter.export.onnx import export as export_onnx

    onnx_path = tmp_path / "model.onnx"
    export_onnx(responsive_checkpoint, onnx_path, data=synthetic_prepared)
    photos = sorted((stanford_shared / "sample" / "images").glob("*.jpg"))[::10]
    assert len(photos) >= 40
    classifiers = {path.suffix: load_classifier(path) for path in (responsive_checkpoint, onnx_path, exported_pte)}
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
