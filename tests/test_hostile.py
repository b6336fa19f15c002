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
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
from PIL import Image
from synthetic_support import rewrite_first_annotation

from carspotter.cli import main
from carspotter.data.synth import synthesize

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
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
    )
}


# ------------------------------------------------------------------------------------------------------ runner


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """Run ``carspotter ARGS`` through the real entry point; (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["carspotter", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main()
    code = done.value.code
    return (code if isinstance(code, int) else 1), capsys.readouterr().err


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
    SETUPS[row.setup](tmp_path, synthetic_prepared)
    for name, value in row.env.items():
        monkeypatch.setenv(name, value)
    before = _outside_files(tmp_path)
    command = row.command.format(tmp=tmp_path, ckpt=trained_checkpoint, onnx=exported_onnx, data=synthetic_prepared)
    code, err = run_cli(shlex.split(command), capsys, monkeypatch)

    assert code == row.code, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert re.search(row.message, errors[0]), errors[0]  # whole: a wrapped line would cut it
    assert _outside_files(tmp_path) == before  # nothing outside the command's output was moved or deleted


def _outside_files(tmp: Path) -> dict[str, bytes]:
    """The files a hostile prepare could reach out to (``home/``, the private photo)."""
    return {str(p): p.read_bytes() for p in [*tmp.glob("home/**/*.jpg"), *tmp.glob("private.jpg")]}


def test_the_table_covers_every_command_that_takes_user_input() -> None:
    commands = {shlex.split(r.command)[0] for r in TABLE}
    assert {"prepare", "train", "evaluate", "predict", "export", "serve"} <= commands
    assert len(TABLE) == len({r.id for r in TABLE}) and all(r.setup in SETUPS for r in TABLE)
