"""Files described as pydantic models: validation errors become ``file:line:col: message`` problems.

A file's model (``config.document``, ``policy.document``) is the one description of its keys and
their types: ``mcp-guard schema`` prints its JSON Schema and the loaders validate with it.  This
module turns pydantic's errors into the guard's own sentences, placed at the YAML positions
``yamlsrc`` recorded (an unknown key at the key, with a "did you mean"; a wrong value at the value).

``salvage`` keeps the valid parts of a document that failed, so the checks that need valid values
still run on them and one pass reports every mistake.

``Rejected`` is how a field's own check says what is wrong in one sentence: ``message`` starts
with "must ..." and is shown after the key's name; an optional ``hint`` follows in parentheses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any, TypeVar, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import ErrorDetails, PydanticCustomError, core_schema

from mcp_guard.yamlsrc import Path, SourceReader, did_you_mean

M = TypeVar("M", bound=BaseModel)
KEY_ERROR = "[key]"  # pydantic's marker for a problem with a mapping's key rather than its value


def rejected(message: str, hint: str | None = None, *, whole: bool = False) -> PydanticCustomError:
    """A field check's refusal: ``must ...`` (shown after the key) or, with ``whole``, a sentence of its own."""
    return PydanticCustomError("whole" if whole else "must", message, {"hint": hint})


def fields_at(model: type[BaseModel], loc: Path) -> type[BaseModel] | None:
    """The model that describes the mapping at ``loc`` below ``model`` (through lists and maps)."""
    current: Any = model
    for step in loc:
        current = unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(step))
            if field is None:
                return None
            current = field.annotation
        elif get_origin(current) in (list, tuple, dict):
            args = [a for a in get_args(current) if a is not Ellipsis]
            current = args[-1] if args else None
        else:
            return None
    current = unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def broken(at: Path, errors: Collection[Path]) -> bool:
    """Whether any of ``errors`` (the places validation failed) is ``at`` or below it."""
    n = len(at)
    return any(e[:n] == at for e in errors)


def salvage(model: type[M], data: Any, at: Path, errors: Collection[Path]) -> M | None:
    """``data`` (found at ``at``) as ``model``, where validation failed at ``errors`` (already
    reported): the parts without an error are validated, the rest left out (a model or a mapping
    of models below is salvaged the same way), so the checks that need valid values still run on
    every valid part and one pass shows every mistake.  The result's ``_valid`` is False when it
    was built from parts; None when ``data`` is not even a mapping."""
    if not broken(at, errors):
        return model.model_validate(data)
    if not isinstance(data, dict):
        return None
    values: dict[str, Any] = {}
    given = set()
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key not in data:
            if field.is_required():
                values[key] = None  # read as absent: the model was not valid anyway
            continue
        given.add(name)
        here = (*at, key)
        if not broken(here, errors):
            probe = model.model_construct()
            model.__pydantic_validator__.validate_assignment(probe, name, data[key])
            values[key] = getattr(probe, name)
        else:
            values[key] = _salvage_part(field.annotation, data[key], here, errors)  # None: the value itself is wrong
    out = model.model_construct(given, **values)
    out._valid = False  # type: ignore[attr-defined]  # the policy and test file models carry it
    return out


def _salvage_part(annotation: Any, data: Any, at: Path, errors: Collection[Path]) -> Any:
    """The salvageable models in a broken list or mapping of models, or None."""
    tp = unwrap(annotation)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return salvage(tp, data, at, errors)
    args = [a for a in get_args(tp) if a is not Ellipsis]
    item = unwrap(args[-1]) if args else None
    if not (isinstance(item, type) and issubclass(item, BaseModel)):
        return None
    if get_origin(tp) in (list, tuple) and isinstance(data, list):
        return [salvage(item, v, (*at, i), errors) for i, v in enumerate(data)]
    if get_origin(tp) is dict and isinstance(data, dict):
        return {k: None if (*at, k, KEY_ERROR) in errors else salvage(item, v, (*at, k), errors) for k, v in data.items()}
    return None


