"""Answers a person can trust (issue 30): the make and model summed from the classes, a temperature fitted on held-out
photos and carried by checkpoints and exports, and "not sure" below a threshold, in predict, evaluate, the API."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from cli_support import run_main
from serve_support import running_server

from carspotter.data.prepared import load_prepared
from carspotter.errors import UserError
from carspotter.evaluation.calibration import (
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    grouped_top1,
    threshold_for,
    trust_scores,
)
from carspotter.formats.calibration import UNCALIBRATED, Calibration
from carspotter.formats.car_names import car_names
from carspotter.formats.checkpoint import read_checkpoint, read_checkpoint_info, write_calibration
from carspotter.formats.run_dir import SUMMARY_FILE
from carspotter.inference import load_classifier
from carspotter.inference.answers import answer
from carspotter.inference.predict import predict_images
from carspotter.preprocessing import softmax

NAMES = ["Audi S4 Sedan 2007", "Audi S4 Sedan 2012", "Audi TT Coupe 2011", "BMW M3 Coupe 2012"]


def overconfident(n: int = 3000, classes: int = 8, temperature: float = 2.5, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / temperature): the right temperature is known."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, classes))
    probs = softmax(logits / temperature)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return logits.astype(np.float32), labels


def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_with() -> None:
    logits, labels = overconfident()
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.1)
    cal = fit_calibration(logits, labels, "held-out photos")
    assert cal.ece_after < cal.ece_before / 2, cal
    assert cal.fitted_on == "held-out photos, 3000 photos"


def test_the_threshold_is_the_lowest_at_which_answers_are_ninety_percent_right() -> None:
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    labels = np.array([0, 0, 1, 0, 0])  # the third most confident is wrong
    # answering the top 2: 100% right; top 3: 67%; top 5: 80%; so 0.9 is the lowest threshold reaching 90%
    assert threshold_for(probs, labels, 0.9) == pytest.approx(0.9)
    assert threshold_for(probs, labels, 0.8) == pytest.approx(0.6)
    assert threshold_for(probs, np.array([1, 1, 0, 1, 1]), 0.9) == 1.0  # never reached: every answer unsure


def test_make_and_model_top1_sum_their_classes() -> None:
    classes = car_names(NAMES)
    probs = np.array([[0.3, 0.3, 0.0, 0.4]])  # the class is BMW, but Audi S4 Sedan (any year) holds 0.6
    assert grouped_top1(probs, np.array([0]), [c.model for c in classes]) == 1.0
    assert grouped_top1(probs, np.array([0]), [c.make for c in classes]) == 1.0
    assert grouped_top1(probs, np.array([3]), [c.make for c in classes]) == 0.0
    scores = trust_scores(np.log(probs + 1e-9), np.array([1]), classes, Calibration(min_confidence=0.5))
    assert scores["model_top1"] == 1.0 and scores["balanced_top1"] == 0.0
    assert scores["coverage"] == 0.0 and scores["answered_top1"] is None


@pytest.mark.parametrize(
    ("probs", "unsure", "text"),
    [
        ([0.05, 0.9, 0.03, 0.02], False, "Audi S4 Sedan 2012"),
        ([0.35, 0.4, 0.05, 0.2], True, "Audi S4 Sedan — year not sure"),
        ([0.3, 0.2, 0.3, 0.2], True, "an Audi — model not sure"),
        (
            [0.25, 0.1, 0.2, 0.45],
            True,
            "not sure; most likely BMW M3 Coupe 2012 (45%), Audi S4 Sedan 2007 (25%), Audi TT Coupe 2011 (20%)",
        ),
    ],
)
def test_an_unsure_answer_names_the_level_that_is_sure(probs: list[float], unsure: bool, text: str) -> None:
    got = answer(np.array(probs), NAMES, car_names(NAMES), top_k=2, min_confidence=0.6)
    assert got["unsure"] is unsure and got["answer"] == text
    assert len(got["predictions"]) == 2
    assert got["make"]["name"] == ("Audi" if probs[3] < 0.5 else "BMW")


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), float("inf"), "2", True])
def test_a_tampered_temperature_is_refused(temperature) -> None:
    with pytest.raises(UserError, match="temperature .* is not a positive finite number"):
        Calibration.from_dict({"temperature": temperature}, "model.onnx")
    with pytest.raises(UserError, match="between 0 and 1"):
        Calibration.from_dict({"temperature": 1.0, "min_confidence": 1.5}, "model.onnx")


def test_training_fits_the_temperature_on_validation_photos_and_stores_it(
    trained_checkpoint: Path, synthetic_prepared: Path
) -> None:
    info = read_checkpoint_info(trained_checkpoint)
    cal = info.calibration
    assert (
        cal.fitted
        and cal.fitted_on.startswith(f"validation split of {synthetic_prepared.name}, ")
        and cal.temperature > 0
    )
    assert 0.0 <= cal.min_confidence <= 1.0
    summary = json.loads((trained_checkpoint.parent / SUMMARY_FILE).read_text())
    assert summary["calibration"] == cal.to_dict()
    assert info.classes == load_prepared(synthetic_prepared).car_names  # the columns travel with the model
    classifier = load_classifier(trained_checkpoint, device="cpu")
    assert classifier.calibration == cal


def test_predict_gives_make_model_and_unsure_and_honours_min_confidence(
    trained_checkpoint: Path, synthetic_prepared: Path, capsys, monkeypatch
) -> None:
    data = load_prepared(synthetic_prepared)
    photos = [str(data.root / f) for f in data.test["fname"][:3]]
    code, out, err = run_main(["predict", str(trained_checkpoint), *photos, "--json"], capsys, monkeypatch)
    assert code == 0, err
    results = json.loads(out)
    threshold = read_checkpoint_info(trained_checkpoint).calibration.min_confidence
    for r in results:
        assert set(r) >= {"predictions", "make", "model", "unsure", "answer"}
        assert r["unsure"] == (r["predictions"][0]["probability"] < threshold)
        assert r["make"]["probability"] >= r["predictions"][0]["probability"] - 1e-9  # a make holds its classes
    code, out, err = run_main(["predict", str(trained_checkpoint), *photos, "--json", "--min-confidence", "1.0"],
                              capsys, monkeypatch)  # fmt: skip
    assert code == 0 and all(r["unsure"] for r in json.loads(out))
    code, out, err = run_main(["predict", str(trained_checkpoint), *photos, "--min-confidence", "1.5"],
                              capsys, monkeypatch)  # fmt: skip
    assert code == 2 and out == "" and err.startswith("error:") and len(err.strip().splitlines()) == 1, err


def test_the_temperature_changes_the_probabilities_and_never_the_ranking(
    trained_checkpoint: Path, synthetic_prepared: Path, tmp_path: Path
) -> None:
    ckpt = tmp_path / "hot.ckpt"
    shutil.copyfile(trained_checkpoint, ckpt)
    write_calibration(ckpt, Calibration(temperature=3.0, min_confidence=0.2, fitted_on="test"))
    data = load_prepared(synthetic_prepared)
    photos = [data.root / f for f in data.test["fname"][:3]]
    hot = predict_images(load_classifier(ckpt, device="cpu"), photos, top_k=3)
    write_calibration(ckpt, UNCALIBRATED)
    cold = predict_images(load_classifier(ckpt, device="cpu"), photos, top_k=3)
    for h, c in zip(hot, cold, strict=True):
        assert [p["class_id"] for p in h["predictions"]] == [p["class_id"] for p in c["predictions"]]
        assert h["predictions"][0]["probability"] < c["predictions"][0]["probability"]


def test_a_checkpoint_from_before_calibration_loads_with_temperature_one(
    trained_checkpoint: Path, tmp_path: Path, caplog
) -> None:
    ckpt = read_checkpoint(trained_checkpoint)
    del ckpt["carspotter"]["calibration"], ckpt["carspotter"]["classes"]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    with caplog.at_level("INFO"):
        first, second = load_classifier(old, device="cpu"), load_classifier(old, device="cpu")
    assert first.calibration == UNCALIBRATED and second.calibration.temperature == 1.0
    assert [r.message for r in caplog.records].count(
        f"{old}: no calibration stored; probabilities use temperature 1 (`carspotter calibrate` fits one)"
    ) == 1  # said once
    assert first.classes == car_names(first.class_names)


def test_calibrate_refits_an_old_checkpoint_on_its_runs_validation_photos(
    trained_checkpoint: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_checkpoint.parent, run)
    write_calibration(run / "best.ckpt", UNCALIBRATED)
    code, out, err = run_main(["calibrate", str(run), "--json"], capsys, monkeypatch)
    assert code == 0, err
    stored = read_checkpoint_info(run / "best.ckpt").calibration
    assert json.loads(out) == stored.to_dict()
    assert stored == read_checkpoint_info(trained_checkpoint).calibration  # the same photos, the same fit
    code, out, err = run_main(["calibrate", str(run), "--split", "nope"], capsys, monkeypatch)
    assert code == 2 and "--split 'nope'" in err


def test_evaluate_json_reports_levels_balance_and_calibration(
    trained_checkpoint: Path, synthetic_prepared: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    code, out, err = run_main(["evaluate", str(trained_checkpoint), "--data", str(synthetic_prepared), "--json",
                               "--out", str(tmp_path / "r")], capsys, monkeypatch)  # fmt: skip
    assert code == 0, err
    m = json.loads(out)
    for key in ("make_top1", "model_top1", "balanced_top1", "ece", "ece_uncalibrated", "coverage", "answered_top1"):
        assert key in m, key
    assert m["top1"] <= m["model_top1"] <= m["make_top1"] <= 1.0
    assert 0.0 <= m["ece"] <= 1.0 and 0.0 <= m["ece_uncalibrated"] <= 1.0
    assert m["temperature"] == read_checkpoint_info(trained_checkpoint).calibration.temperature
    assert (tmp_path / "r" / "calibration.png").stat().st_size > 10_000


def test_exports_carry_the_calibration_and_apply_it(
    trained_checkpoint: Path, exported_onnx: Path, synthetic_prepared: Path
) -> None:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(exported_onnx), load_external_data=False).metadata_props}
    cal = read_checkpoint_info(trained_checkpoint).calibration
    assert Calibration.from_dict(json.loads(props["calibration"]), "export") == cal
    assert len(json.loads(props["classes"])) == len(json.loads(props["class_names"]))
    data = load_prepared(synthetic_prepared)
    photos = [data.root / f for f in data.test["fname"][:4]]
    onnx_probs = load_classifier(exported_onnx).predict([_rgb(p) for p in photos])
    torch_probs = load_classifier(trained_checkpoint, device="cpu").predict([_rgb(p) for p in photos])
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4)
    if not math.isclose(cal.temperature, 1.0, rel_tol=1e-3):  # the stored temperature is applied, not softmax alone
        raw = softmax(load_classifier(exported_onnx).image_logits([_rgb(p) for p in photos]))
        assert not np.allclose(onnx_probs, raw, atol=1e-4)


def test_the_api_answers_with_make_model_and_unsure(exported_onnx: Path, synthetic_prepared: Path) -> None:
    from carspotter.serve.app import create_app

    photo = load_prepared(synthetic_prepared).root / load_prepared(synthetic_prepared).test["fname"].iloc[0]
    files = {"file": (photo.name, photo.read_bytes(), "image/jpeg")}
    with running_server(create_app(exported_onnx)) as url:
        got = httpx.post(f"{url}/api/predict", files=files, timeout=30).json()
        assert set(got) == {"predictions", "make", "model", "unsure", "answer"}
        sure = httpx.post(f"{url}/api/predict?min_confidence=0", files=files, timeout=30).json()
        unsure = httpx.post(f"{url}/api/predict?min_confidence=1", files=files, timeout=30).json()
        assert sure["unsure"] is False and unsure["unsure"] is True
        bad = httpx.post(f"{url}/api/predict?min_confidence=2", files=files, timeout=30)
        assert bad.status_code == 422 and "min_confidence" in bad.json()["error"]


def test_prepared_classes_carry_make_model_and_year(synthetic_prepared: Path) -> None:
    table = pd.read_csv(synthetic_prepared / "classes.csv", keep_default_na=False)
    assert list(table.columns) == ["class_id", "class_name", "make", "model", "year"]
    data = load_prepared(synthetic_prepared)
    assert data.car_names == car_names(data.classes, table.to_dict("records"))


def _folders(root: Path, classes: list[str]) -> Path:
    from PIL import Image

    for i, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for j in range(4):
            Image.new("RGB", (40, 30), (40 * i, 20 * j, 90)).save(root / name / f"{j}.jpg")
    return root


def test_a_users_classes_csv_gives_the_columns(tmp_path: Path, capsys, monkeypatch) -> None:
    raw = _folders(tmp_path / "raw", ["my red car", "neighbour van"])
    (raw / "classes.csv").write_text(
        "class_name,make,model,year\nmy red car,Volvo,Volvo 240 Estate,1989\nneighbour van,Ford,Ford Transit,\n"
    )
    code, _, err = run_main(["prepare", str(raw), str(tmp_path / "out"), "--layout", "folders"], capsys, monkeypatch)
    assert code == 0, err
    levels = load_prepared(tmp_path / "out").car_names
    assert [(c.make, c.model, c.year) for c in levels] == [("Volvo", "Volvo 240 Estate", 1989),
                                                          ("Ford", "Ford Transit", None)]  # fmt: skip


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ("class_name,make,model,year\nmy red car,Volvo,240,1989\n", "no row for 1 class(es), e.g. 'neighbour van'"),
        (
            "class_name,make,model,year\nmy red car,Volvo,240,1989\nneighbour van,Ford,T,\nghost,A,B,\n",
            "1 row(s) for classes the dataset does not have, e.g. 'ghost'",
        ),
        ("class_name,make,model\nmy red car,Volvo,240\nneighbour van,Ford,T\n", "missing year"),
        (
            "class_name,make,model,year,colour\nmy red car,Volvo,240,1989,red\nneighbour van,Ford,T,,white\n",
            "unknown colour",
        ),
        ("class_name,make,model,year\nmy red car,Volvo,240,soon\nneighbour van,Ford,T,\n", "is not a year"),
    ],
)
def test_a_wrong_classes_csv_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys, monkeypatch, table: str, says: str
) -> None:
    raw = _folders(tmp_path / "raw", ["my red car", "neighbour van"])
    (raw / "classes.csv").write_text(table)
    code, out, err = run_main(["prepare", str(raw), str(tmp_path / "out"), "--layout", "folders"], capsys, monkeypatch)
    last = err.strip().splitlines()[-1]  # after prepare's "RAW: folders layout" line
    assert code == 2 and last.startswith("error:") and says in last and err.count("error:") == 1, err
    assert not (tmp_path / "out" / "manifest.json").exists()


def _rgb(path: Path):
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def test_expected_calibration_error_is_zero_for_a_perfectly_calibrated_model() -> None:
    probs = np.array([[1.0, 0.0]] * 10)
    assert expected_calibration_error(probs, np.zeros(10, dtype=int)) == pytest.approx(0.0)
