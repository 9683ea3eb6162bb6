"""Every number in the training config has its range in the model: a property test refuses each
out-of-range value (and NaN/infinity) with a message naming the key, and a numeric field without
a declared range fails the test, so the next field cannot arrive unbounded.
"""

from __future__ import annotations

import math
import types
import typing

import annotated_types as at
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from tunery.config import TrainConfig, validate_train_config
from tunery.errors import ConfigError


def _bounds(metadata) -> dict:
    found = {}
    for item in metadata:
        for kind in ("ge", "gt", "le", "lt"):
            value = getattr(item, kind, None)
            if isinstance(item, getattr(at, kind.capitalize())) and value is not None:
                found[kind] = value
        found.update(_bounds(getattr(item, "metadata", ())))
    return found


def _numeric_members(annotation):
    """(type, bounds) of each int/float member of a field's annotation."""
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    members = typing.get_args(annotation) if is_union else (annotation,)
    for member in members:
        if typing.get_origin(member) is typing.Annotated:
            base, *meta = typing.get_args(member)
            if base in (int, float):
                yield base, _bounds(meta)
        elif member in (int, float):
            yield member, {}


def numeric_fields(model: type[BaseModel] = TrainConfig, prefix: str = ""):
    """(dotted key, type, bounds) for every int or float leaf of the config."""
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from numeric_fields(field.annotation, f"{prefix}{name}.")
            continue
        for kind, bounds in _numeric_members(field.annotation):
            yield f"{prefix}{name}", kind, {**_bounds(field.metadata), **bounds}


FIELDS = list(numeric_fields())
# A plain integer with no meaningful range: none today. Add a key here only with a reason.
UNBOUNDED_ON_PURPOSE: set[str] = set()


def test_every_numeric_field_declares_a_lower_bound():
    assert len(FIELDS) >= 20
    missing = [key for key, _, bounds in FIELDS if not ({"ge", "gt"} & set(bounds)) and key not in UNBOUNDED_ON_PURPOSE]
    assert missing == []


def _nest(key: str, value) -> dict:
    raw: dict = {}
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return raw


@st.composite
def out_of_range(draw):
    key, kind, bounds = draw(st.sampled_from(FIELDS))
    options = []
    integers = kind is int
    if "ge" in bounds:
        options.append(st.integers(max_value=math.ceil(bounds["ge"]) - 1) if integers
                       else st.floats(max_value=bounds["ge"], exclude_max=True, allow_nan=False))
    if "gt" in bounds:
        options.append(st.integers(max_value=math.floor(bounds["gt"])) if integers
                       else st.floats(max_value=bounds["gt"], allow_nan=False))
    if "le" in bounds:
        options.append(st.integers(min_value=math.floor(bounds["le"]) + 1) if integers
                       else st.floats(min_value=bounds["le"], exclude_min=True, allow_nan=False))
    if "lt" in bounds:
        options.append(st.integers(min_value=math.ceil(bounds["lt"])) if integers
                       else st.floats(min_value=bounds["lt"], allow_nan=False))
    if not integers:
        options.append(st.sampled_from([math.nan, math.inf, -math.inf]))
    return key, draw(st.one_of(options))


@settings(max_examples=400, deadline=None)
@given(out_of_range())
def test_every_out_of_range_number_is_refused_naming_its_key(case):
    key, value = case
    with pytest.raises(ConfigError) as caught:
        validate_train_config(_nest(key, value))
    assert key in caught.value.message


@pytest.mark.parametrize("key, value", [
    ("train.max_grad_norm", -1), ("train.max_grad_norm", 0), ("train.batch_size", 0), ("train.batch_size", -2),
    ("train.learning_rate", -0.001), ("train.learning_rate", 0), ("train.epochs", 0), ("train.warmup_steps", -1),
    ("train.seed", -1), ("lora.layers", 0),
])
def test_the_probed_values_are_refused(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_train_config(_nest(key, value))


def test_null_grad_norm_and_auto_stay_valid():
    config = validate_train_config({"train": {"max_grad_norm": None, "epochs": "auto", "warmup_steps": 0}})
    assert config.train.max_grad_norm is None and config.train.warmup_steps == 0


def test_lora_layers_beyond_the_model_are_refused_where_the_model_is_known():
    from tunery.config import LoraConfig
    from tunery.training.auto import resolve_lora_layers

    with pytest.raises(ConfigError, match=r"lora\.layers: 999 is more than the 30 decoder layers"):
        resolve_lora_layers(LoraConfig(layers=999), method="lora", num_layers=30, facts=False)
    assert resolve_lora_layers(LoraConfig(layers=30), method="lora", num_layers=30, facts=False)[0].layers == 30


def test_config_validate_refuses_a_negative_grad_norm(tmp_path):
    from typer.testing import CliRunner

    from tunery.cli import _register, app

    path = tmp_path / "train.yaml"
    path.write_text("train:\n  max_grad_norm: -1\n")
    _register()
    result = CliRunner().invoke(app, ["config", "validate", str(path)])
    assert result.exit_code == 2 and "max_grad_norm: Input should be greater than 0" in result.output


@pytest.mark.parametrize("key, value", [("train.max_steps", 10**30), ("train.max_steps", 2**31), ("lora.rank", 10**12),
                                        ("data.max_seq_len", 10**12), ("train.threads", 10**9),
                                        ("train.save_every_steps", 2**63)])
def test_a_count_too_big_for_the_store_or_memory_is_refused(key, value):
    section, field = key.split(".")
    with pytest.raises(ConfigError, match=field):
        validate_train_config({"data": {"train": "t.jsonl"}, section: {field: value}} if section != "data"
                              else {"data": {"train": "t.jsonl", field: value}})
