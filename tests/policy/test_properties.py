"""Invariants of the engine over generated policy sets (hypothesis)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_guard.identity import Principal
from mcp_guard.policy import (
    Condition,
    Effect,
    Kind,
    Limit,
    Policy,
    PolicySet,
    Rule,
    Subjects,
    dump,
    load_sources,
    parse_text,
)

TOOLS = ["fs/read", "fs/write", "git/log", "memory/delete_all"]
PATTERNS = [*TOOLS, "fs/*", "*/read", "*/delete*", "*/*", "g?t/log", "fs/w*e"]
NAMES = st.sampled_from(["alice@example.com", "bob@corp.test", "coder", "support-bot", "review", ""])
GLOBS = st.sampled_from(["*", "*@example.com", "alice*", "coder", "support-*", "review", "?ob@corp.test"])

VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([1.5, "1", "a", "/srv/a", "/srv/../etc", "srv/a", "/srv"]))
ARGS = st.dictionaries(st.sampled_from(["path", "n", "items", "x"]),
                       st.one_of(VALUES, st.lists(VALUES, max_size=3), st.lists(st.fixed_dictionaries({"path": VALUES}), max_size=2)),
                       max_size=4)
PRINCIPALS = st.builds(lambda u, a, p: Principal(u, tuple(x for x in a if x), p), NAMES, st.lists(NAMES, max_size=3),
                       st.one_of(st.none(), st.sampled_from(["review", "triage"])))

OPERANDS: dict[str, st.SearchStrategy[Any]] = {
    "equals": VALUES,
    "in": st.lists(VALUES, max_size=3).map(tuple),
    "not_in": st.lists(VALUES, max_size=3).map(tuple),
    "glob": st.sampled_from(["*", "/srv/*", "a", "?"]),
    "regex": st.sampled_from([".*", "[a-z]+", "/srv/.*", "1|a"]),
    "under": st.sampled_from(["/srv", "/", "srv", "/srv/a"]),
    "max_length": st.integers(0, 3),
    "min": st.integers(-2, 2),
    "max": st.sampled_from([-1, 0, 1.5, 3]),
    "present": st.booleans(),
}
KEYS = st.sampled_from(["args.path", "args.n", "args.items[*]", "args.items[*].path", "args.x", "user", "agent", "purpose", "chain.depth"])


OP_LISTS = st.lists(st.sampled_from(sorted(OPERANDS)), min_size=1, max_size=2, unique=True)


@st.composite
def conditions(draw: st.DrawFn) -> Condition:
    ops = draw(OP_LISTS)
    return Condition(draw(KEYS), tuple((op, draw(OPERANDS[op])) for op in ops))


RULES = st.builds(
    Rule,
    effect=st.sampled_from(list(Effect)),
    tools=st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3, unique=True).map(tuple),
    when=st.lists(conditions(), max_size=2, unique_by=lambda c: c.key).map(tuple),
    annotations=st.dictionaries(st.sampled_from(["readOnlyHint", "destructiveHint"]), st.booleans(), max_size=1).map(lambda d: tuple(d.items())),
    reason=st.one_of(st.none(), st.sampled_from(["Because.", "no: really"])),
)
SUBJECTS = st.builds(Subjects, *(st.one_of(st.none(), st.lists(GLOBS, min_size=1, max_size=2).map(tuple)) for _ in range(3)))
LIMITS = st.lists(st.builds(Limit, st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=2).map(tuple),
                            st.one_of(st.none(), st.integers(1, 9)), st.integers(1, 9)), max_size=1).map(tuple)
DESCRIPTIONS = st.one_of(st.none(), st.just("a policy: with 'quotes' and ünïcode"))
RULE_LISTS = st.lists(RULES, max_size=4).map(lambda rs: tuple(Rule(r.effect, r.tools, r.when, r.annotations, r.reason, f"r{i}") for i, r in enumerate(rs)))


def policies(max_size: int = 4) -> st.SearchStrategy[list[Policy]]:
    one = st.builds(Policy, st.sampled_from(["a", "b", "c", "d", "e", "f"]), RULE_LISTS, DESCRIPTIONS, SUBJECTS, LIMITS)
    return st.lists(one, max_size=max_size, unique_by=lambda p: p.id)


def rules() -> st.SearchStrategy[Rule]:
    return RULES


ANNOTATIONS = st.one_of(st.none(), st.fixed_dictionaries({"readOnlyHint": st.booleans(), "destructiveHint": st.booleans()}))


@settings(deadline=None)
@given(PRINCIPALS, st.sampled_from(TOOLS), ARGS)
def test_an_empty_policy_set_denies_everything(who: Principal, tool: str, args: dict[str, Any]) -> None:
    ps = PolicySet([])
    assert ps.decide(who, tool, args).effect is Effect.DENY
    assert not ps.visible(who, tool)


@settings(max_examples=300, deadline=None)  # a loaded CI machine stalls; not a timing test
@given(policies(), rules(), st.sampled_from(["a", "z"]), PRINCIPALS, st.sampled_from(TOOLS), ARGS, ANNOTATIONS)
def test_adding_a_deny_rule_never_turns_a_deny_into_an_allow(
    pols: list[Policy], extra: Rule, into: str, who: Principal, tool: str, args: dict[str, Any], ann: dict[str, bool] | None
) -> None:
    deny = Rule(Effect.DENY, extra.tools, extra.when, extra.annotations, extra.reason, "added")
    target = next((p for p in pols if p.id == into), None)
    if target is None:
        more = [*pols, Policy(into, (deny,))]
    else:
        more = [Policy(p.id, (*p.rules, deny), p.description, p.subjects, p.limits) if p is target else p for p in pols]
    before = PolicySet(pols).decide(who, tool, args, ann)
    after = PolicySet(more).decide(who, tool, args, ann)
    assert after.effect.severity >= before.effect.severity or after.effect is Effect.DENY
    if before.effect is Effect.DENY:
        assert after.effect is Effect.DENY


@settings(max_examples=150, deadline=None)  # a loaded CI machine stalls; not a timing test
@given(policies(), st.randoms(use_true_random=False), PRINCIPALS, st.sampled_from(TOOLS), ARGS, ANNOTATIONS)
def test_rule_and_file_order_never_change_a_decision(
    pols: list[Policy], rnd: Any, who: Principal, tool: str, args: dict[str, Any], ann: dict[str, bool] | None
) -> None:
    shuffled = []
    for p in pols:
        rs = list(p.rules)
        rnd.shuffle(rs)
        shuffled.append(Policy(p.id, tuple(rs), p.description, p.subjects, p.limits))
    rnd.shuffle(shuffled)
    # as separate files, in a different order
    a = parse_text(dump(pols))
    files = [(f"f{i}.yaml", dump([p])) for i, p in enumerate(shuffled)]
    one, many = PolicySet(a.policies), load_sources(files)
    d1, d2 = one.decide(who, tool, args, ann), many.decide(who, tool, args, ann)
    assert d1.effect is d2.effect
    assert set(d1.rule_ids) == set(d2.rule_ids) if d1.rules else d1.policy_ids == d2.policy_ids
    assert one.visible(who, tool, ann) is many.visible(who, tool, ann)


@settings(max_examples=300, deadline=None)  # a loaded CI machine stalls; not a timing test
@given(policies(), PRINCIPALS, st.sampled_from(TOOLS), st.lists(ARGS, min_size=1, max_size=5), ANNOTATIONS)
def test_a_tool_that_is_not_visible_is_never_allowed(
    pols: list[Policy], who: Principal, tool: str, calls: list[dict[str, Any]], ann: dict[str, bool] | None
) -> None:
    ps = PolicySet(pols)
    if not ps.visible(who, tool, ann):
        for args in calls:
            assert ps.decide(who, tool, args, ann).effect is Effect.DENY


@settings(max_examples=100, deadline=None)  # a loaded CI machine stalls; not a timing test
@given(policies(max_size=5))
def test_parse_of_dump_is_identity(pols: list[Policy]) -> None:
    parsed = parse_text(dump(pols))
    assert parsed.errors == []
    assert parsed.policies == pols


@settings(max_examples=200, deadline=None)  # a loaded CI machine stalls; not a timing test
@given(policies(), PRINCIPALS, st.sampled_from(TOOLS), ARGS, ANNOTATIONS)
def test_explain_gives_the_same_decision_as_decide(
    pols: list[Policy], who: Principal, tool: str, args: dict[str, Any], ann: dict[str, bool] | None
) -> None:
    ps = PolicySet(pols)
    assert ps.explain(who, tool, args, ann).decision == ps.decide(who, tool, args, ann)


# --------------------------------------------------------------------------- resources and prompts

RESOURCE_SELECTORS = ["docs/*", "docs/file:///srv/*", "*/file:///srv/a*", "*/*", "fs/mem://*", "d?cs/*"]
RESOURCES = ["docs/file:///srv/a", "docs/file:///srv/../etc/x", "fs/mem://x", "docs/file:///srv/s%C3%A9cret",
             "fs/file:///SRV/a", "docs/file:///srv/a%2F..%2Fb", "docs/mem://x", "fs/%zz", "docs"]
PROMPTS = ["git/commit", "git/review", "fs/summarise"]
PROMPT_SELECTORS = ["git/*", "git/commit", "*/summ*", "*/*"]
URI_CONDITIONS = st.builds(
    lambda op: Condition("uri", (op,)),
    st.sampled_from([("under", "file:///srv"), ("under", "/srv/a"), ("glob", "*a*"), ("in", ("file:///srv/a",)),
                     ("regex", "file:.*"), ("not_in", ("mem://x",)), ("equals", "fs/mem://x"), ("present", True)]),
)
KIND_RULES = st.builds(
    lambda effect, res, prm, conds: Rule(effect, (), tuple(conds) if res else (), (), None, None, tuple(res), tuple(prm)),
    st.sampled_from(list(Effect)),
    st.lists(st.sampled_from(RESOURCE_SELECTORS), max_size=2, unique=True),
    st.lists(st.sampled_from(PROMPT_SELECTORS), max_size=2, unique=True),
    st.lists(URI_CONDITIONS, max_size=1),
).filter(lambda r: bool(r.resources or r.prompts))
KIND_POLICIES = st.lists(st.builds(Policy, st.sampled_from(["a", "b", "c"]), st.lists(KIND_RULES, max_size=4).map(tuple),
                                   st.none(), SUBJECTS), max_size=3, unique_by=lambda p: p.id)
REQUESTS = st.one_of(st.tuples(st.just(Kind.RESOURCE), st.sampled_from(RESOURCES)), st.tuples(st.just(Kind.PROMPT), st.sampled_from(PROMPTS)))


@settings(max_examples=300, deadline=None)
@given(KIND_POLICIES, PRINCIPALS, REQUESTS)
def test_a_hidden_resource_or_prompt_is_never_allowed_and_explain_agrees(
    pols: list[Policy], who: Principal, request: tuple[Kind, str]
) -> None:
    kind, name = request
    ps = PolicySet(pols)
    d = ps.decide(who, name, kind=kind)
    if not ps.visible(who, name, kind=kind):
        assert d.effect is Effect.DENY
    assert ps.explain(who, name, kind=kind).decision == d
    assert PolicySet([]).decide(who, name, kind=kind).effect is Effect.DENY
    # tools never see resource or prompt rules
    assert ps.decide(who, name.split("/")[0] + "/x").effect is Effect.DENY


@settings(max_examples=100, deadline=None)
@given(KIND_POLICIES)
def test_parse_of_dump_is_identity_with_resources_and_prompts(pols: list[Policy]) -> None:
    parsed = parse_text(dump(pols))
    assert parsed.errors == []
    assert parsed.policies == pols
