"""Users' own photos in one folder per class → the prepared format; `stats` against a NumPy reference."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from carspotter.cli import app
from carspotter.data.folders import read_folders
from carspotter.data.prepare import prepare
from carspotter.data.prepared import load_prepared
from carspotter.data.stats import RunningMoments, compute_stats, plot_stats
from carspotter.errors import UserError

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def write_image(path: Path, seed: int, size: tuple[int, int] = (36, 24), fmt: str | None = None) -> Path:
    """A small image of random pixels (distinct for each seed, so no two files are identical by accident)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, format=fmt)
    return path


def class_folders(root: Path, classes: dict[str, int], seed: int = 0) -> Path:
    """``root/<class>/`` with the given number of images each; every other image one folder deeper."""
    for k, (name, n) in enumerate(classes.items()):
        for i in range(n):
            sub = Path("day 2") / "raw" if i % 2 else Path()
            write_image(root / name / sub / f"img_{i}.jpg", seed=seed * 10_000 + k * 100 + i)
    return root


def test_class_folders_become_a_stratified_seeded_split(tmp_path: Path) -> None:
    raw = class_folders(tmp_path / "raw", {"Volvo XC90 2019": 10, "Audi A4 2012": 10, "Fiat 500 2010": 5})
    report = prepare(raw, tmp_path / "out", layout="folders", test_fraction=0.2, seed=3)
    data = load_prepared(tmp_path / "out")

    assert data.classes == ["Audi A4 2012", "Fiat 500 2010", "Volvo XC90 2019"]  # folder names, sorted
    assert report.layout == "folders" and report.counts == {"train": 20, "test": 5}
    test_counts = data.test["class_name"].value_counts().to_dict()
    assert test_counts == {"Audi A4 2012": 2, "Volvo XC90 2019": 2, "Fiat 500 2010": 1}
    assert not report.warnings and not report.unreadable
    # Nested files keep their place under the class; the box is the whole image; sizes are read.
    nested = data.train[data.train["fname"].str.contains("day 2/raw/")]
    assert len(nested) > 0 and (data.train["fname"].str.startswith("train/")).all()
    row = data.train.iloc[0]
    assert (row.bbox_x1, row.bbox_y1, row.bbox_x2, row.bbox_y2) == (0, 0, 36, 24) == (0, 0, row.width, row.height)
    assert (tmp_path / "out" / row.fname).read_bytes() == (raw / row.fname.removeprefix("train/")).read_bytes()
    assert (raw / "Audi A4 2012").is_dir()  # copied, not moved

    # The same seed draws the same split; another seed another one.
    prepare(raw, tmp_path / "again", layout="folders", test_fraction=0.2, seed=3)
    prepare(raw, tmp_path / "other", layout="folders", test_fraction=0.2, seed=4)
    assert load_prepared(tmp_path / "again").test["fname"].tolist() == data.test["fname"].tolist()
    assert load_prepared(tmp_path / "other").test["fname"].tolist() != data.test["fname"].tolist()


