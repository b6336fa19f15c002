"""Make, model and year from a class name: the structure a person reads in "Aston Martin V8 Vantage Convertible 2012".

Stanford Cars names are "Make Model [Body] Year". `parse_car_name` splits them by one rule:

- the **year** is the last word when it is a four-digit year (1886, the first car, to 2100);
- the **model** is the name without its year ("Aston Martin V8 Vantage Convertible");
- the **make** is the model's first word ("Audi", "Mercedes-Benz", "smart"), or its first two or three when they are
  a make of several words (`MULTI_WORD_MAKES`: "AM General", "Aston Martin", "Land Rover", ...).

A name without a year at its end ("sedan", "my neighbour's car") does not parse: its make and model are the whole
name and it has no year. Never an error: the answer then simply has no coarser level than the class. A user who knows
better gives the columns themselves (``make``, ``model``, ``year`` in a prepared ``classes.csv``, or a
``classes.csv`` beside their class folders). Torch-free: the server and exports read it.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carspotter.errors import UserError

# Makes of more than one word, as car makers write them (compared ignoring case). Stanford Cars has the first three.
MULTI_WORD_MAKES = (
    "AM General",
    "Aston Martin",
    "Land Rover",
    "Alfa Romeo",
    "Austin Healey",
    "De Tomaso",
    "Great Wall",
    "Mercedes Benz",
    "Rolls Royce",
    "Lynk & Co",
)
_YEAR = re.compile(r"^(1[89]\d\d|20\d\d|2100)$")
COLUMNS = ("make", "model", "year")


@dataclass(frozen=True)
class CarName:
    """One class's levels: ``make`` ⊇ ``model`` (every year of it) ⊇ the class itself."""

    make: str
    model: str
    year: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"make": self.make, "model": self.model, "year": self.year}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "class columns") -> CarName:
        try:
            make, model = str(d["make"]).strip(), str(d["model"]).strip()
        except KeyError as exc:
            raise UserError(f"{where}: missing {exc.args[0]!r}") from None
        if not make or not model:
            raise UserError(f"{where}: make and model must not be empty")
        return cls(make, model, parse_year(d.get("year"), where))


def parse_year(value: Any, where: str = "class columns") -> int | None:
    """A year column's cell: empty (or None, or NaN) means no year; anything else must be a whole year."""
    if value is None or (isinstance(value, float) and value != value) or str(value).strip() == "":
        return None
    text = str(value).strip().removesuffix(".0")
    if not _YEAR.match(text):
        raise UserError(f"{where}: year {value!r} is not a year (1886 to 2100, or empty)")
    return int(text)


def parse_car_name(name: str) -> CarName:
    """"Make Model [Body] Year" → its levels, by the rule of the module docstring."""
    words = name.split()
    if len(words) < 2 or not _YEAR.match(words[-1]):
        return CarName(name, name, None)
    model_words = words[:-1]
    lowered = [w.lower() for w in model_words]
    make_words = model_words[:1]
    for make in MULTI_WORD_MAKES:
        parts = make.lower().split()
        if len(parts) <= len(model_words) and lowered[: len(parts)] == parts:
            make_words = model_words[: len(parts)]
            break
    return CarName(" ".join(make_words), " ".join(model_words), int(words[-1]))


def car_names(class_names: Sequence[str], given: Sequence[Mapping[str, Any]] | None = None) -> list[CarName]:
    """Every class's levels: ``given`` (one mapping per class, e.g. a ``classes.csv``'s rows) where supplied, else
    `parse_car_name`."""
    if given is None:
        return [parse_car_name(n) for n in class_names]
    if len(given) != len(class_names):
        raise UserError(f"class columns: {len(given)} rows for {len(class_names)} classes")
    return [CarName.from_dict(row, f"class {name!r}") for name, row in zip(class_names, given, strict=True)]


def read_classes_csv(path: Path, class_names: Sequence[str]) -> list[CarName]:
    """A user's ``classes.csv`` (columns ``class_name, make, model, year``; year may be empty): one row per class,
    every class of the dataset and no other. Anything else is a `UserError` naming the file."""
    wanted = ["class_name", *COLUMNS]
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: not a readable CSV file ({exc})") from None
    missing, extra = [c for c in wanted if c not in header], [c for c in header if c not in wanted]
    if missing or extra:
        raise UserError(
            f"{path}: columns must be {', '.join(wanted)}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unknown {', '.join(extra)}" if extra else "")
        )
    by_name: dict[str, dict[str, str]] = {}
    for row in rows:
        if row["class_name"] in by_name:
            raise UserError(f"{path}: class {row['class_name']!r} is listed twice")
        by_name[row["class_name"]] = row
    absent = [n for n in class_names if n not in by_name]
    unknown = [n for n in by_name if n not in set(class_names)]
    if absent or unknown:
        detail = [f"no row for {len(absent)} class(es), e.g. {absent[0]!r}"] if absent else []
        if unknown:
            detail.append(f"{len(unknown)} row(s) for classes the dataset does not have, e.g. {unknown[0]!r}")
        raise UserError(f"{path}: must list every class of the dataset once; {'; '.join(detail)}")
    return car_names(class_names, [by_name[n] for n in class_names])
