"""JSON Schemas (2020-12) of guard.yaml, policy files and policy test files, for editors.

The keys each block accepts are taken from the parsers' own key tables (``config._UPSTREAM``,
``policy.parse._RULE``, ...), so a key added to a parser appears here and a key removed from one
disappears; only the type of each key is written down below.  A key the parser accepts whose type
is not written here yet is still allowed (any value), never rejected.  The schema is the editor's
first line of help; the parsers stay the judge (``mcp-guard check``): cross-file rules such as
unique policy ids, regex syntax and path-safety of ``under`` roots are theirs alone.

``mcp-guard schema config|policy|tests`` prints these; ``schemas/*.schema.json`` are the committed
copies editors load through the ``# yaml-language-server: $schema=...`` modeline.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mcp_guard.config.document import GuardDoc
from mcp_guard.policy import model as _model
from mcp_guard.policy import parse as _parse
from mcp_guard.policy import parse_flow as _flow
from mcp_guard.policy import testing as _testing
from mcp_guard.typedoc import DIALECT, json_schema

FILES = {"config": "guard.schema.json", "policy": "policy.schema.json", "tests": "policy-tests.schema.json"}

Schema = dict[str, Any]

_TEXT: Schema = {"type": "string", "minLength": 1}
_TEXTS: Schema = {"type": "array", "items": _TEXT}
# guard.yaml scalars are strings after ${VAR} expansion; numbers are read as their text
_SCALAR: Schema = {"type": ["string", "number"]}
_SCALAR_MAP: Schema = {"type": ["object", "null"], "additionalProperties": _SCALAR}
_BOOL: Schema = {"type": "boolean"}
_DURATION: Schema = {
    "description": "seconds, or a duration such as 500ms, 30s, 10m, 1h, 1d",
    "anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"}],
}
_POSITIVE: Schema = {"type": "integer", "minimum": 1}


def _choice(*values: str) -> Schema:
    return {"enum": list(values)}


def _block(keys: Iterable[str], types: Mapping[str, Schema], description: str | None = None, *,
           nullable: bool = True) -> Schema:
    """An object accepting exactly ``keys`` (the parser's table), typed from ``types``."""
    out: Schema = {"type": ["object", "null"] if nullable else "object"}
    if description:
        out["description"] = description
    out["properties"] = {k: types.get(k, {"description": "accepted by mcp-guard; see docs/configuration.md"}) for k in sorted(keys)}
    out["additionalProperties"] = False
    return out


# --------------------------------------------------------------------------- guard.yaml


def config_schema() -> Schema:
    """guard.yaml, from its document model."""
    return json_schema(GuardDoc, "mcp-guard guard.yaml")


# --------------------------------------------------------------------------- policy files

_OPERAND: dict[str, Schema] = {
    "equals": {},
    "in": {"type": "array"},
    "not_in": {"type": "array"},
    "glob": _TEXT,
    "regex": _TEXT,
    "under": {**_TEXT, "not": {"pattern": r"\\"}},
    "max_length": {"type": "integer", "minimum": 0},
    "min": {"type": "number"},
    "max": {"type": "number"},
    "present": _BOOL,
}
_LABELS: Schema = {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": _flow.LABEL.pattern}}
_OPERAND["carries"] = {"anyOf": [_LABELS, {"type": "object", "additionalProperties": False, "required": ["labels"],
                                           "properties": {"labels": _LABELS, "match": {"enum": list(_flow.MATCHES)}}}]}


def _condition_keys() -> list[str]:
    """The non-argument condition keys the parser accepts (``user``, ``agent``, ..., ``uri``)."""
    keys = [*_model.PRINCIPAL_KEYS, getattr(_model, "URI_KEY", None), _model.SESSION_LABELS]
    return [k for k in keys if k]


def policy_schema() -> Schema:
    """A policy file (``version: 1``, ``policies: [...]``)."""
    selectors = [k for k in ("tools", "resources", "prompts") if k in _parse._RULE]
    keys = _condition_keys()
    condition = {"type": "object", "minProperties": 1, "additionalProperties": False,
                 "properties": {**{op: _OPERAND.get(op, {}) for op in _model.OPERATORS},
                                **dict.fromkeys(_model.LABEL_OPERATORS, _LABELS)}}
    shapes = {"tools": _parse.TOOL, "prompts": _parse.TOOL, "resources": getattr(_parse, "RESOURCE", _parse.TOOL)}
    lists: dict[str, Schema] = {k: {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": shapes[k].pattern}}
                                for k in selectors}
    rule = _block(_parse._RULE, {
        "id": {"type": "string", "pattern": _parse.ID.pattern},
        "effect": {"enum": list(_parse._EFFECTS)},
        **lists,
        "annotations": {"type": "object", "additionalProperties": False, "properties": dict.fromkeys(_model.ANNOTATION_HINTS, _BOOL)},
        "when": {"type": "object",
                 "propertyNames": {"anyOf": [{"enum": keys}, {"pattern": _parse.ARG_PATH.pattern}]},
                 "additionalProperties": {"$ref": "#/$defs/condition"}},
        "reason": _TEXT,
    }, "allow, approve or deny the tools (resources, prompts) it names, when every condition holds", nullable=False)
    rule["required"] = ["effect"]
    rule["anyOf"] = [{"required": [s]} for s in selectors]
    limit = _block(_parse._LIMIT, {**lists, "per_minute": _POSITIVE, "per_session": _POSITIVE},
                   "a rate limit and/or call budget per session", nullable=False)
    limit["allOf"] = [{"anyOf": [{"required": [s]} for s in selectors]},
                      {"anyOf": [{"required": ["per_minute"]}, {"required": ["per_session"]}]}]
    subjects = _block(_parse._SUBJECTS, dict.fromkeys(_parse._SUBJECTS, _TEXTS), "globs on the origin user, acting agent, purpose")
    policy = _block(_parse._POLICY, {
        "id": {"type": "string", "pattern": _parse.ID.pattern},
        "description": _TEXT,
        "mode": {"enum": list(getattr(_model, "MODES", ("enforce",)))},
        "subjects": subjects,
        "rules": {"type": "array", "items": {"$ref": "#/$defs/rule"}},
        "limits": {"type": "array", "items": {"$ref": "#/$defs/limit"}},
    }, nullable=False)
    policy["required"] = ["id", "rules"]
    entry = _block(_flow._ENTRY, {
        **lists, "upstreams": {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": _flow.UPSTREAM.pattern}},
        "when": rule["properties"]["when"], "brings": _LABELS,
        "parts": {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": _flow.PART.pattern}},
    }, "what a forwarded request selected here brings into the session", nullable=False)
    entry["required"] = ["brings"]
    entry["anyOf"] = [{"required": [s]} for s in [*selectors, "upstreams"]]
    top = _block(_parse._TOP, {"version": {"const": 1}, "policies": {"type": "array", "items": {"$ref": "#/$defs/policy"}},
                               "labels": {"type": "array", "items": {"$ref": "#/$defs/label_entry"}}},
                 nullable=False)
    return {"$schema": DIALECT, "title": "mcp-guard policy file", **top, "required": ["version"],
            "anyOf": [{"required": ["policies"]}, {"required": ["labels"]}],
            "$defs": {"policy": policy, "rule": rule, "limit": limit, "condition": condition, "label_entry": entry}}


# --------------------------------------------------------------------------- policy test files


def tests_schema() -> Schema:
    """A policy test file (``*.test.yaml``)."""
    principal = _block(_testing._PRINCIPAL, {"user": {"type": "string"}, "agent": {"type": "string"},
                                              "agents": {"type": "array", "items": {"type": "string"}},
                                              "purpose": {"type": "string"}}, nullable=False)
    principal["required"] = ["user"]
    principal["not"] = {"required": ["agent", "agents"]}
    targets = [k for k in ("tool", "resource", "prompt") if k in _testing._CALL]
    call = _block(_testing._CALL, {"tool": {"type": "string", "pattern": "/"}, "prompt": {"type": "string", "pattern": "/"},
                                   "resource": _TEXT, "upstream": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{1,32}$"},
                                   "args": {"type": "object"}, "annotations": {"type": "object"},
                                   "workdir": {"type": "string", "pattern": "^/"}}, nullable=False)
    call["oneOf"] = [{"required": [t]} for t in targets]
    case = _block(_testing._CASE, {
        "name": _TEXT, "principal": principal, "call": call, "expect": {"enum": list(_testing._EXPECT)},
        "visible": _BOOL, "decided_by": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "session": _block(("labels",), {"labels": {"type": "array", "items": {"type": "string", "pattern": _flow.LABEL.pattern}}},
                          "the labels the session holds before the call", nullable=False),
        "history": {"type": "array", "description": "earlier forwarded calls of the session, oldest first",
                    "items": {**_block(_testing._HISTORY, {"tool": {"type": "string", "pattern": "/"}, "args": {"type": "object"},
                                                            "result": {}}, nullable=False), "required": ["tool"]}},
    }, nullable=False)
    case["required"] = ["name", "principal", "call", "expect"]
    top = _block(_testing._TOP, {"cases": {"type": "array", "minItems": 1, "items": case},
                                 "policies": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}},
                 nullable=False)
    return {"$schema": DIALECT, "title": "mcp-guard policy test file", **top, "required": ["cases"]}


SCHEMAS = {"config": config_schema, "policy": policy_schema, "tests": tests_schema}
