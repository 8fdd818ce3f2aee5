"""The document models' validation errors as the sentences ``mcp-guard check`` prints.

The one place that words what pydantic found wrong in a policy file or a policy test file: each
error is placed at the YAML position of its key or value (``file:line:col``) and said in the
words users already know ("unknown effect `alow` (did you mean `allow`?)").  A mapping's name
("a rule") and the sentence for a missing key come from the model (``WHAT``, ``NEEDS``); what a
wrong value of a key means is said here, per key.
"""

from __future__ import annotations

from typing import Any, TypeVar, get_args, get_origin

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from mcp_guard.policy.document import (
    CARRIES_TAGS,
    AnnotationsDoc,
    CallDoc,
    CarriesDoc,
    ConditionDoc,
    Doc,
    HistoryDoc,
    LabelEntryDoc,
    PolicyDoc,
    PolicyFileDoc,
    PrincipalDoc,
    SessionDoc,
    SubjectsDoc,
    TestFileDoc,
    keys,
)
from mcp_guard.policy.model import OPERATORS, SELECTORS, SESSION_LABELS, Effect
from mcp_guard.typedoc import KEY_ERROR, salvage, unwrap
from mcp_guard.yamlsrc import Path, SourceReader, did_you_mean

D = TypeVar("D", bound=Doc)
EFFECTS = tuple(e.value for e in Effect)
"""The effects a rule may ask for and a test case may expect."""

Said = tuple[str, str | None]  # a sentence and its hint

_EXAMPLE = {"tools": '["fs/read_file"] or ["time/*"]', "resources": '["docs/*"] or ["fs/file:///srv/*"]', "prompts": '["git/*"]'}
_LABEL_LISTS = ("brings", "any_of", "all_of", "none_of", "carries", "labels")
_LABEL = "label `{}` must be lower-case letters, digits, _ and - (starting with a letter)"


def _whole(owner: type[Doc], key: str | None) -> tuple[str, bool] | None:
    """The one sentence every error of ``key`` (None: of the mapping) gets, and whether it is placed
    at the mapping rather than at the key."""
    if owner is SessionDoc:
        return "`session` takes `labels: [...]` (label names)", True
    if owner is HistoryDoc:
        return "a history entry needs `tool: UPSTREAM/TOOL`, optional `args` and `result`", True
    if owner is PrincipalDoc and key in ("agent", "agents"):
        return "principal takes `agent` (a string) or `agents` (a list, origin side first)", True
    if owner is TestFileDoc and key == "policies":
        return "`policies` must be a path or a list of paths", False
    if key == "decided_by":
        return "`decided_by` must be a policy id or a list of them", False
    if key == "upstreams":
        return "`upstreams` needs a non-empty list of upstream names", False
    return None


