"""`prepare` on the Hugging Face parquet release of Stanford Cars (`synth --layout parquet`), and `prepare hf://...`
from a Hugging Face cache the test fills itself (never the network)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from synthetic_support import interrupt_prepare_after

from carspotter.data import parquet, writer
from carspotter.data.parquet import write_parquet_raw
from carspotter.data.prepare import prepare
from carspotter.data.prepared import load_prepared
from carspotter.data.raw import StanfordImage
from carspotter.data.stanford_mat import read_class_names
from carspotter.data.synth import synthesize
from carspotter.errors import UserError

SRC = Path(__file__).resolve().parents[1] / "src"


def _synth(path: Path, layout: str = "parquet", **kwargs) -> Path:
    synthesize(path, layout=layout, num_classes=3, per_class=6, seed=2, **kwargs)
    return path


def _prepared_copy(raw: Path, out: Path) -> Path:
    prepare(raw, out)
    return out


def _cli(args: list[str], env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """The real `carspotter` command in a fresh process (huggingface_hub reads HF_* variables at import)."""
    full_env = {**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "500", **(env or {})}
    cmd = [sys.executable, "-m", "carspotter.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)


# ------------------------------------------------------------------------------------------------------- synth


def test_synth_parquet_is_laid_out_like_the_hub_release(tmp_path: Path) -> None:
    report = synthesize(tmp_path / "raw", layout="parquet", num_classes=3, per_class=6, seed=0)
    assert report.files == ["README.md", "data/"]
    data = tmp_path / "raw" / "data"
    assert sorted(p.name for p in data.iterdir()) == [
        "test-00000-of-00002.parquet",
        "test-00001-of-00002.parquet",
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
    ]
    table = pq.read_table(data / "train-00000-of-00002.parquet")
    assert str(table.schema.field("image").type) == "struct<bytes: binary, path: string>"
    assert str(table.schema.field("label").type) == "int64"
    first = table.column("image")[0].as_py()
    assert first["bytes"][:3] == b"\xff\xd8\xff" and first["path"] == "00001.jpg"  # JPEG bytes, the release's name
    assert set(table.column("label").to_pylist()) <= {0, 1, 2}
    hf_meta = json.loads(table.schema.metadata[b"huggingface"])
    assert hf_meta["info"]["features"]["label"]["names"] == report.classes

    card = (tmp_path / "raw" / "README.md").read_text()
    from huggingface_hub.repocard import metadata_load

    label = metadata_load(tmp_path / "raw" / "README.md")["dataset_info"]["features"][1]
    assert card.startswith("---\n") and label["name"] == "label"
    assert label["dtype"]["class_label"]["names"] == {str(i): n for i, n in enumerate(report.classes)}


# ------------------------------------------------------------------------------------------------------ prepare


def _content(prepared: Path, split: str) -> pd.DataFrame:
    """A split as (image sha256, class, size), sorted: comparable across layouts that name files differently."""
    df = load_prepared(prepared).split(split).copy()
    df["sha256"] = [hashlib.sha256((prepared / f).read_bytes()).hexdigest() for f in df["fname"]]
    cols = ["sha256", "class_id", "class_name", "width", "height"]
    return df[cols].sort_values(cols).reset_index(drop=True)


def test_parquet_updated_and_original_give_the_same_prepared_dataset(tmp_path: Path) -> None:
    out = {}
    for layout in ("parquet", "updated", "original"):
        raw = _synth(tmp_path / f"raw-{layout}", layout, **({} if layout == "parquet" else {"archives": False}))
        report = prepare(raw, tmp_path / f"out-{layout}")
        assert report.layout == layout and report.counts == {"train": 9, "test": 9} and not report.unreadable
        out[layout] = tmp_path / f"out-{layout}"

    classes = (out["parquet"] / "classes.csv").read_bytes()
    assert classes == (out["updated"] / "classes.csv").read_bytes() == (out["original"] / "classes.csv").read_bytes()
    for split in ("train", "test"):
        pd.testing.assert_frame_equal(_content(out["parquet"], split), _content(out["updated"], split))
        # The original release and the Hub's copies name and order the images the same way: same rows, same files.
        ours, original = (load_prepared(out[k]).split(split) for k in ("parquet", "original"))
        same = ["fname", "class_id", "class_name", "width", "height"]
        pd.testing.assert_frame_equal(ours[same], original[same])
        # no boxes in the parquet release: the whole image
        assert (ours["bbox_x1"] == 0).all() and (ours["bbox_y1"] == 0).all()
        assert ours["bbox_x2"].equals(ours["width"]) and ours["bbox_y2"].equals(ours["height"])
    manifests = {k: load_prepared(v).manifest for k, v in out.items()}
    assert [manifests[k]["boxes"] for k in ("parquet", "updated", "original")] == [False, True, True]
    assert manifests["parquet"]["source"]["class_names"].endswith("README.md")


@pytest.mark.parametrize("where", ["top", "one-down"])
def test_parquet_files_without_the_data_folder_or_one_folder_down(tmp_path: Path, where: str) -> None:
    made = _synth(tmp_path / "made")
    raw = tmp_path / "raw"
    if where == "top":  # the .parquet files downloaded by hand next to the card, no data/ folder
        raw.mkdir()
        for p in (made / "data").iterdir():
            shutil.move(p, raw / p.name)
        shutil.move(made / "README.md", raw / "README.md")
    else:  # RAW/stanford_cars/data/..., as a git clone of the repository lands
        raw.mkdir()
        shutil.move(made, raw / "stanford_cars")
    report = prepare(raw, tmp_path / "out")
    assert report.layout == "parquet" and report.counts == {"train": 9, "test": 9}
    assert load_prepared(tmp_path / "out").classes[0] == "Synthmotors Aurora Sedan 2005"


def _corrupt_release(raw: Path) -> list[str]:
    """A release whose rows 1, 3 and 4 of the train shard hold a truncated JPEG, non-image bytes and no bytes."""
    good = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(good, format="JPEG")
    jpeg = good.getvalue()
    rows = [jpeg, jpeg[: len(jpeg) // 2], jpeg, b"<html>rate limited</html>", b"", jpeg]
    images = [StanfordImage(data=d, class_id=i % 2, test=False, bbox=(1, 1, 2, 2)) for i, d in enumerate(rows)]
    images.append(StanfordImage(data=jpeg, class_id=1, test=True, bbox=(1, 1, 2, 2)))
    raw.mkdir()
    write_parquet_raw(raw, class_names=["a", "b"], images=images)
    return [f"train-00000-of-00001.parquet row {r} ({r + 1:05d}.jpg)" for r in (1, 3, 4)]


def test_corrupt_image_bytes_in_a_row_are_named_and_left_out(tmp_path: Path) -> None:
    bad = _corrupt_release(tmp_path / "raw")
    report = prepare(tmp_path / "raw", tmp_path / "out")
    assert report.unreadable == bad and report.counts == {"train": 3, "test": 1}
    ds = load_prepared(tmp_path / "out")
    assert ds.train["fname"].tolist() == ["train/00001.jpg", "train/00003.jpg", "train/00006.jpg"]
    assert ds.manifest["unreadable"] == bad
    assert sorted(p.name for p in (tmp_path / "out" / "train").iterdir()) == ["00001.jpg", "00003.jpg", "00006.jpg"]


def test_file_names_come_from_image_path_when_safe_and_unique(tmp_path: Path) -> None:
    """``image.path`` is untrusted: only a plain image name is kept (no folders, no ``..``); a missing, odd or taken
    name becomes the image's number in its split."""
    import pyarrow as pa

    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (0, 90, 200)).save(buf, format="JPEG")
    paths = [None, "../../../outside.jpg", "a/b/dup.jpg", "c/dup.jpg", "C:\\x\\win.png", "..", "notes.txt"]
    raw = tmp_path / "raw" / "data"
    raw.mkdir(parents=True)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for shard, rows in (("train-00000-of-00002", paths[:4]), ("train-00001-of-00002", paths[4:]), ("test", [None])):
        images = pa.array([{"bytes": buf.getvalue(), "path": p} for p in rows], type=image_type)
        pq.write_table(pa.table({"image": images, "label": pa.array([0] * len(rows))}), raw / f"{shard}.parquet")
    names = tmp_path / "names.txt"
    names.write_text("only class\n")
    prepare(tmp_path / "raw", tmp_path / "out", class_names=names)
    ds = load_prepared(tmp_path / "out")
    assert ds.train["fname"].tolist() == [
        "train/00001.jpg",
        "train/outside.jpg",
        "train/dup.jpg",
        "train/00004-dup.jpg",
        "train/win.png",
        "train/00006.jpg",
        "train/00007.jpg",
    ]
    assert ds.test["fname"].tolist() == ["test/00001.jpg"]
    assert not (tmp_path / "outside.jpg").exists() and not list(tmp_path.glob("*.jpg"))


