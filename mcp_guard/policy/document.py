"""Policy files and policy test files as written: the one description of their keys and types.

``mcp-guard schema policy|tests`` prints these models' JSON Schemas, and the readers (``parse``,
``parse_flow``, ``testing``) take every key they accept from them, so a key exists in one place.
The readers stay the judge of everything a schema cannot say (unique ids, regex syntax, the
path-safety of ``under`` roots, rules that can never match) and of the sentences users read.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, StrictBool, StrictInt, WithJsonSchema

from mcp_guard.policy.model import (
    PRINCIPAL_KEYS,
    SESSION_LABELS,
    URI_KEY,
)

ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
TOOL = re.compile(r"^[A-Za-z0-9_*?-]{1,32}/[^\s]{1,128}$")
RESOURCE = re.compile(r"^[A-Za-z0-9_*?-]{1,32}/[^\s\x00-\x1f]{1,2048}$")
ARG_PATH = re.compile(r"^args(\.[^.\[\]]+(\[\*\])*)+$")
LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
UPSTREAM = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
PART = re.compile(r"^(\*|[^.\[\]*\s]+)(\[\*\])*(\.(\*|[^.\[\]*\s]+)(\[\*\])*)*$")
MATCHES = ("content", "token")

Text = Annotated[str, Field(min_length=1)]
Id = Annotated[str, Field(pattern=ID.pattern)]
Label = Annotated[str, Field(pattern=LABEL.pattern)]
Labels = Annotated[list[Label], Field(min_length=1)]
Tools = Annotated[list[Annotated[str, Field(pattern=TOOL.pattern)]], Field(min_length=1)]
Resources = Annotated[list[Annotated[str, Field(pattern=RESOURCE.pattern)]], Field(min_length=1)]
Effects = Literal["allow", "approve", "deny"]


class Doc(BaseModel):
    """A mapping of a policy file: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True, defer_build=True)


class CarriesDoc(Doc):
    labels: Labels
    match: Literal["content", "token"] = "content"
    """content: any labelled text found in the argument; token: a whole labelled token"""


class ConditionDoc(Doc):
    """operators on one value; every one must hold"""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})
    equals: Any = None
    in_: list[Any] | None = Field(None, alias="in")
    not_in: list[Any] | None = None
    glob: Text | None = None
    regex: Text | None = None
    under: Annotated[Text, Field(json_schema_extra={"not": {"pattern": r"\\"}})] | None = None
    max_length: Annotated[StrictInt, Field(ge=0)] | None = None
    min: float | None = None
    max: float | None = None
    present: StrictBool | None = None
    carries: Labels | CarriesDoc | None = None
    """the labelled content of the session this argument carries"""
    any_of: Labels | None = None
    all_of: Labels | None = None
    none_of: Labels | None = None


CONDITION_KEYS = (*PRINCIPAL_KEYS, URI_KEY, SESSION_LABELS)