def test_a_split_made_by_the_user_is_kept(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    class_folders(raw / "train", {"Kia Rio": 4, "Seat Ibiza": 3}, seed=1)
    class_folders(raw / "test", {"Kia Rio": 2, "Seat Ibiza": 1}, seed=2)
    report = prepare(raw, tmp_path / "out", layout="folders")
    data = load_prepared(tmp_path / "out")
    assert data.classes == ["Kia Rio", "Seat Ibiza"]
    assert report.counts == {"train": 7, "test": 3}
    assert sorted(data.test["fname"]) == [
        "test/Kia Rio/day 2/raw/img_1.jpg",
        "test/Kia Rio/img_0.jpg",
        "test/Seat Ibiza/img_0.jpg",
    ]
    assert data.manifest["source"]["folders"]["presplit"] is True
    assert not any("--test-fraction" in line for line in report.warnings)


def test_test_fraction_with_a_user_split_says_it_was_not_used(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    class_folders(raw / "train", {"Kia Rio": 3, "Seat Ibiza": 3}, seed=1)
    class_folders(raw / "test", {"Kia Rio": 1, "Seat Ibiza": 1}, seed=2)
    report = prepare(raw, tmp_path / "out", layout="folders", test_fraction=0.5)
    assert report.counts == {"train": 6, "test": 2}
    assert any("--test-fraction and --seed were not used" in line for line in report.warnings)


def test_problems_are_skipped_and_reported(tmp_path: Path) -> None:
    raw = class_folders(tmp_path / "raw", {"Audi A4 2012": 6, "BMW M3 2010": 6})
    (raw / "Audi A4 2012" / "notes.txt").write_text("bought in 2019")
    (raw / "Audi A4 2012" / ".DS_Store").write_bytes(b"\0\0")  # hidden: ignored silently
    (raw / "README.md").write_text("my cars")  # not in a class folder
    good = (raw / "BMW M3 2010" / "img_0.jpg").read_bytes()
    (raw / "BMW M3 2010" / "broken.jpg").write_bytes(good[: len(good) // 2])  # a truncated JPEG
    shutil.copy(raw / "Audi A4 2012" / "img_0.jpg", raw / "Audi A4 2012" / "img_0 (copy).jpg")
    write_image(raw / "Lada Niva 1990" / "only.png", seed=99)  # a class with one image
    (raw / "Empty Class").mkdir()

    report = prepare(raw, tmp_path / "out", layout="folders", test_fraction=0.5, seed=0)
    data = load_prepared(tmp_path / "out")
    folders = data.manifest["source"]["folders"]

    assert folders["skipped"] == ["README.md", "Audi A4 2012/notes.txt"]
    assert report.unreadable == ["BMW M3 2010/broken.jpg"] == data.manifest["unreadable"]
    assert folders["empty_classes"] == ["Empty Class"] and "Empty Class" not in data.classes
    assert folders["too_few"] == {"Lada Niva 1990": 1}
    assert (data.train["class_name"] == "Lada Niva 1990").sum() == 1
    assert (data.test["class_name"] == "Lada Niva 1990").sum() == 0
    assert folders["duplicate_groups"] == [["Audi A4 2012/img_0 (copy).jpg", "Audi A4 2012/img_0.jpg"]]
    pair = {"Audi A4 2012/img_0.jpg", "Audi A4 2012/img_0 (copy).jpg"}
    sides = [{f.split("/", 1)[1] for f in data.split(s)["fname"]} & pair for s in ("train", "test")]
    assert sorted(map(len, sides)) == [0, 2]  # both copies on one side, never one in train and one in test
    text = "\n".join(report.warnings)
    for needle in ("README.md", "notes.txt", "Empty Class", "img_0 (copy).jpg", "'Lada Niva 1990' (1)", "at least 2"):
        assert needle in text, needle
    assert ".DS_Store" not in text + json.dumps(folders)


def test_symlinks_leading_outside_raw_are_skipped_and_listed(tmp_path: Path) -> None:
    raw = class_folders(tmp_path / "raw", {"Audi A4 2012": 4, "BMW M3 2010": 4})
    elsewhere = class_folders(tmp_path / "elsewhere", {"Private": 3}, seed=7)
    (raw / "Audi A4 2012" / "stolen.jpg").symlink_to(elsewhere / "Private" / "img_0.jpg")
    (raw / "Private").symlink_to(elsewhere / "Private", target_is_directory=True)
    (raw / "BMW M3 2010" / "alias.jpg").symlink_to(raw / "Audi A4 2012" / "img_0.jpg")  # inside RAW: kept
    before = {p: p.read_bytes() for p in elsewhere.rglob("*") if p.is_file()}

    report = prepare(raw, tmp_path / "out", layout="folders")
    data = load_prepared(tmp_path / "out")
    outside = data.manifest["source"]["folders"]["outside"]
    assert outside == ["Audi A4 2012/stolen.jpg", "Private"]
    assert "Private" not in data.classes and any("stolen.jpg" in w and "outside" in w for w in report.warnings)
    names = set(data.train["fname"]) | set(data.test["fname"])
    assert "BMW M3 2010/alias.jpg" in {n.split("/", 1)[1] for n in names}
    assert {p: p.read_bytes() for p in elsewhere.rglob("*") if p.is_file()} == before
    prepared = {p.read_bytes() for p in (tmp_path / "out").rglob("*.jpg")}
    assert not prepared & set(before.values())  # no outside photo was copied in


def test_duplicate_across_a_user_split_stays_in_train_only(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    class_folders(raw / "train", {"Kia Rio": 3}, seed=1)
    class_folders(raw / "test", {"Kia Rio": 2}, seed=2)
    shutil.copy(raw / "train" / "Kia Rio" / "img_0.jpg", raw / "test" / "Kia Rio" / "same_as_train.jpg")
    report = prepare(raw, tmp_path / "out", layout="folders")
    data = load_prepared(tmp_path / "out")
    assert "test/Kia Rio/same_as_train.jpg" not in set(data.test["fname"])
    assert data.manifest["source"]["folders"]["dropped_duplicates"] == [
        "test/Kia Rio/same_as_train.jpg (= train/Kia Rio/img_0.jpg)"
    ]
    assert report.counts == {"train": 3, "test": 2}
    assert any("identical to a training image" in w for w in report.warnings)


def test_identical_files_never_straddle_the_split_whatever_the_seed(tmp_path: Path) -> None:
    raw = class_folders(tmp_path / "raw", {"A": 6, "B": 6})
    copies = {f"A/copy_{i}.jpg": f"A/img_{2 * i}.jpg" for i in range(3)}
    for copy, original in copies.items():
        shutil.copy(raw / original, raw / copy)
    for seed in range(8):
        split_of = {img.name: img.split for img in read_folders(raw, test_fraction=0.4, seed=seed).images}
        assert all(split_of[copy] == split_of[original] for copy, original in copies.items()), seed
        assert {"train", "test"} <= set(split_of.values())


def test_not_a_folder_dataset_is_one_clear_error(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "docs").mkdir(parents=True)
    (raw / "docs" / "a.txt").write_text("x")
    with pytest.raises(UserError, match="class folders with images"):
        prepare(raw, tmp_path / "out", layout="folders")
    with pytest.raises(UserError, match="--test-fraction"):
        read_folders(class_folders(tmp_path / "ok", {"A": 2}), test_fraction=1.0)
    (tmp_path / "ok" / "train").mkdir()
    (tmp_path / "ok" / "test").mkdir()
    with pytest.raises(UserError, match="inside train/ and test/"):
        prepare(tmp_path / "ok", tmp_path / "out2", layout="folders")


def test_auto_detection_never_takes_a_folder_of_photos_for_stanford(tmp_path: Path) -> None:
    raw = class_folders(tmp_path / "raw", {"A": 2})
    with pytest.raises(UserError, match="--layout folders"):
        prepare(raw, tmp_path / "out")


# ------------------------------------------------------------------------------------------------------- stats


def numpy_reference(data_root: Path, fnames: list[str], size: int, grayscale: bool = False) -> tuple[np.ndarray, ...]:
    """All resized pixels in memory at once, the obvious way (and the thesis's resize: PIL bilinear, no crop)."""
    arrays = []
    for f in fnames:
        img = Image.open(data_root / f).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        if grayscale:
            img = img.convert("L")
        arr = np.asarray(img, dtype=np.float64) / 255.0
        arrays.append(arr.reshape(-1, 1 if grayscale else 3))
    pixels = np.concatenate(arrays)
    return pixels.mean(axis=0), pixels.std(axis=0)


def test_stats_match_numpy_on_the_training_split(synthetic_prepared: Path, tmp_path: Path) -> None:
    data = load_prepared(synthetic_prepared)
    stats = compute_stats(synthetic_prepared, image_size=40, progress=False)
    mean, std = numpy_reference(data.root, data.train["fname"].tolist(), 40)
    assert np.abs(np.array(stats.mean) - mean).max() < 1e-4
    assert np.abs(np.array(stats.std) - std).max() < 1e-4
    assert stats.num_images == len(data.train) and stats.num_pixels == len(data.train) * 40 * 40
    # Not the thesis's mistake: the mean of per-image stds is a different (smaller) number.
    per_image = np.mean([numpy_reference(data.root, [f], 40)[1] for f in data.train["fname"][:20]], axis=0)
    assert np.all(per_image < np.array(stats.std))

    gray = compute_stats(synthetic_prepared, image_size=(24, 32), grayscale=True, progress=False)
    assert len(gray.mean) == 1 and gray.image_size == (24, 32)

    snippet = stats.yaml_snippet()
    import yaml

    pasted = yaml.safe_load(snippet)["data"]
    assert pasted["mean"] == pytest.approx(list(stats.mean), abs=1e-6)
    assert pasted["std"] == pytest.approx(list(stats.std), abs=1e-6)
    png = plot_stats(stats, tmp_path / "stats.png")
    assert png.stat().st_size > 5_000 and Image.open(png).format == "PNG"


def test_running_moments_are_exact_in_any_chunking() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.random((10_000, 3)) * 0.1 + 0.7  # a narrow spread far from zero: where naive sums lose digits
    m = RunningMoments(3)
    for chunk in np.array_split(pixels, [1, 2, 500, 501, 7_000]):
        m.update(chunk)
    assert np.allclose(m.mean, pixels.mean(axis=0), rtol=0, atol=1e-12)
    assert np.allclose(m.std, pixels.std(axis=0), rtol=0, atol=1e-12)


def test_stats_and_prepare_commands(tmp_path: Path) -> None:
    raw = class_folders(tmp_path / "raw", {"Audi A4 2012": 4, "BMW M3 2010": 4})
    (raw / "Audi A4 2012" / "notes.txt").write_text("x")
    out = tmp_path / "prepared"
    runner = CliRunner()
    result = runner.invoke(
        app, ["prepare", str(raw), str(out), "--layout", "folders", "--test-fraction", "0.25", "--seed", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "2 classes" in result.output and "notes.txt" in result.output
    assert load_prepared(out).manifest["source"]["folders"]["seed"] == 1

    result = runner.invoke(app, ["stats", str(out), "--image-size", "32", "--plot", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    import yaml

    snippet = yaml.safe_load(result.output[result.output.index("data:") :])
    data = load_prepared(out)
    mean, std = numpy_reference(data.root, data.train["fname"].tolist(), 32)
    assert snippet["data"]["mean"] == pytest.approx(mean.tolist(), abs=1e-4)
    assert snippet["data"]["std"] == pytest.approx(std.tolist(), abs=1e-4)
    assert (tmp_path / "s.png").is_file()


def test_stats_prints_its_results_even_when_no_plot_can_be_written(synthetic_prepared: Path, tmp_path: Path) -> None:
    """Issue 35, item 6: on a read-only dataset the default plot (beside it) cannot be written; the mean and std,
    computed first, are printed all the same (the blocked spot here: a folder of the plot's name)."""
    prepared = Path(shutil.copytree(synthetic_prepared, tmp_path / "prepared"))
    (tmp_path / "prepared-stats.png").mkdir()
    result = CliRunner().invoke(app, ["stats", str(prepared), "--image-size", "16"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["data"]["mean"]  # stdout: the snippet alone, ready to paste
    assert "warning: no plot written" in result.stderr and "prepared-stats.png: is a folder" in result.stderr
    assert result.stdout.startswith("# ") and "warning" not in result.stdout


# ------------------------------------------------------------------------------------------------- real photos

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "stanford_cars" / "sample"


@pytest.fixture(scope="module")
def real_photo_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Stanford Cars sample photos sorted into one folder per class, as a user would (never committed)."""
    if not (SAMPLE / "labels.csv").is_file():
        pytest.skip(f"{SAMPLE} not present (real photos are not part of the repository)")
    import pandas as pd

    raw = tmp_path_factory.mktemp("real") / "my_photos"
    for row in pd.read_csv(SAMPLE / "labels.csv").itertuples():
        dest = raw / row.class_name / row.fname
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE / "images" / row.fname, dest)
    return raw


@pytest.mark.realdata
def test_real_photos_in_class_folders_prepare(real_photo_folders: Path, tmp_path: Path) -> None:
    import pandas as pd

    labels = pd.read_csv(SAMPLE / "labels.csv")
    report = prepare(real_photo_folders, tmp_path / "prepared", layout="folders", test_fraction=0.2, seed=0)
    data = load_prepared(tmp_path / "prepared")
    assert data.classes == sorted(labels["class_name"].unique())
    assert report.counts["train"] + report.counts["test"] == len(labels) and not report.unreadable
    per_class = data.test["class_name"].value_counts()
    assert (
        set(per_class.index) == set(data.classes)
        and per_class.min() >= 0.15 * labels["class_name"].value_counts().min()
    )


@pytest.mark.slow
@pytest.mark.realdata
def test_real_photos_prepare_train_evaluate_predict(real_photo_folders: Path, tmp_path: Path) -> None:
    """The acceptance path on real photos, through the CLI: prepare → train → evaluate → predict with folder names."""
    runner = CliRunner()
    prepared, runs = tmp_path / "prepared", tmp_path / "runs"
    result = runner.invoke(app, ["prepare", str(real_photo_folders), str(prepared), "--layout", "folders"])
    assert result.exit_code == 0, result.output
    config = Path(__file__).resolve().parents[1] / "configs" / "finetune_folders.yaml"
    overrides = [
        f"data.path={prepared}",
        f"output.runs_dir={runs}",
        "data.num_workers=0",
        "data.image_size=[64,64]",
        "model.pretrained=null",
        "model.name=ghostnet_thesis",
        "model.args={hidden_channels: 128, drop_rate: 0.2}",
        "trainer.freeze_backbone_epochs=0",
        "optimizer.backbone_lr=null",
        "optimizer.params.lr=0.003",
        "trainer.max_epochs=12",
        "scheduler.params.T_max=12",
        "trainer.early_stopping=null",
        "output.run_name=real",
    ]
    result = runner.invoke(app, ["train", "-c", str(config), *[a for o in overrides for a in ("--set", o)]])
    assert result.exit_code == 0, result.output
    ckpt = runs / "real" / "best.ckpt"

    result = runner.invoke(app, ["evaluate", str(ckpt), "--data", str(prepared), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output.strip().splitlines()[-1])
    data = load_prepared(prepared)
    chance = 1 / data.num_classes
    print(f"real photos, {data.num_classes} classes: test top-1 {scores['top1']:.3f} (chance {chance:.3f})")
    # Seeded, yet not the same on every CPU: 3.3x chance on an Intel Xeon (30 Nov 2026), 2.5x on an AMD EPYC (2 Dec
    # 2026). 2x chance on ~80 test photos is far beyond what an untrained or broken model scores by luck.
    assert scores["top1"] >= 2 * chance

    photos = [str(prepared / f) for f in data.test["fname"][:5]]
    result = runner.invoke(app, ["predict", str(ckpt), *photos, "--json", "--top-k", "3"])
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.output)
    assert len(predictions) == 5
    assert all(p["class_name"] in data.classes for r in predictions for p in r["predictions"])  # folder names


@pytest.fixture
def synthetic_raw_for_options(tmp_path: Path) -> Path:
    from carspotter.data.synth import synthesize

    synthesize(tmp_path / "raw", layout="updated", num_classes=2, per_class=2, seed=0, archives=False)
    return tmp_path / "raw"


def test_split_options_are_for_the_folders_layout_only(synthetic_raw_for_options: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--layout folders"):
        prepare(synthetic_raw_for_options, tmp_path / "out", seed=1)
