"""Policy files and policy test files as written: the one description of their keys and types.

``mcp-guard schema policy|tests`` prints these models' JSON Schemas, and the readers (``parse``,
``parse_flow``, ``testing``) validate every file with them, so a key, its type, its enum and
whether it is required are written once; ``messages`` turns the models' errors into the sentences
users read.  The models also judge single values a schema cannot (regex syntax, the path-safety
of ``under`` roots, condition keys); the readers keep what spans keys or files (unique ids, rules
that can never match, a condition its rule's selectors cannot supply).

A key written as ``null`` is refused (the schemas say so too), except where any value is a value
(``equals``, a history entry's ``result``): a ``reason: null`` never silently drops its rule.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    GetJsonSchemaHandler,
    ModelWrapValidatorHandler,
    PrivateAttr,
    StrictBool,
    StrictInt,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mcp_guard.paths import Under
from mcp_guard.policy.model import (
    PRINCIPAL_KEYS,
    SESSION_LABELS,
    URI_KEY,
)
from mcp_guard.typedoc import rejected
from mcp_guard.yamlsrc import did_you_mean


def _whole(body: str) -> re.Pattern[str]:
    """``body`` as the whole text.  Python's ``$`` also matches before a final newline, and the
    models validate with Python's engine, so ``(?!\\n)`` follows it; the JSON Schema's ECMA engine
    reads the pattern the same way."""
    return re.compile(rf"^{body}$(?!\n)")


ID = _whole(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
TOOL = _whole(r"[A-Za-z0-9_*?-]{1,32}/[^\s]{1,128}")
RESOURCE = _whole(r"[A-Za-z0-9_*?-]{1,32}/[^\s\x00-\x1f]{1,2048}")
ARG_PATH = _whole(r"args(\.[^.\[\]]+(\[\*\])*)+")
LABEL = _whole(r"[a-z][a-z0-9_-]{0,63}")
UPSTREAM = _whole(r"[A-Za-z0-9_-]{1,32}")
PART = _whole(r"(\*|[^.\[\]*\s]+)(\[\*\])*(\.(\*|[^.\[\]*\s]+)(\[\*\])*)*")

Text = Annotated[str, Field(min_length=1)]
Prose = Annotated[str, Field(pattern=r"\S")]  # words shown to people: not blank
Id = Annotated[str, Field(pattern=ID.pattern)]
Label = Annotated[str, Field(pattern=LABEL.pattern)]
Labels = Annotated[list[Label], Field(min_length=1)]
Tools = Annotated[list[Annotated[str, Field(pattern=TOOL.pattern)]], Field(min_length=1)]
Resources = Annotated[list[Annotated[str, Field(pattern=RESOURCE.pattern)]], Field(min_length=1)]
Effects = Literal["allow", "approve", "deny"]


class Doc(BaseModel):
    """A mapping of a policy file: unknown keys are refused, and so is a key written as ``null``.

    ``WHAT`` names the mapping in messages ("unknown key `x` in a rule"); ``NEEDS`` gives the
    sentence (and hint) for a missing required key, when "WHAT needs `key`" is not enough.
    ``valid`` is False on a model ``typedoc.salvage`` built from the valid parts of a broken one.
    """

    # python-re: the patterns' bounded repeats ({1,2048}) cost pydantic-core's regex engine ~35 ms
    # each to build at start-up; Python's re compiles them lazily (and judged them before the models did)
    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True, defer_build=True, regex_engine="python-re")
    WHAT: ClassVar[str] = "a mapping"
    NEEDS: ClassVar[dict[str, tuple[str, str | None]]] = {}
    _valid: bool = PrivateAttr(default=True)

    @property
    def valid(self) -> bool:
        return self._valid

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name is not None and cls.model_fields[info.field_name].annotation is not Any:
            raise PydanticCustomError("null", "a value is needed")
        return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise rejected(f"invalid regex `{value}`: {exc}", whole=True) from None
    return value


def _under(value: str) -> str:
    if not Under(value).usable:
        raise rejected(f"`under` root `{value}` must be a plain path (or a file:// URI) without `..` above its start, `~` or backslashes",
                       whole=True)
    return value


def _condition_key(key: str) -> str:
    if key in CONDITION_KEYS or ARG_PATH.fullmatch(key):
        return key
    hint = did_you_mean(key, (*CONDITION_KEYS, "args.")) if not key.startswith("args") else None
    raise rejected(f"unknown condition key `{key}`",
                   hint or "use args.<name>[.<name>...] ([*] = every element), uri, user, agent, purpose, chain.depth or session.labels",
                   whole=True)


class CarriesDoc(Doc):
    WHAT: ClassVar[str] = "`carries`"
    NEEDS: ClassVar[dict[str, tuple[str, str | None]]] = {"labels": ("`carries` needs `labels`", "carries: {labels: [untrusted], match: token}")}
    labels: Labels
    match: Literal["content", "token"] = "content"
    """content: any labelled text found in the argument; token: a whole labelled token"""


CARRIES_TAGS = ("label list", "carries mapping")  # how a `carries` error's place names the form it was read as


def _carries_form(value: Any) -> str:
    return CARRIES_TAGS[1] if isinstance(value, dict) else CARRIES_TAGS[0]


class ConditionDoc(Doc):
    """operators on one value; every one must hold"""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})
    WHAT: ClassVar[str] = "a condition"
    equals: Any = None
    in_: list[Any] | None = Field(None, alias="in")
    not_in: list[Any] | None = None
    glob: Text | None = None
    regex: Annotated[Text, AfterValidator(_regex)] | None = None
    under: Annotated[Text, AfterValidator(_under), Field(json_schema_extra={"not": {"pattern": r"\\"}})] | None = None
    max_length: Annotated[StrictInt, Field(ge=0)] | None = None
    min: Annotated[float, Field(allow_inf_nan=False)] | None = None
    max: Annotated[float, Field(allow_inf_nan=False)] | None = None
    present: StrictBool | None = None
    carries: Annotated[Annotated[Labels, Tag(CARRIES_TAGS[0])] | Annotated[CarriesDoc, Tag(CARRIES_TAGS[1])],
                       Discriminator(_carries_form)] | None = None
    """the labelled content of the session this argument carries"""
    any_of: Labels | None = None
    all_of: Labels | None = None
    none_of: Labels | None = None
    _written: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _as_written(cls, data: Any, handler: ModelWrapValidatorHandler[ConditionDoc]) -> ConditionDoc:
        """Keep the operators in the order and the form they were written (``min: 1`` stays 1 in reasons)."""
        doc = handler(data)
        doc._written = dict(data) if isinstance(data, dict) else {}
        return doc

    @property
    def written(self) -> dict[str, Any]:
        """The operators with their operands, as written."""
        return self._written


CONDITION_KEYS = (*PRINCIPAL_KEYS, URI_KEY, SESSION_LABELS)


class _ConditionKeys:
    """The JSON Schema of ``when``: its keys are the condition keys or argument paths."""

    @classmethod
    def __get_pydantic_json_schema__(cls, core: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(core)
        out["description"] = "condition key -> operators: args.<name>[.<name>...] ([*] = every element), " + ", ".join(CONDITION_KEYS)
        out["propertyNames"] = {"anyOf": [{"enum": list(CONDITION_KEYS)}, {"pattern": ARG_PATH.pattern}]}
        return out


When = Annotated[dict[Annotated[str, AfterValidator(_condition_key)], ConditionDoc], _ConditionKeys]


def _one_selector(*others: str) -> dict[str, Any]:
    return {"anyOf": [{"required": [k]} for k in ("tools", "resources", "prompts", *others)]}


class AnnotationsDoc(Doc):
    WHAT: ClassVar[str] = "annotations"
    readOnlyHint: StrictBool | None = None
    destructiveHint: StrictBool | None = None
    idempotentHint: StrictBool | None = None
    openWorldHint: StrictBool | None = None


class RuleDoc(Doc):
    """allow, approve or deny the tools (resources, prompts) it names, when every condition holds"""

    model_config = ConfigDict(json_schema_extra=_one_selector())
    WHAT: ClassVar[str] = "a rule"
    NEEDS: ClassVar[dict[str, tuple[str, str | None]]] = {"effect": ("rule needs an `effect`", "allow, approve or deny")}
    id: Id | None = None
    effect: Effects
    tools: Tools | None = None
    resources: Resources | None = None
    prompts: Tools | None = None
    annotations: AnnotationsDoc | None = None
    """select tools by their annotations"""
    when: When | None = None
    reason: Prose | None = None


class LimitDoc(Doc):
    """a rate limit and/or call budget per session"""

    model_config = ConfigDict(json_schema_extra={"allOf": [_one_selector(),
                                                           {"anyOf": [{"required": ["per_minute"]}, {"required": ["per_session"]}]}]})
    WHAT: ClassVar[str] = "a limit"
    tools: Tools | None = None
    resources: Resources | None = None
    prompts: Tools | None = None
    per_minute: Annotated[StrictInt, Field(ge=1)] | None = None
    per_session: Annotated[StrictInt, Field(ge=1)] | None = None


class SubjectsDoc(Doc):
    """globs on the origin user, acting agent, purpose"""

    WHAT: ClassVar[str] = "subjects"
    users: list[Text] | None = None
    agents: list[Text] | None = None
    purposes: list[Text] | None = None


class PolicyDoc(Doc):
    WHAT: ClassVar[str] = "a policy"
    NEEDS: ClassVar[dict[str, tuple[str, str | None]]] = {"id": ("policy needs an `id`", None), "rules": ("policy needs a list of `rules`", None)}
    id: Id
    description: Prose | None = None
    mode: Literal["enforce", "shadow"] = "enforce"
    """shadow: decided and audited, never enforced"""
    subjects: SubjectsDoc | None = None
    rules: list[RuleDoc]
    limits: list[LimitDoc] | None = None


class LabelEntryDoc(Doc):
    """what a forwarded request selected here brings into the session"""

    model_config = ConfigDict(json_schema_extra=_one_selector("upstreams"))
    WHAT: ClassVar[str] = "a labels entry"
    NEEDS: ClassVar[dict[str, tuple[str, str | None]]] = {"brings": ("`brings` needs a non-empty list of labels", "for example brings: [untrusted]")}
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
    WHAT: ClassVar[str] = "a policy file"
    NEEDS: ClassVar[dict[str, tuple[str, str | None]]] = {"version": ("`version` must be 1", "start the file with `version: 1`")}
    version: Literal[1]
    labels: list[LabelEntryDoc] | None = None
    policies: list[PolicyDoc] | None = None


# --------------------------------------------------------------------------- policy test files

_CALLED = {"type": "string", "pattern": "/"}


class PrincipalDoc(Doc):
    model_config = ConfigDict(json_schema_extra={"not": {"required": ["agent", "agents"]}})
    WHAT: ClassVar[str] = "principal"
    NEEDS: ClassVar[dict[str, tuple[str, str | None]]] = {"user": ("principal needs a `user` string", None)}
    user: str
    agent: str | None = None
    agents: list[str] | None = None
    """the delegation chain, origin side first"""
    purpose: str | None = None


class CallDoc(Doc):
    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": [k]} for k in ("tool", "resource", "prompt")]})
    WHAT: ClassVar[str] = "call"
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

    WHAT: ClassVar[str] = "session"
    NEEDS: ClassVar[dict[str, tuple[str, str | None]]] = {"labels": ("`session` takes `labels: [...]` (label names)", None)}
    labels: list[Label]


class HistoryDoc(Doc):
    WHAT: ClassVar[str] = "a history entry"
    NEEDS: ClassVar[dict[str, tuple[str, str | None]]] = {"tool": ("a history entry needs `tool: UPSTREAM/TOOL`, optional `args` and `result`", None)}
    tool: Annotated[str, WithJsonSchema(_CALLED)]
    args: dict[str, Any] | None = None
    result: Any = None


class CaseDoc(Doc):
    WHAT: ClassVar[str] = "a test case"
    NEEDS: ClassVar[dict[str, tuple[str, str | None]]] = {"name": ("test case needs a `name`", None),
                                                           "expect": ("test case needs `expect`", "allow, deny or approve")}
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
    WHAT: ClassVar[str] = "a policy test file"
    NEEDS: ClassVar[dict[str, tuple[str, str | None]]] = {"cases": ("a policy test file needs a non-empty list of `cases`", None)}
    cases: Annotated[list[CaseDoc], Field(min_length=1)]
    policies: str | list[str] | None = None
    """the policy files this file runs against, relative to it"""


def keys(model: type[BaseModel]) -> tuple[str, ...]:
    """The keys a mapping of ``model`` accepts, as written in the file."""
    return tuple(f.alias or name for name, f in model.model_fields.items())

