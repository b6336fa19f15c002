"""`carspotter enroll` (issue 31): new classes imprinted from a few photos into an ordinary checkpoint, the old
classifier rows untouched; the result predicts, exports and fine-tunes like any checkpoint; bad input is one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import run_main
from PIL import Image

from carspotter.data.prepared import load_prepared
from carspotter.formats.checkpoint import model_state_dict, read_checkpoint, read_checkpoint_info
from carspotter.inference import load_classifier
from carspotter.inference.predict import predict_images

NEW = "Newmake Roadster Convertible 2024"


def _photos_of(dataset: Path, class_id: int, split: str, n: int, into: Path) -> list[Path]:
    data = load_prepared(dataset)
    frame = data.split(split)
    into.mkdir(parents=True, exist_ok=True)
    out = []
    for fname in frame[frame["class_id"] == class_id]["fname"][:n]:
        out.append(into / Path(fname).name)
        shutil.copyfile(data.root / fname, out[-1])
    return out


def test_enrolled_class_is_added_and_the_old_rows_are_untouched(
    trained_checkpoint: Path, synthetic_prepared: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    photos = tmp_path / "photos"
    _photos_of(synthetic_prepared, 3, "train", 4, photos / NEW)
    (photos / NEW / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "enrolled.ckpt"
    code, stdout, err = run_main(["enroll", str(trained_checkpoint), str(photos), "-o", str(out)], capsys,
                                 monkeypatch)  # fmt: skip
    assert code == 0, err
    assert f"enrolled {NEW} from 4 photo(s)" in stdout and "broken.jpg" in err  # the unreadable one is named
    old, new = read_checkpoint_info(trained_checkpoint), read_checkpoint_info(out)
    assert new.class_names == [*old.class_names, NEW] and new.num_classes == old.num_classes + 1
    assert new.car_names[-1].make == "Newmake" and new.car_names[-1].year == 2024
    before, after = model_state_dict(read_checkpoint(trained_checkpoint)), model_state_dict(read_checkpoint(out))
    weight = next(k for k in after if after[k].ndim == 2 and after[k].shape[0] == new.num_classes)
    assert torch.equal(after[weight][:-1], before[weight])  # old classes: the same rows
    assert all(torch.equal(before[k], after[k]) for k in before if before[k].shape == after[k].shape)
    assert "new rows fitted to " in stdout  # the run's training data is at hand: the imprint is fitted to it
    assert torch.isfinite(after[weight][-1]).all() and after[weight][-1].norm() > 0
    enrolled = read_checkpoint(out)["carspotter"]["enrolled"]
    assert enrolled[0]["class_name"] == NEW and enrolled[0]["photos"] == 4
    assert enrolled[0]["from"]["name"] == trained_checkpoint.name and "optimizer_states" not in read_checkpoint(out)
    # an ordinary checkpoint: predict names the new class for the photos it was imprinted from
    own = [p for p in sorted((photos / NEW).iterdir()) if p.name != "broken.jpg"]
    results = predict_images(load_classifier(out, device="cpu"), own, top_k=len(new.class_names))
    ranks = [[p["class_name"] for p in r["predictions"]].index(NEW) for r in results if "predictions" in r]
    assert np.mean(ranks) < len(new.class_names) / 2, ranks  # its own photos rank it in the upper half


def test_replace_re_imprints_a_class_in_place_and_keeps_the_others(
    trained_checkpoint: Path, synthetic_prepared: Path, tmp_path: Path
) -> None:
    """``--replace``: the class keeps its index, only its row (and bias) change, and the margin scores it as a new
    row against the other classes' reference photos."""
    from carspotter.training.enroll import enroll

    info = read_checkpoint_info(trained_checkpoint)
    name = info.class_names[2]
    _photos_of(synthetic_prepared, 2, "train", 3, tmp_path / "photos" / name)
    report = enroll(trained_checkpoint, tmp_path / "photos", tmp_path / "again.ckpt", replace=True)
    assert report.enrolled[0]["replaced"] and report.num_classes == info.num_classes
    assert read_checkpoint_info(report.out).class_names == info.class_names
    assert report.reference_top1 is not None and report.reference_top1[1] >= report.reference_top1[0] - 0.01 - 1e-9
    before, after = model_state_dict(read_checkpoint(trained_checkpoint)), model_state_dict(read_checkpoint(report.out))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.endswith(("weight", "bias")) for k in changed)
    for k in changed:  # only row 2 of the classifier
        assert torch.equal(torch.cat([before[k][:2], before[k][3:]]), torch.cat([after[k][:2], after[k][3:]]))