def validated(model: type[D], data: Any, r: SourceReader) -> D | None:
    """``data`` validated by ``model``; on errors, each is recorded on ``r`` and the valid parts
    are returned (``typedoc.salvage``: ``valid`` is False), None when ``data`` is no mapping."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        return salvage(model, data, (), report(exc, model, r))


def report(exc: ValidationError, root: type[Doc], r: SourceReader) -> list[Path]:
    """Record every error of ``exc`` (validating ``root``) on ``r``, once each; returns the places
    that failed, for ``typedoc.salvage`` (an error on a mapping's key ends with ``[key]``)."""
    places: list[Path] = []
    said: set[tuple[Path, str]] = set()
    for err in exc.errors(include_url=False):
        raw = tuple(err["loc"])
        on_key = KEY_ERROR in raw
        loc = _plain(raw)
        places.append((*loc, KEY_ERROR) if on_key else loc)
        at, message, hint, at_value = _sentence(root, raw, loc, err)
        if (at, message) not in said:
            said.add((at, message))
            r.error(at, message, hint, value=at_value and not on_key)
    return places


def _plain(loc: tuple[Any, ...]) -> Path:
    """``loc`` as a YAML place: without pydantic's key marker and the form a ``carries`` was read as."""
    return tuple(p for i, p in enumerate(loc) if p != KEY_ERROR and not (p in CARRIES_TAGS and i and loc[i - 1] == "carries"))


def _split(root: type[Doc], loc: tuple[Any, ...]) -> tuple[type[Doc], int, str | None, tuple[Any, ...]]:
    """``(owner, n, key, rest)``: the deepest model on ``loc`` (reached after ``n`` steps), the key
    of it the error is about (None: the mapping itself) and the steps below that key."""
    owner, i = root, 0
    while i < len(loc):
        key = loc[i]
        if key == KEY_ERROR:
            return owner, i, None, ()
        field = next((f for name, f in owner.model_fields.items() if (f.alias or name) == key), None)
        if field is None:
            return owner, i, str(key), loc[i + 1:]
        below, steps = _model_below(field.annotation, loc[i + 1:])
        if below is None or i + 1 + steps > len(loc):
            return owner, i, str(key), loc[i + 1 + steps:] if below is None else loc[i + 1:]
        owner, i = below, i + 1 + steps
    return owner, i, None, ()


def _model_below(annotation: Any, rest: tuple[Any, ...]) -> tuple[type[Doc] | None, int]:
    """The model a field holds (directly, as list items or map values, or as the ``carries``
    mapping form) and how many steps of ``rest`` lead to it; ``(None, n)`` for a plain value."""
    tp = unwrap(annotation)
    if isinstance(tp, type) and issubclass(tp, Doc):
        return tp, 0
    if get_origin(tp) in (list, tuple, dict):
        item = unwrap(get_args(tp)[-1])
        return (item, 1) if isinstance(item, type) and issubclass(item, Doc) else (None, 0)
    if rest and rest[0] in CARRIES_TAGS:
        return (CarriesDoc, 1) if rest[0] == CARRIES_TAGS[1] else (None, 1)
    return None, 0


def _sentence(root: type[Doc], raw: tuple[Any, ...], loc: Path, err: ErrorDetails) -> tuple[Path, str, str | None, bool]:
    """``(place, message, hint, at the value?)`` for one error."""
    owner, n, key, rest = _split(root, raw)
    place = _plain(raw[:n])
    kind, value, ctx = err["type"], err["input"], dict(err.get("ctx") or {})
    if kind == "whole":
        return loc, err["msg"], ctx.get("hint"), True
    if KEY_ERROR in raw:  # a key of a mapping, not its value
        return loc, f"key `{loc[-1]}` must be a string", None, False
    if kind not in ("extra_forbidden", "missing") and (whole := _whole(owner, key)) is not None:
        return (place if whole[1] or key is None else (*place, key)), whole[0], None, True
    if key is None:  # the mapping itself
        if owner is ConditionDoc:
            return place, f"condition `{place[-1]}` must map operators to values", "for example {under: /srv/data} or {in: [a, b]}", True
        hint = "for example {tools: [web/fetch], brings: [untrusted]}" if owner is LabelEntryDoc else None
        return place, f"{owner.WHAT} must be a mapping", hint, True
    if kind == "extra_forbidden":
        if owner is ConditionDoc and place[-1] == SESSION_LABELS:
            return (*place, key), f"`{key}` does not apply to `{SESSION_LABELS}`", "session.labels takes any_of, all_of and none_of", False
        return (*place, key), *_unknown(owner, key), False
    if kind == "missing":
        message, hint = owner.NEEDS.get(key, (f"{owner.WHAT} needs `{key}`", None))
        return place, message, hint, True  # at the mapping that lacks it
    items = [p for p in _plain(rest) if isinstance(p, int)]
    where = (*place, key, *_plain(rest))
    if items:
        return where, *_item(owner, key, value), True
    return where, *_value(owner, key, kind, value), True


def _unknown(owner: type[Doc], key: str) -> Said:
    if owner is ConditionDoc:
        return f"unknown operator `{key}`", did_you_mean(key, OPERATORS) or f"operators: {', '.join(OPERATORS)}"
    known = keys(owner)
    if owner is CarriesDoc:
        return f"unknown key `{key}` in `carries`", did_you_mean(key, known) or "carries takes labels and match"
    return f"unknown key `{key}` in {owner.WHAT}", did_you_mean(key, known) or f"expected one of {', '.join(known)}"


def _item(owner: type[Doc], key: str, value: Any) -> Said:
    """A wrong element of a list."""
    if key in SELECTORS and isinstance(value, str) and value:
        if key == "resources":
            return (f"resource `{value}` must be written UPSTREAM/URI_GLOB",
                    "the upstream part is a glob within a segment, the URI part a glob where * crosses /, e.g. docs/* or fs/file:///srv/*")
        return f"{key[:-1]} `{value}` must be written UPSTREAM/{key[:-1].upper()}", "globs may use * within a segment, e.g. fs/read_* or */delete*"
    if key in SELECTORS:
        return f"`{key}` entries must be non-empty strings", None
    if owner is SubjectsDoc:
        return f"`subjects.{key}` entries must be non-empty strings", None
    if key in _LABEL_LISTS:
        return _LABEL.format(value), None
    if key == "parts":
        return f"part `{value}` must be a dotted path of keys, `*` (every value of a map) and `[*]` (every list element)", None
    return f"`{key}` entries are not valid", None


def _value(owner: type[Doc], key: str, kind: str, value: Any) -> Said:
    """A wrong value of ``key`` in ``owner``."""
    strings = f'write {key}: ["..."]' if isinstance(value, str) else None
    if owner is PolicyFileDoc and key in _FILE:
        return _FILE[key]
    if key == "id":
        return f"{'policy' if owner is PolicyDoc else 'rule'} id `{value}` must be letters, digits and _.:@- (at most 128)", None
    if key == "effect":
        return f"unknown effect `{value}`", did_you_mean(str(value), EFFECTS) or "allow, approve or deny"
    if key == "expect":
        return f"`expect` must be allow, deny or approve, not `{value}`", did_you_mean(str(value), EFFECTS)
    if key == "mode":
        return f"unknown mode `{value}`", "enforce (the default) or shadow (decided and audited, never enforced)"
    if key in SELECTORS and owner is not SubjectsDoc and kind == "too_short":
        return f"`{key}` must name at least one {key[:-1]}", f"for example {key}: {_EXAMPLE[key]}"
    if owner is SubjectsDoc:
        return f"`subjects.{key}` must be a list of strings", strings
    if owner is AnnotationsDoc:
        return f"annotation `{key}` must be true or false", None
    if owner is CallDoc and key in ("workdir", "upstream"):
        return ("`call.workdir` must be an absolute path" if key == "workdir" else "`call.upstream` names the upstream of a bare `resource` URI"), None
    if owner is CallDoc:
        return f"`call.{key}` must be {'a mapping' if key in ('args', 'annotations') else 'a string'}", None
    if owner is CarriesDoc and key == "match":
        return f"`match` must be content or token, not `{value}`", None
    if key in _LABEL_LISTS and owner is not PolicyFileDoc:
        return f"`{key}` needs a non-empty list of labels", f"for example {key}: [untrusted]"
    return _SAID.get(key) or _generic(key, kind, strings)


_FILE: dict[str, Said] = {  # the top-level keys of a policy file
    "version": ("`version` must be 1", "start the file with `version: 1`"),
    "policies": ("a policy file needs a list of `policies`", None),
    "labels": ("`labels` must be a list of entries", "- {tools: [web/fetch], brings: [untrusted]}"),
}
_SAID: dict[str, Said] = {  # what a wrong value of these keys is
    "description": ("`description` must be a non-empty string", None),
    "reason": ("`reason` must be a non-empty string", None),
    "rules": ("policy needs a list of `rules`", None),
    "limits": ("`limits` must be a list", None),
    "per_minute": ("`per_minute` must be a positive integer", None),
    "per_session": ("`per_session` must be a positive integer", None),
    "when": ("`when` must map condition keys to operators", None),
    "in": ("`in` needs a list of values", "in: [a, b]"),
    "not_in": ("`not_in` needs a list of values", "not_in: [a, b]"),
    "glob": ("`glob` needs a non-empty string", None),
    "regex": ("`regex` needs a non-empty string", None),
    "under": ("`under` needs a non-empty string", None),
    "max_length": ("`max_length` needs a non-negative integer", None),
    "min": ("`min` needs a number", 'write it unquoted: min: 1, not min: "1"'),
    "max": ("`max` needs a number", 'write it unquoted: max: 1, not max: "1"'),
    "present": ("`present` needs true or false", None),
    "parts": ("`parts` needs a non-empty list of paths", 'for example parts: ["subject", "reviews.*", "items[*].body"]'),
    "cases": ("a policy test file needs a non-empty list of `cases`", None),
    "policies": ("`policies` must be a path or a list of paths", None),
    "name": ("test case needs a `name`", None),
    "user": ("principal needs a `user` string", None),
    "purpose": ("`purpose` must be a string", None),
    "history": ("`history` must be a list of {tool, args, result}", None),
    "visible": ("`visible` must be true or false", None),
}


def _generic(key: str, kind: str, strings: str | None) -> Said:
    """What any other key's wrong value is: by the kind of value it needs."""
    if kind.startswith("bool"):
        return f"`{key}` must be true or false", None
    if kind in ("list_type", "too_short") or key in SELECTORS:
        return f"`{key}` must be a list of strings", strings
    if kind.startswith("string"):
        return f"`{key}` must be a string", None
    return f"`{key}` has a value of the wrong kind", None
