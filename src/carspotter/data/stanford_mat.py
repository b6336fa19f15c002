"""The Stanford Cars devkit's ``.mat`` files, written and read in one place.

What the genuine files hold, as MATLAB saved them and `scipy.io.loadmat` returns them:

- ``annotations``: a 1×N struct array; every field a 1×1 array of the smallest unsigned integer type that holds the
  number, or a char array. Its fields: `UPDATED_FIELDS` in ``cars_annos.mat`` (the updated release),
  `LABELLED_FIELDS` in ``cars_train_annos.mat`` and ``cars_test_annos_withlabels.mat``, `UNLABELLED_FIELDS` in
  ``cars_test_annos.mat``.
- ``class_names``: a 1×C cell of char arrays, in ``cars_meta.mat`` and ``cars_annos.mat``; class ``k`` (1-based, the
  ``class`` field) is entry ``k - 1``.

Boxes are MATLAB's 1-based inclusive pixel coordinates; `pil_box` turns them into the PIL boxes the rest of carspotter
uses. `synth` (through `stanford.write_stanford_raw`) writes these files and `stanford` reads them, both through here.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from carspotter.errors import UserError

BOX_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")
UPDATED_FIELDS = ("relative_im_path", *BOX_FIELDS, "class", "test")
LABELLED_FIELDS = (*BOX_FIELDS, "class", "fname")
UNLABELLED_FIELDS = (*BOX_FIELDS, "fname")


@dataclass(frozen=True)
class Annotation:
    """One entry of an ``annotations`` struct array; a field the file does not have is None."""

    bbox: tuple[int, int, int, int]  # MATLAB 1-based inclusive (x1, y1, x2, y2)
    cls: int | None = None  # the ``class`` field: 1-based
    fname: str | None = None  # original release: the file name inside cars_train/ or cars_test/
    relative_im_path: str | None = None  # updated release: e.g. "car_ims/000001.jpg"
    test: bool | None = None  # updated release: whether the image is in the test split


def pil_box(bbox: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """MATLAB 1-based inclusive (x1, y1, x2, y2) -> PIL box (0-based, right/bottom exclusive)."""
    x1, y1, x2, y2 = bbox
    return x1 - 1, y1 - 1, x2, y2


# -------------------------------------------------------------------------------------------------------- write


def _mat_int(value: int) -> np.ndarray:
    """A 1×1 unsigned array of the smallest type, as MATLAB saved the genuine annotation files."""
    value = int(value)
    dtype = np.uint8 if 0 <= value < 256 else np.uint16 if 0 <= value < 65536 else np.int32
    return np.array([[value]], dtype=dtype)


def mat_struct(rows: list[dict[str, Any]], fields: tuple[str, ...]) -> np.ndarray:
    """A 1×N MATLAB struct array (numpy object record array) with ints as 1×1 arrays and strs as char arrays."""
    arr = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        for f in fields:
            v = row[f]
            arr[0, i][f] = str(v) if isinstance(v, str) else _mat_int(v)
    return arr


def mat_cell(strings: list[str]) -> np.ndarray:
    """A 1×N MATLAB cell of char arrays."""
    cell = np.empty((1, len(strings)), dtype=object)
    for i, s in enumerate(strings):
        cell[0, i] = s
    return cell


def _fields_of(annotation: Annotation, fields: tuple[str, ...]) -> dict[str, Any]:
    values: dict[str, Any] = {
        **dict(zip(BOX_FIELDS, annotation.bbox, strict=True)),
        "class": annotation.cls,
        "fname": annotation.fname,
        "relative_im_path": annotation.relative_im_path,
        "test": None if annotation.test is None else int(annotation.test),
    }
    lacking = [f for f in fields if values.get(f) is None]
    if lacking:
        raise ValueError(f"annotation {annotation} has no value for {', '.join(lacking)}")
    return {f: values[f] for f in fields}


def mat_bytes(
    *,
    annotations: list[Annotation] | None = None,
    fields: tuple[str, ...] = LABELLED_FIELDS,
    class_names: list[str] | None = None,
) -> bytes:
    """A ``.mat`` file (MATLAB 5, compressed) holding ``annotations`` (with ``fields``) and/or ``class_names``."""
    variables: dict[str, np.ndarray] = {}
    if annotations is not None:
        variables["annotations"] = mat_struct([_fields_of(a, fields) for a in annotations], fields)
    if class_names is not None:
        variables["class_names"] = mat_cell(class_names)
    buf = io.BytesIO()
    scipy.io.savemat(buf, variables, format="5", do_compression=True)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------------- read


def load_mat(path: Path) -> dict[str, Any]:
    try:
        return scipy.io.loadmat(str(path))
    except (ValueError, OSError, TypeError, NotImplementedError, KeyError, scipy.io.matlab.MatReadError) as exc:
        why = str(exc) or type(exc).__name__
        raise UserError(f"{path}: not a readable MATLAB .mat file ({why}); download it again") from None


def _scalar(value: Any) -> Any:
    """A loadmat struct field (a 1×1 number array or a 1-element string array) as a Python int or str."""
    arr = np.asarray(value)
    while arr.dtype == object and arr.size == 1:
        arr = np.asarray(arr.ravel()[0])
    if arr.dtype.kind in "US":
        return str(arr.ravel()[0]).strip() if arr.size else ""
    if arr.size != 1:
        raise ValueError(f"expected one value, got shape {arr.shape}")
    return arr.ravel()[0].item()


def read_struct(path: Path, key: str, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """The rows of the struct array ``key`` in a .mat file, each a dict of Python ints/strs."""
    mat = load_mat(path)
    if key not in mat:
        found = ", ".join(k for k in mat if not k.startswith("__")) or "nothing"
        raise UserError(f"{path}: no '{key}' in this .mat file (it holds {found}); is this the right file?")
    arr = mat[key]
    names = arr.dtype.names or ()
    lacking = [f for f in required if f not in names]
    if lacking:
        raise UserError(
            f"{path}: '{key}' lacks the field(s) {', '.join(lacking)} (has {', '.join(names) or 'none'}); "
            "is this the right file?"
        )
    rows = []
    for i, item in enumerate(arr.ravel()):
        try:
            rows.append({f: _scalar(item[f]) for f in names})
        except (ValueError, IndexError) as exc:
            raise UserError(f"{path}: '{key}' entry {i + 1} is malformed ({exc})") from None
    return rows


def read_annotations(path: Path, fields: tuple[str, ...]) -> list[Annotation]:
    """The ``annotations`` of a devkit file, which must have every one of ``fields`` (each of the field lists above:
    the box is in all of them); the fields not asked for are left None."""
    annotations = []
    for i, row in enumerate(read_struct(path, "annotations", fields)):
        try:
            x1, y1, x2, y2 = (int(row[f]) for f in BOX_FIELDS)
            annotations.append(
                Annotation(
                    bbox=(x1, y1, x2, y2),
                    cls=int(row["class"]) if "class" in fields else None,
                    fname=str(row["fname"]) if "fname" in fields else None,
                    relative_im_path=str(row["relative_im_path"]) if "relative_im_path" in fields else None,
                    test=bool(int(row["test"])) if "test" in fields else None,
                )
            )
        except (ValueError, TypeError) as exc:
            raise UserError(f"{path}: 'annotations' entry {i + 1} is malformed ({exc})") from None
    return annotations


def read_class_names(path: Path) -> list[str]:
    """The ``class_names`` cell of ``cars_meta.mat`` (or ``cars_annos.mat``): class id i (1-based) is entry i-1."""
    mat = load_mat(path)
    if "class_names" not in mat:
        raise UserError(f"{path}: no 'class_names' in this .mat file; is this the devkit's cars_meta.mat?")
    names = [str(_scalar(v)) for v in np.asarray(mat["class_names"]).ravel()]
    if not names:
        raise UserError(f"{path}: 'class_names' is empty")
    return names