def test_an_enrolled_checkpoint_exports_with_the_same_top1(
    trained_checkpoint: Path, synthetic_prepared: Path, tmp_path: Path
) -> None:
    from carspotter.export.onnx import export
    from carspotter.training.enroll import enroll

    photos = tmp_path / "photos"
    _photos_of(synthetic_prepared, 5, "train", 3, photos / NEW)
    out = enroll(trained_checkpoint, photos, tmp_path / "enrolled.ckpt").out
    onnx_path = export(out, tmp_path / "enrolled.onnx", data=synthetic_prepared).path
    held = sorted((photos / NEW).glob("*.jpg"))
    a = predict_images(load_classifier(out, device="cpu"), held, top_k=1)
    b = predict_images(load_classifier(onnx_path), held, top_k=1)
    assert [r["predictions"][0]["class_name"] for r in a] == [r["predictions"][0]["class_name"] for r in b]
    assert load_classifier(onnx_path).class_names[-1] == NEW


def test_without_reference_photos_the_row_is_scaled_like_the_old_rows() -> None:
    from carspotter.training.enroll import imprint

    weight = torch.randn(6, 16, dtype=torch.float64)
    feats = torch.rand(5, 16, dtype=torch.float64)
    row = imprint(feats, weight, 0.0, None)
    assert float(row.norm()) == pytest.approx(float(weight.norm(dim=1).mean()))
    assert float(torch.nn.functional.cosine_similarity(row, feats.mean(0), dim=0)) > 0.95  # toward its photos


def test_the_margin_lets_new_rows_take_at_most_the_allowed_share_of_the_old_classes_photos() -> None:
    """A new row pointed at the middle of all photos would take most of them; the shift lowers its bias until it
    takes no more than ``max_old_loss`` of the reference photos the old classes get right, and no lower."""
    from carspotter.training.enroll import Reference, margin, reference_top1

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    labels = torch.arange(400) % 5
    feats = weight[labels] + 0.8 * torch.randn(400, 8, generator=gen, dtype=torch.float64)
    logits = feats @ weight.T
    ref = Reference(mean=feats.mean(0), top_logit=float(logits.max(1).values.mean()), source="synthetic",
                    feats=feats, logits=logits, labels=labels)  # fmt: skip
    row = (feats.mean(0) / feats.mean(0).norm() * weight.norm(dim=1).mean() * 3).unsqueeze(0)  # greedy newcomer
    bias = torch.tensor([float(logits.max(1).values.max())])
    before = reference_top1(ref)
    assert reference_top1(ref, row, bias) < before - 0.5  # without the margin it takes most of them
    for allowed in (0.0, 0.01, 0.05):
        shift = margin(ref, row, bias, allowed)
        assert shift > 0
        after = reference_top1(ref, row, bias - shift)
        assert before - allowed - 1e-9 <= after <= before
        assert reference_top1(ref, row, bias - shift * 0.9) < after or allowed == 0.0  # the smallest such shift


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(path)


