"""The compiled fast path agrees with jsonschema (Draft 2020-12) on every schema and instance it accepts."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from mcp_guard.grants.fastschema import compile_fast
from mcp_guard.grants.model import GrantValidator

scalars = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-3, 3, allow_nan=False) | st.sampled_from(
    ["", "a", "ab", "/srv/x", "b/a", "/srv/../etc", "file:///srv/x", "~/x", "/SRV/x", "/srv/x\\..\\..", "/srv/se\u0301"])
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3), max_leaves=6)
types = st.sampled_from(["object", "array", "string", "boolean", "null", "number", "integer"])


def _schema(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {},
        optional={
            "type": types | st.lists(types, min_size=1, max_size=3, unique=True),
            "enum": st.lists(scalars, min_size=1, max_size=3),
            "const": scalars,
            "pattern": st.sampled_from(["^a", "b$", "^/srv/", "a+"]),
            "minLength": st.integers(0, 3), "maxLength": st.integers(0, 3),
            "minimum": st.integers(-2, 2), "maximum": st.integers(-2, 2) | st.floats(-2, 2, allow_nan=False),
            "exclusiveMinimum": st.integers(-2, 2), "exclusiveMaximum": st.integers(-2, 2),
            "minItems": st.integers(0, 2), "maxItems": st.integers(0, 2),
            "properties": st.dictionaries(st.sampled_from("abc"), inner, max_size=3),
            "required": st.lists(st.sampled_from("abc"), max_size=3, unique=True),
            "additionalProperties": inner,
            "items": inner,
            "description": st.just("annotation only"),
            "x-under": st.sampled_from(["/srv", "/srv/x", "file:///srv", ".", "b"]),
        },
    )


schemas = st.recursive(st.booleans() | _schema(st.just({})), _schema, max_leaves=4)


@settings(max_examples=800, deadline=None)
@given(schema=schemas, instance=values)
def test_fast_path_agrees_with_jsonschema(schema: Any, instance: Any) -> None:
    fast = compile_fast(schema)
    assert fast is not None
    assert fast(instance) == GrantValidator(schema).is_valid(instance)
    if "x-under" not in str(schema):
        assert fast(instance) == Draft202012Validator(schema).is_valid(instance)


def test_schemas_outside_the_subset_fall_back() -> None:
    for schema in ({"$ref": "#/$defs/x"}, {"anyOf": [{}]}, {"format": "email"}, {"type": "str"},
                   {"properties": {"a": {"allOf": []}}}, {"pattern": "("}):
        assert compile_fast(schema) is None


def test_an_unusable_x_under_root_refuses_everything() -> None:
    for root in ("~/x", "a\\b", "http://x/y", 5, ""):
        schema = {"properties": {"path": {"x-under": root}}}
        assert compile_fast(schema) is None
        assert not GrantValidator(schema).is_valid({"path": "/srv/x"})
        assert GrantValidator(schema).is_valid({})  # no path argument: nothing to judge
