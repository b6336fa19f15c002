"""Make, model and year from class names (`carspotter.formats.car_names`), on the names of real Stanford Cars."""

from __future__ import annotations

from pathlib import Path

import pytest

from carspotter.errors import UserError
from carspotter.formats.car_names import CarName, car_names, parse_car_name


@pytest.mark.parametrize(
    ("name", "make", "model", "year"),
    [
        ("AM General Hummer SUV 2000", "AM General", "AM General Hummer SUV", 2000),
        ("Aston Martin V8 Vantage Convertible 2012", "Aston Martin", "Aston Martin V8 Vantage Convertible", 2012),
        ("Land Rover LR2 SUV 2012", "Land Rover", "Land Rover LR2 SUV", 2012),
        ("Mercedes-Benz 300-Class Convertible 1993", "Mercedes-Benz", "Mercedes-Benz 300-Class Convertible", 1993),
        ("smart fortwo Convertible 2012", "smart", "smart fortwo Convertible", 2012),
        ("Ram C/V Cargo Van Minivan 2012", "Ram", "Ram C/V Cargo Van Minivan", 2012),
        ("Alfa Romeo Giulia 2017", "Alfa Romeo", "Alfa Romeo Giulia", 2017),
        # no year at the end: the whole name at every level, never an error
        ("sedan", "sedan", "sedan", None),
        ("Audi A4", "Audi A4", "Audi A4", None),
        ("2012", "2012", "2012", None),
        ("Ford Model T 1066", "Ford Model T 1066", "Ford Model T 1066", None),  # not a car's year
    ],
)
def test_the_rule_on_names_of_every_shape(name: str, make: str, model: str, year: int | None) -> None:
    assert parse_car_name(name) == CarName(make, model, year)


def test_every_real_stanford_cars_name_parses(stanford_shared: Path) -> None:
    from carspotter.data.stanford_mat import read_class_names

    names = read_class_names(stanford_shared / "devkit" / "cars_meta.mat")
    assert len(names) == 196
    parsed = [parse_car_name(n) for n in names]
    for name, car in zip(names, parsed, strict=True):
        assert car.year is not None and f"{car.model} {car.year}" == name, name
        assert car.model == car.make or car.model.startswith(car.make + " "), name
    makes = {car.make for car in parsed}
    assert len(makes) == 49  # Stanford Cars' 49 makes
    assert {"AM General", "Aston Martin", "Land Rover", "Mercedes-Benz", "Rolls-Royce", "smart"} <= makes
    assert not makes & {"AM", "Aston", "Land"}  # a make of two words is never cut at its first
    # the models: one per name without its year, fewer than the classes (several years of one model)
    assert len({car.model for car in parsed}) < 196


def test_given_columns_win_and_bad_ones_are_one_line_errors() -> None:
    names = ["Audi A4 Sedan 2012", "my car"]
    given = [{"make": "Audi", "model": "Audi A4", "year": "2012"}, {"make": "Mine", "model": "Mine old", "year": ""}]
    assert car_names(names, given) == [CarName("Audi", "Audi A4", 2012), CarName("Mine", "Mine old", None)]
    with pytest.raises(UserError, match="2 rows for 3 classes"):
        car_names([*names, "x"], given)
    with pytest.raises(UserError, match="year 'soon' is not a year"):
        car_names(["a"], [{"make": "a", "model": "a", "year": "soon"}])
    with pytest.raises(UserError, match="missing 'model'"):
        car_names(["a"], [{"make": "a"}])
    with pytest.raises(UserError, match="must not be empty"):
        car_names(["a"], [{"make": " ", "model": "a"}])
