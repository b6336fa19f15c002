"""`prepare`: both Stanford Cars layouts (archives and folders, mirror nesting), the genuine devkit, real images,
hostile archives, interrupted runs, missing and corrupt images."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
from PIL import Image
from synthetic_support import CARSPOTTER, interrupt_prepare_after, rewrite_first_annotation

from carspotter.data import prepare as prepare_module
from carspotter.data import writer
from carspotter.data.extract import extract_archive
from carspotter.data.folders import FOLDERS
from carspotter.data.prepare import detect_layout, prepare
from carspotter.data.prepared import COLUMNS, load_prepared
from carspotter.data.raw import RawDataset, RawImage, RawLayout, StanfordImage
from carspotter.data.stanford import write_stanford_raw
from carspotter.data.stanford_mat import read_class_names, read_struct
from carspotter.data.synth import synthesize
from carspotter.errors import UserError
from carspotter.formats.files import sha256_file


def _synth(path: Path, layout: str = "original", **kwargs) -> Path:
    synthesize(path, layout=layout, **{"num_classes": 3, "per_class": 4, "seed": 1, **kwargs})
    return path


def _annotations(raw: Path, layout: str) -> dict[str, list[dict]]:
    """What the raw .mat files say, per split, read independently of `prepare` (folders only)."""
    if layout == "updated":
        rows = read_struct(raw / "cars_annos.mat", "annotations", ())
        return {
            "train": [r | {"fname": Path(r["relative_im_path"]).name} for r in rows if not r["test"]],
            "test": [r | {"fname": Path(r["relative_im_path"]).name} for r in rows if r["test"]],
        }
    labels = next(raw.rglob("cars_test_annos_withlabels.mat"))
    return {
        "train": read_struct(raw / "devkit" / "cars_train_annos.mat", "annotations", ()),
        "test": read_struct(labels, "annotations", ()),
    }


# ------------------------------------------------------------------------------------------------ both layouts


@pytest.mark.parametrize(
    "layout, options",
    [
        ("updated", {"archives": True}),
        ("updated", {"archives": False}),
        ("original", {"archives": True}),
        ("original", {"archives": False, "nested": True}),
        ("original", {"archives": False, "test_labels_in_devkit": True}),
        ("original", {"archives": True, "test_labels_in_devkit": True}),
    ],
)
def test_prepare_reads_both_layouts(tmp_path: Path, layout: str, options: dict) -> None:
    raw = _synth(tmp_path / "raw", layout, **options)
    report = prepare(raw, tmp_path / "out")
    assert report.layout == layout and report.counts == {"train": 6, "test": 6} and report.num_classes == 3
    assert not report.missing and not report.unreadable and not report.already_complete

    ds = load_prepared(tmp_path / "out")
    assert ds.manifest["source_layout"] == layout and ds.manifest["counts"] == {"train": 6, "test": 6}
    assert ds.classes == [n for n in pd.read_csv(tmp_path / "out" / "classes.csv")["class_name"]]
    assert not (tmp_path / "out" / writer.PARTIAL).exists()
    # The manifest names where each source file came from, never the scratch copy that prepare deleted
    sources = list(ds.manifest["source"].values())
    assert sources and not any(writer.PARTIAL in str(v) for v in sources), sources
    if options["archives"]:
        assert any(str(v).startswith(str(raw / "car_devkit.tgz") + ":") for v in sources), sources

    extracted = tmp_path / "extracted"
    if options["archives"]:  # read the annotations from the archives ourselves to compare
        _synth(extracted, layout, **{**options, "archives": False})
    annotations = _annotations(extracted if options["archives"] else raw, layout)
    for split in ("train", "test"):
        df = ds.split(split)
        assert list(df.columns[: len(COLUMNS)]) == COLUMNS
        expected = annotations[split]
        assert [f"{split}/{a['fname']}" for a in expected] == df["fname"].tolist()
        for a, row in zip(expected, df.itertuples(), strict=True):
            assert row.class_id == a["class"] - 1 and row.class_name == ds.classes[row.class_id]
            with Image.open(tmp_path / "out" / row.fname) as im:
                assert (row.width, row.height) == im.size
            # MATLAB 1-based inclusive -> PIL box, clipped to the image
            assert (row.bbox_x1, row.bbox_y1) == (a["bbox_x1"] - 1, a["bbox_y1"] - 1)
            assert (row.bbox_x2, row.bbox_y2) == (min(a["bbox_x2"], row.width), min(a["bbox_y2"], row.height))


def test_manifest_checksums_and_keys(synthetic_prepared: Path) -> None:
    manifest = json.loads((synthetic_prepared / "manifest.json").read_text())
    assert manifest["format"] == "carspotter-prepared" and manifest["version"] == 1
    assert manifest["counts"] == {"train": 150, "test": 150} and manifest["num_classes"] == 10
    assert manifest["missing"] == [] and manifest["unreadable"] == []
    for name in ("classes.csv", "train.csv", "test.csv"):
        assert manifest["checksums"][name] == sha256_file(synthetic_prepared / name)
    ds = load_prepared(synthetic_prepared)
    # the original layout reuses file names across splits: both are kept, in their own folders
    assert "train/00001.jpg" in set(ds.train["fname"]) and "test/00001.jpg" in set(ds.test["fname"])
    assert all((synthetic_prepared / f).is_file() for f in pd.concat([ds.train, ds.test])["fname"])


def test_unknown_layout_lists_what_is_expected(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "photos.zip").write_bytes(b"x")
    with pytest.raises(UserError) as err:
        prepare(tmp_path / "raw", tmp_path / "out")
    msg = str(err.value)
    assert "photos.zip" in msg and "cars_annos.mat" in msg and "cars_train" in msg and "\n" not in msg
    assert f"--layout folders reads {FOLDERS.expects}" in msg  # never detected: its own description says how
    with pytest.raises(UserError, match="unknown layout"):
        detect_layout(tmp_path / "raw", "kaggle")
    with pytest.raises(UserError, match="did you mean original"):
        detect_layout(tmp_path / "raw", "orignal")


def test_a_layout_plugs_in_through_layouts_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new `RawLayout` in `LAYOUTS` is detected, gets the options it declares, and owns them in the errors."""
    raw = tmp_path / "raw"
    (raw / "pics").mkdir(parents=True)
    Image.new("RGB", (12, 8), "red").save(raw / "pics" / "a.png")
    seen = {}

    def read(raw: Path, scratch: Path, *, seed: int | None) -> RawDataset:
        seen["seed"] = seed
        image = RawImage(split="train", fname="a.png", source=raw / "pics" / "a.png", class_id=0)
        return RawDataset(layout="pics", classes=["red"], images=[image, replace(image, split="test")])

    def detect(raw: Path) -> list[str]:
        return [] if (raw / "pics").is_dir() else ["pics/"]

    pics = RawLayout(name="pics", expects="pics/*.png", detect=detect, read=read, options=("seed",))
    monkeypatch.setattr(prepare_module, "LAYOUTS", (*prepare_module.LAYOUTS, pics))
    assert prepare(raw, tmp_path / "out", seed=7).counts == {"train": 1, "test": 1} and seen["seed"] == 7
    with pytest.raises(UserError, match="--class-names is for the parquet layout, not the pics layout"):
        prepare(raw, tmp_path / "out2", class_names=tmp_path / "names.txt")
    synth_raw = _synth(tmp_path / "stanford", "updated", archives=False)
    with pytest.raises(UserError, match="--seed is for --layout folders or the pics layout, not the updated layout"):
        prepare(synth_raw, tmp_path / "out3", seed=1)
    monkeypatch.setattr(prepare_module, "LAYOUTS", (*prepare_module.LAYOUTS, pics))
    with pytest.raises(ValueError, match="'pics' is taken"):
        detect_layout(raw, "pics")


