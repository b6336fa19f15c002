"""The hostile-input table: what a hostile or unlucky user gives each command, and the one `error:` line and exit
code they must get back (no traceback, nothing left half-done).

Each row is data: an id, the input (built by a named setup function in a fresh folder), the command line, the
expected exit code and a regular expression the single `error:` line must match. The commands run through the real
entry point (`carspotter.cli.main`), with stderr captured as a pipe, so an `error:` line that rich would wrap at 80
columns shows up as a broken line here.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
from cli_support import run_main
from PIL import Image
from synthetic_support import rewrite_first_annotation

from carspotter.data.synth import synthesize

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
RECIPE = Path(__file__).resolve().parents[1] / "configs" / "stanford_ghostnet.yaml"
SPACE = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "stanford_ghostnet.yaml"
LONG = "a-folder-name-long-enough-that-any-error-line-naming-it-is-wider-than-eighty-columns"


class Row(NamedTuple):
    id: str
    setup: str  # name of a function below that builds the input in the row's folder
    command: str  # carspotter arguments; {tmp}, {ckpt}, {onnx}, {data} are filled in
    code: int
    message: str  # regular expression the one error line must match
    env: dict[str, str] = {}


# fmt: off
TABLE: list[Row] = [
    # prepare: sources outside RAW (issue 11, item 1)
    Row("prepare-absolute-relative_im_path", "annotation_absolute", "prepare {tmp}/raw {tmp}/out", 2,
        r"cars_annos\.mat: refusing to prepare: 1 annotation\(s\) have a relative_im_path leading outside .*/home/me"),
    Row("prepare-dotdot-relative_im_path", "annotation_dotdot", "prepare {tmp}/raw {tmp}/out", 2,
        r"refusing to prepare: .*relative_im_path leading outside the image folder .*car_ims/\.\./\.\./home"),
    Row("prepare-dotdot-fname", "original_fname_dotdot", "prepare {tmp}/raw {tmp}/out", 2,
        r"cars_test_annos_withlabels\.mat: refusing .*fname leading outside .*\.\./\.\./home/me/private\.jpg"),
    Row("prepare-symlink-out-of-raw", "symlinked_image", "prepare {tmp}/raw {tmp}/out", 2,
        r"refusing to prepare: 1 image\(s\) lead outside RAW .*car_ims/000001\.jpg"),
    Row("prepare-hostile-tar", "tar_with_dotdot", "prepare {tmp}/raw {tmp}/out", 2,
        r"car_ims\.tgz: refusing to extract member 'car_ims/\.\./\.\./evil\.txt'"),
    Row("prepare-raw-missing", "nothing", "prepare {tmp}/no-such-raw {tmp}/out", 2, r"no-such-raw: no such folder"),
    Row("prepare-unknown-layout", "empty_raw", "prepare {tmp}/raw {tmp}/out", 2, r"not a known raw dataset layout"),
    # read-only or impossible output folders, checked before any work (item 3)
    Row("prepare-out-under-a-file", "synthetic_raw", "prepare {tmp}/raw {tmp}/raw/cars_annos.mat/out", 2,
        r"out: cannot be used as the prepared dataset folder: .*cars_annos\.mat is a file, not a folder"),
    Row("prepare-out-not-writable", "synthetic_raw", "prepare {tmp}/raw /proc/self/carspotter-out", 2,
        r"/proc/self/carspotter-out: cannot write the prepared dataset folder here"),
    Row("train-runs-dir-under-a-file", "blocker_file",
        "train -c " + str(DEMO) + " --set data.path={data} --set output.runs_dir={tmp}/blocker/runs", 2,
        r"runs: cannot be used as the runs folder: .*blocker is a file, not a folder"),
    Row("evaluate-out-under-a-file", "blocker_file", "evaluate {ckpt} --data {data} --out {tmp}/blocker/eval", 2,
        r"eval: cannot be used as the report folder: .*blocker is a file"),
    Row("evaluate-out-not-writable", "nothing", "evaluate {ckpt} --data {data} --out /proc/self/eval", 2,
        r"/proc/self/eval: cannot write the report folder here"),
    Row("export-out-under-a-file", "blocker_file", "export {ckpt} -o {tmp}/blocker/model.onnx", 2,
        r"blocker: cannot be used as the export folder: .*blocker is a file"),
    Row("export-out-not-writable", "nothing", "export {ckpt} -o /proc/self/model.onnx", 2,
        r"/proc/self: cannot write the export folder here"),
    # errors raised inside DataLoader worker processes (item 3)
    Row("evaluate-corrupt-image-in-a-worker", "corrupt_test_images", "evaluate {ckpt} --data {tmp}/prepared", 2,
        r"prepared/test/\S+\.jpg: not a readable image"),
    Row("train-corrupt-image-in-a-worker", "corrupt_train_images",
        "train -c " + str(DEMO) + " --set data.path={tmp}/prepared --set output.runs_dir={tmp}/runs "
        "--set data.num_workers=1 --set data.pipeline=classic --set data.image_size=[32,32] "
        "--set trainer.max_epochs=1 --set logging.loggers=[csv]", 2,
        r"prepared/train/\S+\.jpg: not a readable image"),
    # one pixel limit for every command that decodes (item 4)
    Row("predict-144-megapixel-png", "huge_png", "predict {ckpt} {tmp}/huge.png", 2,
        r"huge\.png: image has too many pixels \(12000×12000 = 144,000,000; limit 40,000,000\)"),
    Row("predict-over-a-configured-limit", "nothing", "predict {onnx} {data}/test/00001.jpg", 2,
        r"00001\.jpg: image has too many pixels .*limit 100\)", {"CARSPOTTER_MAX_PIXELS": "100"}),
    Row("predict-bad-pixel-limit", "nothing", "predict {onnx} {data}/test/00001.jpg", 2,
        r"CARSPOTTER_MAX_PIXELS='lots': must be a positive whole number", {"CARSPOTTER_MAX_PIXELS": "lots"}),
    Row("predict-not-an-image", "text_file", "predict {onnx} {tmp}/notes.jpg", 2, r"notes\.jpg: not a readable image"),
    Row("predict-unknown-model-type", "text_file", "predict {tmp}/notes.jpg {data}/test/00001.jpg", 2,
        r"unknown model type '\.jpg'"),
    # error lines are never wrapped, and markup-like text in them is printed as it is (item 3)
    Row("predict-missing-image-long-path", "nothing", "predict {onnx} {tmp}/" + LONG + "/[red]photo[/red].jpg", 2,
        LONG + r"/\[red\]photo\[/red\]\.jpg: no such file"),
    # the server (item 5)
    Row("serve-bad-cors-origin", "nothing", "serve {onnx} --cors-origin ftp://cars.example/path", 2,
        r"--cors-origin 'ftp://cars\.example/path': expected a site's origin"),
    Row("serve-a-checkpoint", "nothing", "serve {ckpt}", 2, r"serve runs an exported \.onnx model"),
    # configuration mistakes
    Row("train-unknown-key", "nothing", "train -c " + str(DEMO) + " --set trainer.max_epoch=2", 2,
        r"trainer\.max_epoch"),
    Row("train-without-config", "nothing", "train", 2, r"train needs --config FILE"),
    # issue 35: every one of these was a traceback (exit 1) or a silent success
    Row("train-image-size-zero", "nothing", "train -c " + str(DEMO) + " --set data.path={data} "
        "--set output.runs_dir={tmp}/runs --set data.image_size=0", 2,
        r"data\.image_size: height and width must be at least 8 pixels, got \[0, 0\]"),
    Row("train-image-size-negative", "nothing", "train -c " + str(DEMO) + " --set data.image_size=-5", 2,
        r"data\.image_size: height and width must be at least 8 pixels"),
    Row("prepare-zero-byte-annotations", "zero_byte_annotations", "prepare {tmp}/raw {tmp}/out", 2,
        r"cars_annos\.mat: not a readable MATLAB \.mat file \(Mat file appears to be truncated\)"),
    Row("prepare-out-inside-raw", "synthetic_raw", "prepare {tmp}/raw {tmp}/raw/out --layout folders", 2,
        r"raw/out: OUT lies inside RAW"),
    Row("prepare-raw-inside-out", "synthetic_raw", "prepare {tmp}/raw {tmp}", 2, r"OUT contains RAW"),
    Row("prepare-other-raw-into-complete-out", "raw_and_a_prepared_copy", "prepare {tmp}/raw {tmp}/prepared", 2,
        r"OUT was prepared from \S+, not from \S+/raw \(\d+ files"),
    Row("sweep-unknown-storage", "nothing", "sweep -c " + str(RECIPE) + " --space " + str(SPACE) +
        " --storage nosuchdb://x --set data.path={data} --set output.runs_dir={tmp}/runs", 2,
        r"--storage nosuchdb://x: not a usable Optuna storage .*nosuchdb"),
    Row("app-out-is-a-file", "blocker_file", "app {onnx} -o {tmp}/blocker", 2, r"blocker: exists and is not a folder"),
    Row("app-out-not-writable", "nothing", "app {onnx} -o /proc/self/site", 2,
        r"/proc/self/site: cannot write the output folder here"),
    Row("app-into-a-foreign-folder", "foreign_folder", "app {onnx} -o {tmp}/mine", 2,
        r"mine: exists, holds files carspotter app did not write \(\.git, CNAME\).*--overwrite"),
    Row("stats-plot-is-a-folder", "nothing", "stats {data} --plot {tmp}", 2, r": is a folder; the plot needs a file"),
    Row("stats-plot-not-writable", "nothing", "stats {data} --plot /proc/self/stats.png", 2,
        r"/proc/self: cannot write the plot folder here"),
    Row("models-profile-out-is-a-file", "blocker_file", "models --profile --filter ghostnet_050 --out {tmp}/blocker",
        2, r"blocker: exists and is not a folder"),
    Row("runs-plot-is-a-folder", "nothing", "runs {run} --plot {tmp}", 2, r": is a folder; the plot needs a file"),
    Row("report-out-is-a-folder", "nothing", "report {run} -o {tmp}", 2, r": is a folder; the report needs a file"),
    Row("report-out-not-writable", "nothing", "report {run} -o /proc/self/report.html", 2,
        r"/proc/self: cannot write the report folder here"),
    Row("synth-out-not-writable", "nothing", "synth /proc/self/synth", 2,
        r"/proc/self/synth: cannot write the synthetic dataset folder here"),
    Row("synth-out-under-a-file", "blocker_file", "synth {tmp}/blocker/raw", 2, r"blocker is a file, not a folder"),
    Row("export-over-an-existing-file", "existing_export", "export {ckpt} -o {tmp}/model.onnx --data {data}", 2,
        r"model\.onnx: a file of that name exists; --overwrite replaces it"),
    Row("export-over-a-link", "linked_export", "export {ckpt} -o {tmp}/model.onnx --data {data}", 2,
        r"model\.onnx: a symbolic link of that name exists; --overwrite replaces it"),
    Row("export-dataset-gone", "checkpoint_without_its_data", "export {tmp}/moved.ckpt -o {tmp}/m.onnx", 2,
        r"moved\.ckpt: the dataset it was trained on \(\S+/gone\) is not there .*--data PREPARED.*--check-random"),
    Row("serve-negative-max-bytes", "nothing", "serve {onnx} --max-bytes -1", 2,
        r"--max-bytes -1: the largest upload must be at least 1 byte"),
    Row("serve-bad-allowed-host", "nothing", "serve {onnx} --allowed-host http://cars.example/", 2,
        r"--allowed-host 'http://cars\.example/': expected a host name"),
]
# fmt: on


# ---------------------------------------------------------------------------------------------- input builders


def nothing(tmp: Path, data: Path) -> None:
    pass


def empty_raw(tmp: Path, data: Path) -> None:
    (tmp / "raw").mkdir()
    (tmp / "raw" / "photos.zip").write_bytes(b"x")


def synthetic_raw(tmp: Path, data: Path, layout: str = "updated", archives: bool = False) -> None:
    synthesize(tmp / "raw", layout=layout, num_classes=2, per_class=2, seed=3, archives=archives)


def _private_photo(tmp: Path) -> Path:
    private = tmp / "home" / "me" / "private.jpg"
    private.parent.mkdir(parents=True)
    shutil.copy(next((tmp / "raw").rglob("*.jpg")), private)
    return private


def annotation_absolute(tmp: Path, data: Path) -> None:
    synthetic_raw(tmp, data)
    rewrite_first_annotation(tmp / "raw" / "cars_annos.mat", "relative_im_path", str(_private_photo(tmp)))


def annotation_dotdot(tmp: Path, data: Path) -> None:
    synthetic_raw(tmp, data)
    _private_photo(tmp)
    rewrite_first_annotation(tmp / "raw" / "cars_annos.mat", "relative_im_path", "car_ims/../../home/me/private.jpg")


def original_fname_dotdot(tmp: Path, data: Path) -> None:
    synthetic_raw(tmp, data, layout="original")
    _private_photo(tmp)
    rewrite_first_annotation(tmp / "raw" / "cars_test_annos_withlabels.mat", "fname", "../../home/me/private.jpg")


def symlinked_image(tmp: Path, data: Path) -> None:
    synthetic_raw(tmp, data)
    image = tmp / "raw" / "car_ims" / "000001.jpg"
    shutil.move(image, tmp / "private.jpg")
    image.symlink_to(tmp / "private.jpg")


def tar_with_dotdot(tmp: Path, data: Path) -> None:
    import io
    import tarfile

    synthetic_raw(tmp, data, archives=True)
    with tarfile.open(tmp / "raw" / "car_ims.tgz", "w:gz") as tar:
        member = tarfile.TarInfo("car_ims/../../evil.txt")
        member.size = 5
        tar.addfile(member, io.BytesIO(b"pwned"))


def blocker_file(tmp: Path, data: Path) -> None:
    (tmp / "blocker").write_text("a file where a folder should be")


def _copy_prepared(tmp: Path, data: Path, split: str) -> None:
    shutil.copytree(data, tmp / "prepared")
    for image in (tmp / "prepared" / split).rglob("*.jpg"):
        image.write_bytes(image.read_bytes()[:200])  # truncated JPEGs


def corrupt_test_images(tmp: Path, data: Path) -> None:
    _copy_prepared(tmp, data, "test")


def corrupt_train_images(tmp: Path, data: Path) -> None:
    _copy_prepared(tmp, data, "train")


def huge_png(tmp: Path, data: Path) -> None:
    Image.new("1", (12000, 12000)).save(tmp / "huge.png")  # 144 Mpx in a few kB; 432 MB once decoded to RGB


def text_file(tmp: Path, data: Path) -> None:
    (tmp / "notes.jpg").write_text("not a photo")


def raw_and_a_prepared_copy(tmp: Path, data: Path) -> None:
    """A raw dataset, and a copy of the session's prepared dataset (built from another RAW) as OUT."""
    synthetic_raw(tmp, data)
    shutil.copytree(data, tmp / "prepared")