def test_cli_names_corrupt_rows(tmp_path: Path) -> None:
    bad = _corrupt_release(tmp_path / "raw")
    proc = _cli(["prepare", str(tmp_path / "raw"), str(tmp_path / "out")])
    assert proc.returncode == 0, proc.stderr
    assert "prepared (parquet layout): 3 train, 1 test images, 2 classes" in proc.stdout
    assert "skipped 3 unreadable image(s)" in proc.stderr and all(b in proc.stderr for b in bad)


def test_interrupted_prepare_resumes_without_reading_the_parquet_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = _synth(tmp_path / "raw")
    out = tmp_path / "out"
    real_place = interrupt_prepare_after(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        prepare(raw, out)
    assert not (out / "manifest.json").exists()

    monkeypatch.setattr(writer, "_place", real_place)
    opened = []
    real_open = parquet._parquet_file
    monkeypatch.setattr(parquet, "_parquet_file", lambda p: opened.append(p) or real_open(p))
    report = prepare(raw, out)
    assert opened == []  # every shard was unpacked before the crash: reused, not read again
    assert report.counts == {"train": 9, "test": 9} and not report.unreadable and not report.missing
    assert len(list((out / "train").iterdir())) == 9 and not (out / writer.PARTIAL).exists()


# -------------------------------------------------------------------------------------------------- class names


def _strip_hf_metadata(raw: Path) -> None:
    for shard in (raw / "data").glob("*.parquet"):
        table = pq.read_table(shard)
        pq.write_table(table.replace_schema_metadata(None), shard)


def test_class_names_without_card_come_from_the_parquet_metadata(tmp_path: Path) -> None:
    raw = _synth(tmp_path / "raw")
    classes = load_prepared(_prepared_copy(raw, tmp_path / "with-card")).classes
    (raw / "README.md").unlink()
    prepare(raw, tmp_path / "out")
    ds = load_prepared(tmp_path / "out")
    assert ds.classes == classes and ds.manifest["source"]["class_names"].endswith("(schema metadata)")


def test_no_card_and_no_metadata_is_refused_unless_class_names_are_given(tmp_path: Path) -> None:
    raw = _synth(tmp_path / "raw")
    (raw / "README.md").unlink()
    _strip_hf_metadata(raw)
    with pytest.raises(UserError, match=r"no class names .*--class-names FILE"):
        prepare(raw, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()

    names = tmp_path / "names.txt"
    names.write_text("Alpha 2001\nBeta 2002\nGamma 2003\n")
    report = prepare(raw, tmp_path / "out", class_names=names)
    assert report.num_classes == 3
    assert load_prepared(tmp_path / "out").classes == ["Alpha 2001", "Beta 2002", "Gamma 2003"]

    names.write_text("Alpha 2001\nBeta 2002\n")  # too few for label 2
    with pytest.raises(UserError, match=r"label 2, outside 0\.\.1"):
        prepare(raw, tmp_path / "out2", class_names=names)


def test_class_names_and_revision_options_belong_to_their_sources(tmp_path: Path) -> None:
    raw = _synth(tmp_path / "raw", "original", archives=False)
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    with pytest.raises(UserError, match="--class-names is for the parquet layout"):
        prepare(raw, tmp_path / "out", class_names=tmp_path / "names.txt")
    with pytest.raises(UserError, match="--revision is for hf://"):
        prepare(raw, tmp_path / "out", revision="main")
    with pytest.raises(UserError, match="expected hf://OWNER/NAME"):
        prepare("hf://just-a-name", tmp_path / "out")


def test_crop_to_bbox_says_the_release_has_no_boxes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from carspotter.config import DataConfig
    from carspotter.data.dataset import CarsDataModule

    prepared = _prepared_copy(_synth(tmp_path / "raw"), tmp_path / "out")
    with caplog.at_level(logging.WARNING, logger="carspotter.data.dataset"):
        CarsDataModule(DataConfig(path=prepared, crop_to_bbox=False), batch_size=4, seed=0)
        assert "no bounding boxes" not in caplog.text
        CarsDataModule(DataConfig(path=prepared, crop_to_bbox=True), batch_size=4, seed=0)
    assert "has no bounding boxes (parquet layout)" in caplog.text and "crop_to_bbox changes nothing" in caplog.text


# ------------------------------------------------------------------------------------------------------ memory


_MEASURE = textwrap.dedent(
    """
    import json, sys

    def mib(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key))

    from carspotter.data.prepare import prepare
    import huggingface_hub.repocard, PIL.Image, pyarrow.parquet  # imported before the baseline

    base = mib("VmRSS")
    report = prepare(sys.argv[1], sys.argv[2])
    print(json.dumps({"growth": mib("VmHWM") - base, "counts": report.counts, "unreadable": report.unreadable}))
    """
)


@pytest.mark.slow
def test_memory_stays_bounded_on_a_large_release(tmp_path: Path) -> None:
    """A 180 MB train shard (1,600 rows of 110 kB JPEGs, 100 rows per row group as `datasets` writes them): the
    prepare process grows by far less than the shard (pyarrow's default read buffers a shard whole: +287 MB on a
    219 MB shard)."""
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(8):  # noise does not compress: realistic bytes per image
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
        jpegs.append(buf.getvalue())
    n_train = 1600
    # a different tail per row: no two rows alike, so parquet's dictionary encoding cannot shrink the shard
    images = (
        StanfordImage(data=jpegs[i % 8] + i.to_bytes(8, "little"), class_id=i % 4, test=i >= n_train, bbox=(1, 1, 2, 2))
        for i in range(n_train + 40)
    )
    raw = tmp_path / "raw"
    raw.mkdir()
    write_parquet_raw(raw, class_names=["a", "b", "c", "d"], images=images, rows_per_shard=n_train)
    shard_mib = (raw / "data" / "train-00000-of-00001.parquet").stat().st_size / 2**20
    assert shard_mib > 160

    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(raw), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"peak RSS growth {result['growth']:.0f} MiB while preparing a {shard_mib:.0f} MiB shard")
    assert result["counts"] == {"train": n_train, "test": 40} and not result["unreadable"]
    assert result["growth"] < 100, f"prepare grew by {result['growth']:.0f} MiB on a {shard_mib:.0f} MiB shard"


# ------------------------------------------------------------------------------------------------------ hf://


_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fill_hf_cache(hf_home: Path, repo: str, files: Path, refs: tuple[str, ...] = ("main",)) -> None:
    """What `snapshot_download` leaves in HF_HOME after downloading ``repo``: refs, blobs and a snapshot of links."""
    storage = hf_home / "hub" / f"datasets--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / _COMMIT
    for src in sorted(p for p in files.rglob("*") if p.is_file()):
        blob = storage / "blobs" / hashlib.sha256(src.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, blob)
        link = snapshot / src.relative_to(files)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (storage / "refs" / ref).write_text(_COMMIT)


def test_hf_offline_without_the_repository_in_the_cache_is_one_error_line(tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    proc = _cli(["prepare", "hf://tanganke/stanford_cars", str(tmp_path / "out")], env)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "hf://tanganke/stanford_cars: the Hub cannot be reached (HF_HUB_OFFLINE is set)" in errors[0]
    assert not (tmp_path / "out").exists()


def test_hf_prepares_from_a_prefilled_cache_offline(tmp_path: Path) -> None:
    made = _synth(tmp_path / "made")
    local = _prepared_copy(made, tmp_path / "local")
    hf_home = tmp_path / "hf"
    _fill_hf_cache(hf_home, "someone/stanford_cars", made, refs=("main", "v1.0"))
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    for args, out in (
        (["hf://someone/stanford_cars"], tmp_path / "out-main"),
        (["hf://datasets/someone/stanford_cars", "--revision", "v1.0"], tmp_path / "out-tag"),
    ):
        proc = _cli(["prepare", args[0], str(out), *args[1:]], env)
        assert proc.returncode == 0, proc.stderr
        assert "prepared (parquet layout): 9 train, 9 test images, 3 classes" in proc.stdout
        for name in ("classes.csv", "train.csv", "test.csv"):
            assert (out / name).read_bytes() == (local / name).read_bytes()
        hub = load_prepared(out).manifest["source"]["hub"]
        assert hub["repository"] == "someone/stanford_cars" and hub["commit"] == _COMMIT
    assert hub["revision"] == "v1.0"

    proc = _cli(["prepare", "hf://someone/stanford_cars", str(tmp_path / "out-x"), "--revision", "v2"], env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: hf://someone/stanford_cars" in proc.stderr


# ---------------------------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_prepare_real_images_from_parquet(stanford_shared: Path, tmp_path: Path) -> None:
    """The 418 real photos written as the Hub's parquet release (196 class names in the card) come out byte for byte,
    with their class names."""
    classes = read_class_names(stanford_shared / "devkit" / "cars_meta.mat")
    labels = pd.read_csv(stanford_shared / "sample" / "labels.csv").sort_values("fname").reset_index(drop=True)
    images = [
        StanfordImage(
            data=(stanford_shared / "sample" / "images" / row.fname).read_bytes(),
            class_id=int(row.class_id) - 1,
            test=i % 3 == 0,
            bbox=(1, 1, 2, 2),
            name=row.fname,
        )
        for i, row in enumerate(labels.itertuples())
    ]
    raw = tmp_path / "raw"
    raw.mkdir()
    write_parquet_raw(raw, class_names=classes, images=images, rows_per_shard=150)
    report = prepare(raw, tmp_path / "out")
    n_test = sum(img.test for img in images)
    assert report.counts == {"train": 418 - n_test, "test": n_test} and report.num_classes == 196
    assert not report.unreadable
    ds = load_prepared(tmp_path / "out")
    want = labels[[i % 3 != 0 for i in range(len(labels))]]
    assert ds.train["fname"].tolist() == [f"train/{n}" for n in want["fname"]]
    assert ds.train["class_name"].tolist() == want["class_name"].tolist()
    assert ds.train["width"].tolist() == want["width"].tolist()
    for img in images[:5]:
        split = "test" if img.test else "train"
        assert (tmp_path / "out" / split / str(img.name)).read_bytes() == img.data