@pytest.mark.parametrize(
    ("layout", "says"),
    [
        ({}, "no class folders"),
        ({"Empty Class 2020/notes.txt": "text"}, "no photos"),
        ({"Only Broken 2020/a.jpg": b"broken"}, "none of its 1 photo(s) could be read"),
        ({"existing": None}, "is one of the model's already; --replace"),
    ],
)
def test_bad_enrolment_input_is_one_line_and_writes_nothing(
    trained_checkpoint: Path, tmp_path: Path, capsys, monkeypatch, layout: dict, says: str
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for rel, content in layout.items():
        if content is None:  # a class the model has
            _image(photos / read_checkpoint_info(trained_checkpoint).class_names[0] / "a.png")
            continue
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        (photos / rel).write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "enrolled.ckpt"
    code, _, err = run_main(["enroll", str(trained_checkpoint), str(photos), "-o", str(out)], capsys, monkeypatch)
    assert code == 2 and says in err and err.count("error:") == 1, err
    assert not out.exists()


def test_enrol_never_writes_over_its_input(trained_checkpoint: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    ckpt = tmp_path / "model.ckpt"
    shutil.copyfile(trained_checkpoint, ckpt)
    _image(tmp_path / "photos" / NEW / "a.png")
    before = ckpt.read_bytes()
    code, _, err = run_main(["enroll", str(ckpt), str(tmp_path / "photos"), "-o", str(ckpt), "--overwrite"], capsys,
                            monkeypatch)  # fmt: skip
    assert code == 2 and "write the enrolled model to another file" in err
    assert ckpt.read_bytes() == before


@pytest.mark.slow
def test_enrol_new_classes_into_a_trained_model_then_fine_tune(
    learnable_prepared: Path, tmp_path: Path, one_cpu_thread
) -> None:
    """Train on 8 of 10 synthetic classes, enrol the other 2 from 10 photos each: their held-back test photos are
    recognised well above chance, the 8 old classes keep their accuracy within a few points, and training from the
    enrolled checkpoint (`model.pretrained`) works."""
    from carspotter.config import load_config
    from carspotter.evaluation.metrics import evaluate_on_dataset
    from carspotter.training.enroll import enroll
    from carspotter.training.run import train

    data = load_prepared(learnable_prepared)
    raw = tmp_path / "raw"
    for split in ("train", "test"):
        frame = data.split(split)
        for fname, cid in zip(frame["fname"], frame["class_id"], strict=True):
            if cid < 8:
                target = raw / split / data.classes[cid] / Path(fname).name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(data.root / fname, target)
    code, _, err = _run(["prepare", str(raw), str(tmp_path / "eight"), "--layout", "folders"])
    assert code == 0, err
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    sets = [f"data.path={tmp_path / 'eight'}", f"output.runs_dir={tmp_path / 'runs'}", "data.num_workers=0",
            "data.image_size=[48,48]"]  # fmt: skip
    base = train(load_config(demo, [*sets, "trainer.max_epochs=8", "scheduler.params.T_max=8"]), progress=False)

    photos = tmp_path / "photos"
    for cid in (8, 9):
        _photos_of(learnable_prepared, cid, "train", 10, photos / data.classes[cid])
    enrolled = enroll(base.best_ckpt, photos, tmp_path / "enrolled.ckpt").out
    classifier = load_classifier(enrolled, device="cpu")
    held = [(data.root / f, data.classes[c]) for f, c in zip(data.test["fname"], data.test["class_id"], strict=True)
            if c >= 8]  # fmt: skip
    preds = predict_images(classifier, [p for p, _ in held], top_k=1)
    new_top1 = np.mean([r["predictions"][0]["class_name"] == name for r, (_, name) in zip(preds, held, strict=True)])
    old_before = evaluate_on_dataset(base.best_ckpt, tmp_path / "eight", progress=False).top1
    old_after = evaluate_on_dataset(enrolled, tmp_path / "eight", progress=False).top1  # matched by name
    print(f"\nenrolled classes: top-1 {new_top1:.2f} (chance 0.10); old classes {old_before:.2f} -> {old_after:.2f}")
    assert new_top1 >= 0.3
    assert old_after >= old_before - 0.05

    tuned = train(load_config(demo, [*sets, "trainer.max_epochs=1", f"model.pretrained={enrolled}"]), progress=False)
    assert tuned.summary["test_top1"] is not None


def _run(args: list[str]) -> tuple[int, str, str]:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "carspotter.cli", *args], capture_output=True, text=True)
    return done.returncode, done.stdout, done.stderr