def zero_byte_annotations(tmp: Path, data: Path) -> None:
    synthetic_raw(tmp, data)
    (tmp / "raw" / "cars_annos.mat").write_bytes(b"")


def foreign_folder(tmp: Path, data: Path) -> None:
    (tmp / "mine" / ".git").mkdir(parents=True)
    (tmp / "mine" / "CNAME").write_text("cars.example\n")


def existing_export(tmp: Path, data: Path) -> None:
    (tmp / "model.onnx").write_text("the user's own file")


def linked_export(tmp: Path, data: Path) -> None:
    (tmp / "elsewhere.txt").write_text("the link's target")
    (tmp / "model.onnx").symlink_to(tmp / "elsewhere.txt")


def checkpoint_without_its_data(tmp: Path, data: Path) -> None:
    """A copy of the trained checkpoint whose run's dataset has since been moved away (here: never existed)."""
    import torch

    ckpt = torch.load(_TRAINED[0], map_location="cpu", weights_only=True)
    ckpt["carspotter"]["config"]["data"]["path"] = str(tmp / "gone")
    torch.save(ckpt, tmp / "moved.ckpt")


SETUPS: dict[str, Callable[[Path, Path], None]] = {
    f.__name__: f
    for f in (
        nothing,
        empty_raw,
        synthetic_raw,
        annotation_absolute,
        annotation_dotdot,
        original_fname_dotdot,
        symlinked_image,
        tar_with_dotdot,
        blocker_file,
        corrupt_test_images,
        corrupt_train_images,
        huge_png,
        text_file,
        zero_byte_annotations,
        raw_and_a_prepared_copy,
        foreign_folder,
        existing_export,
        linked_export,
        checkpoint_without_its_data,
    )
}