def test_forced_layout_must_match(tmp_path: Path) -> None:
    raw = _synth(tmp_path / "raw", "original", archives=False)
    with pytest.raises(UserError, match="updated layout lacks cars_annos.mat"):
        prepare(raw, tmp_path / "out", layout="updated")
    assert prepare(raw, tmp_path / "out", layout="original").counts == {"train": 6, "test": 6}


def test_original_without_test_labels_says_what_to_get(tmp_path: Path) -> None:
    raw = _synth(tmp_path / "raw", "original", archives=False)
    (raw / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(UserError, match="cars_test_annos_withlabels.mat"):
        prepare(raw, tmp_path / "out")


def test_forced_original_layout_does_not_call_a_present_devkit_missing(tmp_path: Path) -> None:
    raw = _synth(tmp_path / "raw", "updated", archives=True)  # car_ims.tgz, cars_annos.mat, car_devkit.tgz
    assert (raw / "car_devkit.tgz").is_file()
    with pytest.raises(UserError) as err:
        prepare(raw, tmp_path / "out", layout="original")
    assert "cars_train" in str(err.value) and "devkit/ or car_devkit.tgz" not in str(err.value)


def test_raw_one_level_down_is_found(tmp_path: Path) -> None:
    """torchvision and Kaggle unpack into a sub-folder (``stanford_cars/``)."""
    _synth(tmp_path / "raw" / "stanford_cars", "updated")
    assert prepare(tmp_path / "raw", tmp_path / "out").layout == "updated"


# ------------------------------------------------------------------------------------------ missing and corrupt


def test_missing_and_corrupt_images_are_reported_by_name(tmp_path: Path) -> None:
    raw = _synth(tmp_path / "raw", "original", archives=False)
    (raw / "cars_train" / "00002.jpg").unlink()
    data = (raw / "cars_test" / "00003.jpg").read_bytes()
    (raw / "cars_test" / "00003.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    (raw / "cars_test" / "00004.jpg").write_bytes(b"not an image")
    report = prepare(raw, tmp_path / "out")
    assert report.missing == ["cars_train/00002.jpg"]
    assert report.unreadable == ["cars_test/00003.jpg", "cars_test/00004.jpg"]
    assert report.counts == {"train": 5, "test": 4}
    ds = load_prepared(tmp_path / "out")
    assert ds.manifest["missing"] == report.missing and ds.manifest["unreadable"] == report.unreadable
    assert "train/00002.jpg" not in set(ds.train["fname"]) and "test/00003.jpg" not in set(ds.test["fname"])


def test_all_images_missing_is_a_user_error(tmp_path: Path) -> None:
    raw = _synth(tmp_path / "raw", "updated", archives=False)
    shutil.rmtree(raw / "car_ims")
    (raw / "car_ims").mkdir()
    with pytest.raises(UserError, match="none of the 12 images"):
        prepare(raw, tmp_path / "out")
    with pytest.raises(UserError):
        load_prepared(tmp_path / "out")


# ---------------------------------------------------------------------------------------------- hostile archives


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> None:
    with tarfile.open(path, "w:gz") as tar:
        good = tarfile.TarInfo("car_ims/000001.jpg")
        good.size = 3
        tar.addfile(good, io.BytesIO(b"abc"))
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)


def _hostile_members(outside: Path) -> dict[str, tarfile.TarInfo]:
    dotdot = tarfile.TarInfo("car_ims/../../../evil.txt")
    absolute = tarfile.TarInfo(str(outside / "evil.txt"))
    symlink = tarfile.TarInfo("car_ims/escape")
    symlink.type, symlink.linkname = tarfile.SYMTYPE, "../../.."
    abs_link = tarfile.TarInfo("car_ims/passwd")
    abs_link.type, abs_link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hardlink = tarfile.TarInfo("car_ims/hard")
    hardlink.type, hardlink.linkname = tarfile.LNKTYPE, "../outside.txt"
    return {"dotdot": dotdot, "absolute": absolute, "symlink": symlink, "abs_link": abs_link, "hardlink": hardlink}


def _snapshot(root: Path, skip: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if skip not in p.parents and p != skip}


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "abs_link", "hardlink"])
def test_hostile_archive_is_refused_and_nothing_is_written_outside_out(tmp_path: Path, kind: str) -> None:
    raw = _synth(tmp_path / "raw", "updated", archives=True)
    member = _hostile_members(tmp_path)[kind]
    _tar_with(raw / "car_ims.tgz", member, b"pwned")
    out = tmp_path / "work" / "out"
    out.parent.mkdir()
    before = _snapshot(tmp_path, out)
    with pytest.raises(UserError, match="refusing") as err:
        prepare(raw, out)
    assert repr(member.name) in str(err.value)
    assert _snapshot(tmp_path, out) == before
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "work" / "evil.txt").exists()
    with pytest.raises(UserError):
        load_prepared(out)
    # no half-extracted folder is left to be mistaken for a finished one
    assert not list((out / writer.PARTIAL / writer.SCRATCH).glob("car_ims*"))


