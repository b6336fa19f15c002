"""The configuration reference is generated from the config models: every key is in it, described, with its default."""

from __future__ import annotations

import re
import types
from typing import Any, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from carspotter.config import Config, Transform, reference_markdown


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model of a field typed ``Model`` or ``Model | None`` (not a list of models)."""
    union = get_origin(annotation) in (Union, types.UnionType)
    for candidate in get_args(annotation) if union else (annotation,):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _keys(model: type[BaseModel], prefix: str) -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        nested = _model_in(field.annotation)
        if prefix:
            keys.append(key)
        if nested is not None:
            keys += _keys(nested, key)
    return keys


def _section_models() -> set[type[BaseModel]]:
    """Every model reachable from `Config`, lists of transforms included."""
    found: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [Config]
    while todo:
        model = todo.pop()
        if model in found:
            continue
        found.add(model)
        for field in model.model_fields.values():
            for candidate in (field.annotation, *get_args(field.annotation)):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    todo.append(candidate)
    return found


def _row(key: str) -> list[str]:
    """The cells of ``key``'s row in the reference: key, type, default, description."""
    for line in reference_markdown().splitlines():
        if line.startswith(f"| `{key}` |"):
            return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
    raise AssertionError(f"{key} has no row")


def test_every_key_of_the_config_is_in_the_reference() -> None:
    keys = _keys(Config, "")
    dumped = Config().model_dump()
    # the walk over the models finds every key of a default config's dump (nested sections default to null)
    flat = [f"{s}.{k}" for s, section in dumped.items() for k in section]
    assert set(flat) <= set(keys)
    assert {"optimizer.weight_decay_scaling.reference_steps", "trainer.ema.decay", "trainer.early_stopping"} <= set(
        keys
    )
    text = reference_markdown()
    missing = [k for k in keys if f"`{k}`" not in text]
    assert not missing
    for section in Config.model_fields:
        assert f"\n## {section}\n" in f"\n{text}"


def test_every_field_of_every_section_model_is_described() -> None:
    models = _section_models()
    assert Transform in models and len(models) >= 12
    undescribed = [
        f"{m.__name__}.{name}"
        for m in models
        for name, field in m.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert not undescribed


def test_the_reference_is_valid_markdown_tables() -> None:
    lines = reference_markdown().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| key |"):
            assert lines[i - 1] == "" and lines[i + 1] == "|---|---|---|---|"
        if line.startswith("|") and (i + 1 == len(lines) or not lines[i + 1].startswith("|")):
            assert i + 1 == len(lines) or lines[i + 1] == ""
        if line.startswith("| `"):
            assert len(re.split(r"(?<!\\)\|", line)) == 6, line


@pytest.mark.parametrize(
    ("key", "type_", "default"),
    [
        ("data.val_fraction", "float", "`0.1`"),
        ("data.class_balance", r"none \| sampler \| loss", "`none`"),
        ("data.image_size", "[int, int]", "`[227, 227]`"),
        ("data.cache_dir", "path or null", "`null`"),
        ("data.image_augmentations", "list of transforms", "`[]`"),
        ("loss.params", "mapping", "`{label_smoothing: 0.1}`"),
        ("trainer.max_epochs", "int", f"`{Config().trainer.max_epochs}`"),
        ("trainer.ema", "section or null", "`null`"),
        ("trainer.compile", "bool", "`false`"),
        ("optimizer.weight_decay_scaling.reference_steps", "int", "required"),
        ("output.description", "string", '`""`'),
    ],
)
def test_the_reference_shows_each_keys_type_and_default(key: str, type_: str, default: str) -> None:
    _, shown_type, shown_default, description = _row(key)
    assert (shown_type, shown_default) == (type_, default)
    assert description
    if default != "required":  # and it is the model's default, read back as YAML
        value: Any = Config().model_dump(mode="json")
        for part in key.split("."):
            value = value[part]
        assert yaml.safe_load(shown_default.strip("`")) == value
