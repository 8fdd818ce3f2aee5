"""Resources and prompts beside tools: selectors, the `uri` key, listing, limits (one engine for all)."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import ALICE, policy_set

from mcp_guard.policy import Effect, Kind, PathContext, PolicySet

R, P = Kind.RESOURCE, Kind.PROMPT


def docs() -> PolicySet:
    return policy_set({"id": "docs", "rules": [
        {"effect": "allow", "resources": ["docs/*"], "when": {"uri": {"under": "file:///srv/tickets"}}},
        {"effect": "allow", "prompts": ["git/*"]},
        {"effect": "approve", "prompts": ["git/commit*"], "when": {"args.message": {"max_length": 10}}},
        {"effect": "deny", "resources": ["*/*"], "when": {"uri": {"glob": "*secret*"}}},
        {"effect": "allow", "tools": ["*/*"]},
    ], "limits": [{"resources": ["docs/*"], "per_minute": 5}, {"prompts": ["git/*"], "per_session": 3}]})


@pytest.mark.parametrize(("name", "effect"), [
    ("docs/file:///srv/tickets/42.md", Effect.ALLOW),
    ("docs/file:///srv/tickets", Effect.ALLOW),
    ("docs/file:///srv/other/42.md", Effect.DENY),
    ("docs/file:///srv/tickets/secret.md", Effect.DENY),
    ("docs/file:///srv/tickets/../other/x", Effect.DENY),
    ("docs/https://example.com/srv/tickets/1", Effect.DENY),  # another scheme: `under` cannot judge it
    ("other/file:///srv/tickets/42.md", Effect.DENY),  # no rule names upstream `other`
    ("docs", Effect.DENY),  # no URI at all
])
def test_resources_are_decided_on_the_exact_uri(name: str, effect: Effect) -> None:
    assert docs().decide(ALICE, name, kind=R).effect is effect


def test_tools_star_selects_tools_only() -> None:
    ps = policy_set({"id": "p", "rules": [{"effect": "allow", "tools": ["*/*"]}]})
    assert ps.decide(ALICE, "fs/read").allowed
    assert not ps.decide(ALICE, "fs/read", kind=P).allowed
    assert not ps.decide(ALICE, "fs/file:///a", kind=R).allowed
    assert not ps.visible(ALICE, "fs/read", kind=P)
    assert not ps.visible(ALICE, "fs/file:///a", kind=R)


def test_prompts_are_like_tools_with_arguments() -> None:
    ps = docs()
    assert ps.decide(ALICE, "git/summarise", kind=P).allowed
    assert ps.decide(ALICE, "git/commit_msg", {"message": "short"}, kind=P).effect is Effect.APPROVE
    assert ps.decide(ALICE, "git/commit_msg", {"message": "much too long a message"}, kind=P).allowed
    assert not ps.decide(ALICE, "fs/summarise", kind=P).allowed
    assert ps.visible(ALICE, "git/commit_msg", kind=P) and not ps.visible(ALICE, "fs/x", kind=P)
    # the tool of the same name is another thing
    assert ps.decide(ALICE, "git/summarise").allowed


def test_a_resource_decision_names_the_resource() -> None:
    d = docs().decide(ALICE, "docs/file:///srv/other", kind=R)
    assert d.reason.startswith("mcp-guard denied resource docs/file:///srv/other: uri must be under file:///srv/tickets")
    assert docs().decide(ALICE, "fs/nope", kind=P).reason.startswith("mcp-guard denied prompt fs/nope")


@pytest.mark.parametrize(("name", "shown"), [
    ("docs/file:///srv/tickets/42.md", True),
    ("docs/file:///srv/other/42.md", False),  # the uri condition is known at list time
    ("docs/file:///srv/tickets/secret", False),  # a deny conditioned only on the uri hides
    ("docs/mem://x", False),
])
def test_resource_listing_judges_the_uri(name: str, shown: bool) -> None:
    assert docs().visible(ALICE, name, kind=R) is shown


def test_templates_are_listed_by_upstream() -> None:
    ps = docs()
    assert ps.visible(ALICE, "docs/file:///srv/{path}", kind=R, judge_uri=False)
    assert not ps.visible(ALICE, "other/file:///{path}", kind=R, judge_uri=False)
    hidden = policy_set({"id": "p", "rules": [{"effect": "allow", "resources": ["docs/file:///*"]},
                                              {"effect": "deny", "resources": ["docs/*"]}]})
    assert not hidden.visible(ALICE, "docs/file:///{path}", kind=R, judge_uri=False)
    partial = policy_set({"id": "p", "rules": [{"effect": "allow", "resources": ["docs/*"]},
                                               {"effect": "deny", "resources": ["docs/file:///secret/*"]}]})
    assert partial.visible(ALICE, "docs/file:///{path}", kind=R, judge_uri=False)


def test_limits_select_resources_and_prompts() -> None:
    ps = docs()
    assert [b.key for b in ps.limits(ALICE, "docs/file:///srv/tickets/1", R)] == ["docs/limit1"]
    assert [b.key for b in ps.limits(ALICE, "git/commit", P)] == ["docs/limit2"]
    assert ps.limits(ALICE, "git/commit") == ()
    assert ps.limits(ALICE, "docs/x", Kind.PROMPT) == ()


def test_explain_traces_resources() -> None:
    expl = docs().explain(ALICE, "docs/file:///srv/tickets/secret", kind=R)
    assert expl.decision.effect is Effect.DENY
    traces = {t.ref.rule: t for p in expl.policies for t in p.rules}
    assert traces["1"].tools and traces["1"].matched
    assert traces["4"].matched and not traces["2"].tools


def test_relative_paths_with_a_workdir() -> None:
    ps = policy_set({"id": "p", "rules": [
        {"effect": "allow", "tools": ["fs/read"], "when": {"args.path": {"under": "/ws"}}},
        {"effect": "deny", "tools": ["fs/read"], "when": {"args.path": {"under": "/ws/secret"}}},
    ]})
    ctx = PathContext(workdir="/ws")
    assert ps.decide(ALICE, "fs/read", {"path": "notes/a.md"}, paths=ctx).allowed
    assert not ps.decide(ALICE, "fs/read", {"path": "notes/a.md"}).allowed  # no workdir: unjudgeable
    for bad in ("secret/s.txt", "./secret/s.txt", "allowed/../secret/s.txt", "~/secret/s.txt"):
        assert ps.decide(ALICE, "fs/read", {"path": bad}, paths=ctx).effect is Effect.DENY, bad
        assert ps.decide(ALICE, "fs/read", {"path": bad}).effect is Effect.DENY, bad


def test_resolve_is_applied_before_under() -> None:
    links = {"/ws/link": "/etc/passwd", "/ws/ok": "/ws/real/ok"}

    def resolve(path: str) -> str | None:
        return None if path.endswith("broken") else links.get(path, path)

    ps = policy_set({"id": "p", "rules": [{"effect": "allow", "tools": ["fs/read"], "when": {"args.path": {"under": "/ws"}}}]})
    ctx = PathContext(resolve=resolve)
    assert ps.decide(ALICE, "fs/read", {"path": "/ws/ok"}, paths=ctx).allowed
    assert not ps.decide(ALICE, "fs/read", {"path": "/ws/link"}, paths=ctx).allowed
    assert not ps.decide(ALICE, "fs/read", {"path": "/ws/broken"}, paths=ctx).allowed
    deny = policy_set({"id": "p", "rules": [{"effect": "allow", "tools": ["fs/read"]},
                                            {"effect": "deny", "tools": ["fs/read"], "when": {"args.path": {"under": "/etc"}}}]})
    assert deny.decide(ALICE, "fs/read", {"path": "/ws/link"}, paths=ctx).effect is Effect.DENY
    assert deny.decide(ALICE, "fs/read", {"path": "/ws/broken"}, paths=ctx).effect is Effect.DENY
    assert deny.decide(ALICE, "fs/read", {"path": "/ws/ok"}, paths=ctx).allowed


def test_existing_positional_calls_still_work() -> None:
    ps = docs()
    args: dict[str, Any] = {}
    assert ps.decide(ALICE, "fs/read", args, None).allowed
    assert ps.visible(ALICE, "fs/read", None)
    assert ps.explain(ALICE, "fs/read", args, None).decision.allowed
    ps.warm(["fs/read"])
    ps.warm(["git/x"], kind=P)


def test_resource_selectors_are_canonical_like_requests() -> None:
    ps = policy_set({"id": "p", "rules": [{"effect": "allow", "resources": ["docs/*"]},
                                          {"effect": "deny", "resources": ["docs/file:///srv/s%C3%A9cret/*"]}]})
    for uri in ("file:///srv/sécret/a", "file:///srv/se\u0301cret/a", "file:///srv/s%c3%a9cret/a", "file:///srv/x/../sécret/a"):
        assert ps.decide(ALICE, f"docs/{uri}", kind=R).effect is Effect.DENY, uri
        assert not ps.visible(ALICE, f"docs/{uri}", kind=R)
    assert ps.decide(ALICE, "docs/file:///srv/open", kind=R).allowed