# ---------------------------------------------------------------------------------- sources outside RAW


def _tree(root: Path, skip: Path) -> dict[str, str]:
    """Every file, folder and link below ``root`` (except ``skip``) with its content hash or link target."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(dirpath) / d != skip]
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            found[str(p)] = "-> " + os.readlink(p) if p.is_symlink() else "dir" if p.is_dir() else sha256_file(p)
    return found


@pytest.mark.parametrize("archives", [True, False], ids=["archives", "folders"])
@pytest.mark.parametrize("kind", ["absolute", "dotdot"])
@pytest.mark.parametrize("layout", ["updated", "original"])
def test_annotations_pointing_outside_raw_are_refused_and_nothing_outside_is_touched(
    tmp_path: Path, layout: str, kind: str, archives: bool
) -> None:
    raw = _synth(tmp_path / "raw", layout, archives=archives)
    private = tmp_path / "home" / "me" / "private.jpg"
    private.parent.mkdir(parents=True)
    synthesize(tmp_path / "photo", layout="updated", num_classes=1, per_class=1, seed=5, archives=False)
    shutil.copy(next((tmp_path / "photo").rglob("*.jpg")), private)  # a real JPEG that prepare would accept
    field, mat = (
        ("relative_im_path", raw / "cars_annos.mat")
        if layout == "updated"
        else ("fname", raw / "cars_test_annos_withlabels.mat")
    )
    hostile = str(private) if kind == "absolute" else "car_ims/" + "../" * 40 + str(private).lstrip("/")
    rewrite_first_annotation(mat, field, hostile)
    out = tmp_path / "out"
    before = _tree(tmp_path, out)
    with pytest.raises(UserError, match="outside") as err:
        prepare(raw, out)
    assert hostile in str(err.value) and "\n" not in str(err.value)
    assert _tree(tmp_path, out) == before  # nothing outside OUT moved, copied, changed or deleted
    assert private.is_file() and not (out / "manifest.json").exists()
    assert not [p for p in out.rglob("*") if p.is_file() and sha256_file(p) == sha256_file(private)]


def test_symlinked_image_leading_outside_raw_is_refused_by_name(tmp_path: Path) -> None:
    raw = _synth(tmp_path / "raw", "updated", archives=False)
    private = tmp_path / "private.jpg"
    os.replace(raw / "car_ims" / "000001.jpg", private)
    (raw / "car_ims" / "000001.jpg").symlink_to(private)
    (raw / "car_ims" / "000002.jpg").unlink()
    (raw / "car_ims" / "000002.jpg").symlink_to(raw / "car_ims" / "000003.jpg")  # inside RAW: fine
    out = tmp_path / "out"
    before = _tree(tmp_path, out)
    with pytest.raises(UserError, match="outside") as err:
        prepare(raw, out)
    assert "car_ims/000001.jpg" in str(err.value) and "000002" not in str(err.value)
    assert _tree(tmp_path, out) == before and not (out / "manifest.json").exists()
    (raw / "car_ims" / "000001.jpg").unlink()
    assert prepare(raw, out).missing == ["car_ims/000001.jpg"]  # the link inside RAW is followed


def test_extract_archive_reuses_a_finished_extraction(tmp_path: Path) -> None:
    raw = _synth(tmp_path / "raw", "original", archives=True)
    dest = extract_archive(raw / "car_devkit.tgz", tmp_path / "x" / "devkit")
    assert (dest / "devkit" / "cars_meta.mat").is_file()
    marker = dest / "devkit" / "kept.txt"
    marker.write_text("kept")
    assert extract_archive(raw / "car_devkit.tgz", tmp_path / "x" / "devkit") == dest and marker.is_file()
    (tmp_path / "broken.tgz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(UserError, match="not a readable tar archive"):
        extract_archive(tmp_path / "broken.tgz", tmp_path / "x" / "broken")
    assert not (tmp_path / "x" / "broken").exists() and not (tmp_path / "x" / "broken.tmp").exists()


# -------------------------------------------------------------------------------------------------- atomicity


def test_interrupted_copy_then_rerun_completes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _synth(tmp_path / "raw", "original", archives=True)
    out = tmp_path / "out"
    real_place = interrupt_prepare_after(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        prepare(raw, out)
    with pytest.raises(UserError, match="not a complete prepared dataset"):
        load_prepared(out)
    assert not (out / "manifest.json").exists() and (out / writer.PARTIAL).is_dir()

    # a half-copied file from the crash must not survive
    (out / writer.PARTIAL / "train" / "99999.jpg.part").write_bytes(b"half")
    placed = {"n": 0}

    def counting(source: Path, dest: Path, *, move: bool) -> None:
        placed["n"] += 1
        real_place(source, dest, move=move)

    monkeypatch.setattr(writer, "_place", counting)
    report = prepare(raw, out)
    assert report.counts == {"train": 6, "test": 6} and not report.already_complete
    assert placed["n"] == 12 - 5  # the five images copied before the crash were reused
    ds = load_prepared(out)
    assert len(ds.train) == 6 and len(ds.test) == 6
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(Path(f).name for f in ds.train["fname"])
    assert not (out / writer.PARTIAL).exists()


def test_interrupted_commit_then_rerun_completes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _synth(tmp_path / "raw", "updated", archives=False)
    out = tmp_path / "out"
    real_replace = os.replace
    moved = {"n": 0}

    def crash_during_commit(src, dst) -> None:
        if Path(dst).parent == out:  # the moves into OUT: let two through, then die
            moved["n"] += 1
            if moved["n"] > 2:
                raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(writer.os, "replace", crash_during_commit)
    with pytest.raises(KeyboardInterrupt):
        prepare(raw, out)
    monkeypatch.setattr(writer.os, "replace", real_replace)
    assert (out / "train").is_dir() and not (out / "manifest.json").exists()
    with pytest.raises(UserError):
        load_prepared(out)
    report = prepare(raw, out)
    assert report.counts == {"train": 6, "test": 6}
    assert len(load_prepared(out).test) == 6 and not (out / writer.PARTIAL).exists()


def test_complete_out_is_left_alone_unless_overwrite(tmp_path: Path) -> None:
    raw = _synth(tmp_path / "raw", "original", archives=False)
    out = tmp_path / "out"
    prepare(raw, out)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    again = prepare(raw, out)
    assert again.already_complete and again.counts == {"train": 6, "test": 6}
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    rebuilt = prepare(raw, out, overwrite=True)
    assert not rebuilt.already_complete and load_prepared(out).manifest["counts"] == {"train": 6, "test": 6}


def test_a_complete_out_is_done_only_for_the_raw_it_was_built_from(tmp_path: Path) -> None:
    """Issue 35, item 3: "already complete" for another RAW meant the user's photos were never prepared."""
    raw = _synth(tmp_path / "raw", "original", archives=False)
    other = _synth(tmp_path / "other", "original", archives=False, seed=7, per_class=6)
    out = tmp_path / "out"
    prepare(raw, out)
    source = load_prepared(out).manifest["source"]
    assert source["raw"] == str(raw.resolve()) and source["fingerprint"]["files"] > 0
    assert source["layout_asked"] == "auto" and source["options"]["seed"] is None
    with pytest.raises(UserError, match=rf"OUT was prepared from {raw.resolve()}, not from {other.resolve()}"):
        prepare(other, out)
    extra = next(raw.rglob("*.jpg"))
    added = shutil.copy(extra, extra.with_name("added-later.jpg"))
    with pytest.raises(UserError, match=r"RAW \(\S+/raw\) has changed since OUT was prepared from it \(\d+ files"):
        prepare(raw, out)
    Path(added).unlink()
    moved = shutil.move(raw, tmp_path / "raw-moved")  # the same files elsewhere: still the same RAW
    assert prepare(moved, out).already_complete
    with pytest.raises(UserError, match="was prepared as the original layout, not updated"):
        prepare(moved, out, layout="updated")
    rebuilt = prepare(other, out, overwrite=True)
    assert not rebuilt.already_complete and load_prepared(out).manifest["source"]["raw"] == str(other.resolve())