def unwrap(tp: Any) -> Any:
    """``X | None`` and ``Annotated[X, ...]`` -> ``X``."""
    for _ in range(4):
        args = [a for a in get_args(tp) if a is not type(None)]
        if get_origin(tp) is None or get_origin(tp) in (list, tuple, dict):
            return tp
        if len(args) != 1 and not hasattr(tp, "__metadata__"):
            return tp
        tp = args[0]
    return tp


def _choices(ctx: dict[str, Any]) -> list[str]:
    return re.findall(r"'([^']*)'", str(ctx.get("expected", "")))


def _key(loc: Path) -> str:
    names = [p for p in loc if isinstance(p, str)]
    return names[-1] if names else "value"


def report(exc: ValidationError, model: type[BaseModel], r: SourceReader, what: Callable[[Path], str]) -> None:
    """Record every error of ``exc`` (validating ``model``) on ``r``; ``what(path)`` names a mapping
    in messages ("upstream `fs`", "a rule")."""
    for err in exc.errors(include_url=False):
        _one(err, model, r, what)


def _one(err: ErrorDetails, model: type[BaseModel], r: SourceReader, what: Callable[[Path], str]) -> None:
    loc: Path = tuple(p for p in err["loc"] if p != KEY_ERROR)
    on_key = KEY_ERROR in err["loc"]
    kind, ctx = err["type"], dict(err.get("ctx") or {})
    key = _key(loc)
    if kind == "extra_forbidden":
        parent = fields_at(model, loc[:-1])
        hint = did_you_mean(str(loc[-1]), list(parent.model_fields)) if parent else None
        r.error(loc, f"unknown key `{loc[-1]}` in {what(loc[:-1])}", hint, value=False)
        return
    if kind == "missing":
        parent = fields_at(model, loc[:-1])
        custom = getattr(parent, "NEEDS", {}).get(str(loc[-1])) if parent else None
        each = "each " if loc[:-1] and isinstance(loc[-2], int) else ""
        r.error(loc[:-1], custom or f"{each}{what(loc[:-1])} needs `{loc[-1]}`", value=False)
        return
    hint = ctx.get("hint")
    if kind == "whole":
        message = err["msg"]
    elif kind == "must":
        message = f"`{key}` {err['msg']}"
    elif kind == "literal_error":
        choices = _choices(ctx)
        got = err["input"]
        message = f"`{key}` must be one of {' | '.join(choices)}, not `{got}`"
        hint = did_you_mean(str(got), choices)
    elif kind in ("model_type", "dict_type", "model_attributes_type"):
        message = f"{what(loc)} must be a mapping"
    elif kind == "list_type":
        message = f"`{key}` must be a list"
    elif kind.startswith("bool"):
        message = f"`{key}` must be true or false"
    elif kind.startswith("string"):
        message = f"`{key}` must be a string"
    elif kind.startswith("int"):
        message = f"`{key}` must be an integer"
    elif kind.startswith("float"):
        message = f"`{key}` must be a number"
    else:
        message = f"`{key}`: {err['msg']}"
    r.error(loc, message, hint, value=not on_key)


DIALECT = "https://json-schema.org/draft/2020-12/schema"


class _Absent(GenerateJsonSchema):
    """An optional key is one that may be left out, not one that may be written as null."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])


def json_schema(model: type[BaseModel], title: str, *, null_is_absent: bool = False) -> dict[str, Any]:
    """``model``'s JSON Schema (2020-12) for editors: the model's own, without pydantic's
    generated per-property titles.  ``null_is_absent``: the file's reader refuses ``key: null``."""
    generator = _Absent if null_is_absent else GenerateJsonSchema
    out = _untitled(model.model_json_schema(mode="validation", schema_generator=generator), drop_null=null_is_absent)
    out.pop("description", None)
    return {"$schema": DIALECT, "title": title, **out}


def _untitled(node: Any, *, drop_null: bool) -> Any:
    if isinstance(node, dict):
        return {k: _untitled(v, drop_null=drop_null) for k, v in node.items()
                if not (k == "title" and isinstance(v, str)) and not (drop_null and k == "default" and v is None)}
    if isinstance(node, list):
        return [_untitled(v, drop_null=drop_null) for v in node]
    return node
