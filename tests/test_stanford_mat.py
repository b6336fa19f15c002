"""The Stanford devkit `.mat` format: what is written reads back equal, typed as MATLAB saved the genuine files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from carspotter.data.stanford_mat import (
    LABELLED_FIELDS,
    UNLABELLED_FIELDS,
    UPDATED_FIELDS,
    Annotation,
    mat_bytes,
    pil_box,
    read_annotations,
    read_class_names,
)
from carspotter.errors import UserError

CLASSES = ["AM General Hummer SUV 2000", "Ford F-150 Regular Cab 2012", "smart fortwo Convertible 2012"]


def _annotations(fields: tuple[str, ...]) -> list[Annotation]:
    """Annotations with exactly ``fields`` set; numbers on both sides of the uint8/uint16 boundaries."""
    boxes = [(1, 2, 255, 256), (39, 116, 569, 375), (300, 1, 65535, 70000)]
    return [
        Annotation(
            bbox=box,
            cls=(i % len(CLASSES)) + 1 if "class" in fields else None,
            fname=f"{i + 1:05d}.jpg" if "fname" in fields else None,
            relative_im_path=f"car_ims/{i + 1:06d}.jpg" if "relative_im_path" in fields else None,
            test=bool(i % 2) if "test" in fields else None,
        )
        for i, box in enumerate(boxes)
    ]


@pytest.mark.parametrize("fields", [UPDATED_FIELDS, LABELLED_FIELDS, UNLABELLED_FIELDS])
def test_annotations_and_class_names_round_trip(tmp_path: Path, fields: tuple[str, ...]) -> None:
    written = _annotations(fields)
    path = tmp_path / "annos.mat"
    path.write_bytes(mat_bytes(annotations=written, fields=fields, class_names=CLASSES))
    assert read_annotations(path, fields) == written
    assert read_class_names(path) == CLASSES


def test_written_fields_are_typed_as_the_genuine_files(tmp_path: Path) -> None:
    path = tmp_path / "cars_annos.mat"
    path.write_bytes(mat_bytes(annotations=_annotations(UPDATED_FIELDS), fields=UPDATED_FIELDS, class_names=CLASSES))
    mat = scipy.io.loadmat(path)
    ann = mat["annotations"]
    assert ann.shape == (1, 3) and ann.dtype.names == UPDATED_FIELDS
    assert ann[0, 0]["bbox_x1"].dtype == np.uint8 and ann[0, 0]["bbox_x1"].shape == (1, 1)
    assert ann[0, 0]["bbox_y2"].dtype == np.uint16  # 256 does not fit a uint8
    assert ann[0, 2]["bbox_y2"].dtype == np.int32  # nor 70000 a uint16
    assert ann[0, 0]["relative_im_path"].dtype.kind == "U" and ann[0, 0]["relative_im_path"][0] == "car_ims/000001.jpg"
    assert mat["class_names"].shape == (1, 3) and str(mat["class_names"][0, 2][0]) == CLASSES[2]


def test_meta_file_holds_only_class_names(tmp_path: Path) -> None:
    path = tmp_path / "cars_meta.mat"
    path.write_bytes(mat_bytes(class_names=CLASSES))
    assert [k for k in scipy.io.loadmat(path) if not k.startswith("__")] == ["class_names"]
    assert read_class_names(path) == CLASSES
    with pytest.raises(UserError, match="no 'annotations' in this .mat file"):
        read_annotations(path, LABELLED_FIELDS)


def test_missing_field_and_malformed_entry_are_user_errors(tmp_path: Path) -> None:
    path = tmp_path / "cars_test_annos.mat"
    path.write_bytes(mat_bytes(annotations=_annotations(UNLABELLED_FIELDS), fields=UNLABELLED_FIELDS))
    with pytest.raises(UserError, match="lacks the field\\(s\\) class"):
        read_annotations(path, LABELLED_FIELDS)
    bad = np.empty((1, 1), dtype=[(f, object) for f in UNLABELLED_FIELDS])
    bad[0, 0] = ("left", np.array([[1]]), np.array([[2]]), np.array([[3]]), "00001.jpg")
    scipy.io.savemat(path, {"annotations": bad})
    with pytest.raises(UserError, match="entry 1 is malformed"):
        read_annotations(path, UNLABELLED_FIELDS)


def test_writing_a_field_the_annotation_lacks_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="class"):
        mat_bytes(annotations=_annotations(UNLABELLED_FIELDS), fields=LABELLED_FIELDS)


def test_matlab_box_becomes_a_pil_box() -> None:
    assert pil_box((1, 1, 10, 20)) == (0, 0, 10, 20)  # 1-based inclusive -> 0-based, right/bottom exclusive


@pytest.mark.realdata
def test_genuine_devkit_round_trips(stanford_shared: Path, tmp_path: Path) -> None:
    devkit = stanford_shared / "devkit"
    for name, fields in (("cars_train_annos.mat", LABELLED_FIELDS), ("cars_test_annos.mat", UNLABELLED_FIELDS)):
        genuine = read_annotations(devkit / name, fields)
        ours = tmp_path / name
        ours.write_bytes(mat_bytes(annotations=genuine, fields=fields))
        assert read_annotations(ours, fields) == genuine, name
    classes = read_class_names(devkit / "cars_meta.mat")
    (tmp_path / "cars_meta.mat").write_bytes(mat_bytes(class_names=classes))
    assert read_class_names(tmp_path / "cars_meta.mat") == classes and len(classes) == 196