# ------------------------------------------------------------------------------------------------------ runner


@pytest.mark.parametrize("row", TABLE, ids=[r.id for r in TABLE])
def test_hostile_input_gets_one_error_line(
    row: Row,
    tmp_path: Path,
    trained_checkpoint: Path,
    exported_onnx: Path,
    synthetic_prepared: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _TRAINED[:] = [trained_checkpoint]
    SETUPS[row.setup](tmp_path, synthetic_prepared)
    for name, value in row.env.items():
        monkeypatch.setenv(name, value)
    before = _outside_files(tmp_path)
    prepared_before = _listing(synthetic_prepared)
    command = row.command.format(tmp=tmp_path, ckpt=trained_checkpoint, onnx=exported_onnx, data=synthetic_prepared,
                                 run=trained_checkpoint.parent)
    code, _, err = run_main(shlex.split(command), capsys, monkeypatch)

    assert code == row.code, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert re.search(row.message, errors[0]), errors[0]  # whole: a wrapped line would cut it
    assert _outside_files(tmp_path) == before  # nothing outside the command's output was moved or deleted
    assert _listing(synthetic_prepared) == prepared_before  # nor anything in the dataset the commands read
    if "image-size" in row.id:  # a config refused is refused before a run folder or an MLflow run exists
        assert not (tmp_path / "runs").exists()
    for name in ("model.onnx", "elsewhere.txt", "mine/CNAME"):  # the user's files, as they were
        if (tmp_path / name).exists():
            assert (tmp_path / name).read_text() in ("the user's own file", "the link's target", "cars.example\n")


_TRAINED: list[Path] = []  # the session's trained checkpoint, for the setups that derive a file from it


def _listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


def _outside_files(tmp: Path) -> dict[str, bytes]:
    """The files a hostile prepare could reach out to (``home/``, the private photo)."""
    return {str(p): p.read_bytes() for p in [*tmp.glob("home/**/*.jpg"), *tmp.glob("private.jpg")]}


def test_the_table_covers_every_command_that_takes_user_input() -> None:
    commands = {shlex.split(r.command)[0] for r in TABLE}
    assert {"prepare", "train", "evaluate", "predict", "export", "serve", "app", "stats", "synth", "sweep", "report",
            "runs", "models"} <= commands
    assert len(TABLE) == len({r.id for r in TABLE}) and all(r.setup in SETUPS for r in TABLE)