def test_class_folders_with_options_given_again(tmp_path: Path) -> None:
    raw = tmp_path / "photos"
    for name in ("Audi A4", "BMW M3"):
        (raw / name).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (40, 30), (40 * i, 90, 20)).save(raw / name / f"{i}.jpg")
    out = tmp_path / "prepared"
    prepare(raw, out, layout="folders", seed=1)
    assert prepare(raw, out, layout="folders", seed=1).already_complete
    assert prepare(raw, out, layout="folders").already_complete  # options not given: whatever was used
    with pytest.raises(UserError, match=r"other options \(--seed 1 then, 2 now\)"):
        prepare(raw, out, layout="folders", seed=2)


def test_foreign_out_folder_is_refused(tmp_path: Path) -> None:
    raw = _synth(tmp_path / "raw", "original", archives=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.pdf").write_bytes(b"%PDF")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="not empty"):
            prepare(raw, tmp_path / "out", overwrite=overwrite)
    assert (tmp_path / "out" / "thesis.pdf").is_file()


# -------------------------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_genuine_devkit_parses(stanford_shared: Path) -> None:
    devkit = stanford_shared / "devkit"
    names = read_class_names(devkit / "cars_meta.mat")
    assert len(names) == 196
    assert names[0] == "AM General Hummer SUV 2000" and names[-1] == "smart fortwo Convertible 2012"
    train = read_struct(devkit / "cars_train_annos.mat", "annotations", ("bbox_x1", "class", "fname"))
    test = read_struct(devkit / "cars_test_annos_withlabels.mat", "annotations", ("bbox_x1", "class", "fname"))
    unlabelled = read_struct(devkit / "cars_test_annos.mat", "annotations", ("bbox_x1", "fname"))
    assert (len(train), len(test), len(unlabelled)) == (8144, 8041, 8041)
    first = {"bbox_x1": 39, "bbox_y1": 116, "bbox_x2": 569, "bbox_y2": 375, "class": 14, "fname": "00001.jpg"}
    assert train[0] == first
    assert {r["class"] for r in train} == set(range(1, 197)) == {r["class"] for r in test}
    assert [r["fname"] for r in test] == [f"{i:05d}.jpg" for i in range(1, 8042)]


@pytest.mark.realdata
def test_synthetic_mat_files_look_like_the_genuine_ones(stanford_shared: Path, tmp_path: Path) -> None:
    raw = _synth(tmp_path / "raw", "original", archives=False)
    for name in ("cars_meta.mat", "cars_train_annos.mat", "cars_test_annos.mat"):
        genuine, ours = scipy.io.loadmat(stanford_shared / "devkit" / name), scipy.io.loadmat(raw / "devkit" / name)
        assert [k for k in genuine if not k.startswith("__")] == [k for k in ours if not k.startswith("__")]
        for key in (k for k in genuine if not k.startswith("__")):
            g, o = genuine[key], ours[key]
            assert (g.ndim, g.shape[0], g.dtype.names) == (o.ndim, o.shape[0], o.dtype.names)
            g0, o0 = g[0, 0], o[0, 0]
            for field in g.dtype.names or [None]:
                gv, ov = (g0, o0) if field is None else (g0[field], o0[field])
                assert (gv.shape, gv.dtype.kind) == (ov.shape, ov.dtype.kind), (name, field)
    genuine = scipy.io.loadmat(stanford_shared / "devkit" / "cars_test_annos_withlabels.mat")["annotations"]
    ours = scipy.io.loadmat(raw / "cars_test_annos_withlabels.mat")["annotations"]
    assert genuine.dtype.names == ours.dtype.names


def _real_sample(stanford_shared: Path, layout: str) -> tuple[list[str], list[StanfordImage], pd.DataFrame]:
    """The 418 real images, every third one in test. Named as the release names them: original keeps the train
    names and numbers test from 00001.jpg (the same names as train, in another folder); updated numbers all
    images 000001.jpg... in one car_ims/ folder."""
    classes = read_class_names(stanford_shared / "devkit" / "cars_meta.mat")
    labels = pd.read_csv(stanford_shared / "sample" / "labels.csv").sort_values("fname").reset_index(drop=True)
    images, expected = [], []
    for i, row in enumerate(labels.itertuples()):
        test = i % 3 == 0
        if layout == "updated":
            name = f"{i + 1:06d}.jpg"
        else:
            name = f"{i // 3 + 1:05d}.jpg" if test else row.fname
        w, h = int(row.width), int(row.height)
        box = (2, 3, w - 1, h + 5)  # 1-based inclusive; the bottom overshoots and must be clipped
        data = (stanford_shared / "sample" / "images" / row.fname).read_bytes()
        images.append(StanfordImage(data=data, class_id=int(row.class_id) - 1, test=test, bbox=box, name=name))
        expected.append(
            {"name": name, "split": "test" if test else "train", "class_name": row.class_name, "width": w, "height": h}
        )
    return classes, images, pd.DataFrame(expected)


@pytest.mark.realdata
@pytest.mark.parametrize("layout", ["updated", "original"])
def test_prepare_real_images_both_layouts(stanford_shared: Path, tmp_path: Path, layout: str) -> None:
    classes, images, expected = _real_sample(stanford_shared, layout)
    raw = tmp_path / "raw"
    raw.mkdir()
    write_stanford_raw(
        raw, layout=layout, class_names=classes, images=images, archives=True, nested=layout == "original"
    )
    report = prepare(raw, tmp_path / "out")
    n_test = int((expected["split"] == "test").sum())
    assert report.layout == layout and report.counts == {"train": 418 - n_test, "test": n_test}
    assert report.num_classes == 196 and not report.missing and not report.unreadable
    ds = load_prepared(tmp_path / "out")
    for split in ("train", "test"):
        want = expected[expected["split"] == split]
        got = ds.split(split)
        assert got["fname"].tolist() == [f"{split}/{n}" for n in want["name"]]
        assert got["class_name"].tolist() == want["class_name"].tolist()
        assert got["width"].tolist() == want["width"].tolist() and got["height"].tolist() == want["height"].tolist()
        assert (got["bbox_x1"] == 1).all() and (got["bbox_y1"] == 2).all()
        assert np.array_equal(got["bbox_x2"], want["width"] - 1) and np.array_equal(got["bbox_y2"], want["height"])
    for image, (_, want) in zip(images[:5], expected.head(5).iterrows(), strict=True):
        copied = tmp_path / "out" / want["split"] / want["name"]
        assert copied.read_bytes() == image.data  # copied as they are, not re-encoded


# ------------------------------------------------------------------------------------------------------- CLI


def test_cli_synth_then_prepare(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from carspotter.cli import app

    runner = CliRunner()
    raw, out = tmp_path / "raw", tmp_path / "out"
    made = runner.invoke(app, ["synth", str(raw), "--layout", "updated", "--classes", "2", "--per-class", "3"])
    assert made.exit_code == 0, made.output
    assert "car_ims.tgz" in made.output
    done = runner.invoke(app, ["prepare", str(raw), str(out)])
    assert done.exit_code == 0, done.output
    assert "updated layout" in done.output and load_prepared(out).manifest["counts"] == {"train": 2, "test": 4}
    again = runner.invoke(app, ["prepare", str(raw), str(out)])
    assert again.exit_code == 0 and "already" in again.output


def test_a_partial_folder_left_beside_a_complete_out_is_removed(tmp_path: Path) -> None:
    """A prepare killed during its final clean-up leaves OUT complete and ``OUT/.partial`` behind."""
    raw = _synth(tmp_path / "raw", "original", archives=True)
    out = tmp_path / "out"
    prepare(raw, out)
    leftover = out / writer.PARTIAL / writer.SCRATCH / "cars_train"
    leftover.mkdir(parents=True)
    (leftover / "00001.jpg").write_bytes(b"half of an image")
    again = prepare(raw, out)
    assert again.already_complete and not (out / writer.PARTIAL).exists()
    assert len(load_prepared(out).train) == 6


def test_synth_and_prepare_print_their_result_once(tmp_path: Path) -> None:
    """As a user runs them (a process of their own, logging on): one result line each, not two in two wordings."""
    import subprocess

    raw, out = tmp_path / "raw", tmp_path / "out"
    made = subprocess.run([*CARSPOTTER, "synth", str(raw), "--classes", "2", "--per-class", "2"], capture_output=True,
                          text=True)
    done = subprocess.run([*CARSPOTTER, "prepare", str(raw), str(out)], capture_output=True, text=True)
    assert made.returncode == 0 and done.returncode == 0, made.stderr + done.stderr
    said = (made.stdout + made.stderr + done.stdout + done.stderr).splitlines()
    assert len([line for line in said if line.startswith("synthesised")]) == 1, said
    assert len([line for line in said if line.startswith("prepared")]) == 1, said