class _ConditionKeys:
    """The JSON Schema of ``when``: its keys are the condition keys or argument paths."""

    @classmethod
    def __get_pydantic_json_schema__(cls, core: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(core)
        out["description"] = "condition key -> operators: args.<name>[.<name>...] ([*] = every element), " + ", ".join(CONDITION_KEYS)
        out["propertyNames"] = {"anyOf": [{"enum": list(CONDITION_KEYS)}, {"pattern": ARG_PATH.pattern}]}
        return out


When = Annotated[dict[str, ConditionDoc], _ConditionKeys]


def _one_selector(*others: str) -> dict[str, Any]:
    return {"anyOf": [{"required": [k]} for k in ("tools", "resources", "prompts", *others)]}


class AnnotationsDoc(Doc):
    readOnlyHint: StrictBool | None = None
    destructiveHint: StrictBool | None = None
    idempotentHint: StrictBool | None = None
    openWorldHint: StrictBool | None = None


class RuleDoc(Doc):
    """allow, approve or deny the tools (resources, prompts) it names, when every condition holds"""

    model_config = ConfigDict(json_schema_extra=_one_selector())
    id: Id | None = None
    effect: Effects
    tools: Tools | None = None
    resources: Resources | None = None
    prompts: Tools | None = None
    annotations: AnnotationsDoc | None = None
    """select tools by their annotations"""
    when: When | None = None
    reason: Text | None = None


class LimitDoc(Doc):
    """a rate limit and/or call budget per session"""

    model_config = ConfigDict(json_schema_extra={"allOf": [_one_selector(),
                                                           {"anyOf": [{"required": ["per_minute"]}, {"required": ["per_session"]}]}]})
    tools: Tools | None = None
    resources: Resources | None = None
    prompts: Tools | None = None
    per_minute: Annotated[StrictInt, Field(ge=1)] | None = None
    per_session: Annotated[StrictInt, Field(ge=1)] | None = None


class SubjectsDoc(Doc):
    """globs on the origin user, acting agent, purpose"""

    users: list[Text] | None = None
    agents: list[Text] | None = None
    purposes: list[Text] | None = None


class PolicyDoc(Doc):
    id: Id
    description: Text | None = None
    mode: Literal["enforce", "shadow"] = "enforce"
    """shadow: decided and audited, never enforced"""
    subjects: SubjectsDoc | None = None
    rules: list[RuleDoc]
    limits: list[LimitDoc] | None = None


class LabelEntryDoc(Doc):
    """what a forwarded request selected here brings into the session"""

    model_config = ConfigDict(json_schema_extra=_one_selector("upstreams"))
    tools: Tools | None = None
    resources: Resources | None = None
    prompts: Tools | None = None
    upstreams: Annotated[list[Annotated[str, Field(pattern=UPSTREAM.pattern)]], Field(min_length=1)] | None = None
    when: When | None = None
    brings: Labels
    parts: Annotated[list[Annotated[str, Field(pattern=PART.pattern)]], Field(min_length=1)] | None = None
    """where in the result the labelled content is: dotted keys, * (every value of a map), [*] (every element)"""


class PolicyFileDoc(Doc):
    """mcp-guard policy file"""

    model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": ["policies"]}, {"required": ["labels"]}]})
    version: Literal[1]
    labels: list[LabelEntryDoc] | None = None
    policies: list[PolicyDoc] | None = None


# --------------------------------------------------------------------------- policy test files

_CALLED = {"type": "string", "pattern": "/"}


class PrincipalDoc(Doc):
    model_config = ConfigDict(json_schema_extra={"not": {"required": ["agent", "agents"]}})
    user: str
    agent: str | None = None
    agents: list[str] | None = None
    """the delegation chain, origin side first"""
    purpose: str | None = None


class CallDoc(Doc):
    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": [k]} for k in ("tool", "resource", "prompt")]})
    tool: Annotated[str, WithJsonSchema(_CALLED)] | None = None
    resource: Text | None = None
    prompt: Annotated[str, WithJsonSchema(_CALLED)] | None = None
    upstream: Annotated[str, Field(pattern=UPSTREAM.pattern)] | None = None
    """the upstream of a bare `resource` URI"""
    args: dict[str, Any] | None = None
    annotations: dict[str, Any] | None = None
    workdir: Annotated[str, Field(pattern="^/")] | None = None
    """the upstream's declared working directory, for relative paths"""


class SessionDoc(Doc):
    """the labels the session holds before the call"""

    labels: list[Label]


class HistoryDoc(Doc):
    tool: Annotated[str, WithJsonSchema(_CALLED)]
    args: dict[str, Any] | None = None
    result: Any = None


class CaseDoc(Doc):
    name: Text
    principal: PrincipalDoc
    call: CallDoc
    expect: Effects
    visible: StrictBool | None = None
    decided_by: str | list[str] | None = None
    session: SessionDoc | None = None
    history: list[HistoryDoc] | None = None
    """earlier forwarded calls of the session, oldest first"""


class TestFileDoc(Doc):
    """mcp-guard policy test file"""

    __test__ = False  # not a pytest class
    cases: Annotated[list[CaseDoc], Field(min_length=1)]
    policies: str | list[str] | None = None
    """the policy files this file runs against, relative to it"""


def keys(model: type[BaseModel]) -> tuple[str, ...]:
    """The keys a mapping of ``model`` accepts, as written in the file."""
    return tuple(f.alias or name for name, f in model.model_fields.items())

