"""Resource and prompt entries in grant links: same narrowing, fail closed when absent."""

from __future__ import annotations

import pytest
from grantkit import NOW, World

from mcp_guard.grants import GrantError, delegate
from mcp_guard.grants.model import covers
from mcp_guard.kinds import Kind

R, P, T = Kind.RESOURCE, Kind.PROMPT, Kind.TOOL


def test_a_chain_without_resource_or_prompt_entries_permits_none(world: World) -> None:
    chain = world.verifier.verify(world.root(), NOW + 30)
    assert chain.permits(T, "fs/read_text_file")
    assert not chain.permits(R, "fs/file:///srv/a") and not chain.permits(P, "fs/read_text_file")
    check = chain.check_call("fs/file:///srv/a", None, R)
    assert not check.allowed and check.code == "tool_not_granted"
    assert check.reason == "the grant of agent planner does not include resource fs/file:///srv/a"


def test_resources_and_prompts_are_granted_and_narrowed(world: World) -> None:
    root = world.root(resources={"docs/file:///srv/*": {"max_calls": 9}, "mem/*": {"approval": "always"}},
                      prompts=["git/*"])
    chain = world.verifier.verify(root, NOW + 30)
    assert chain.permits(R, "docs/file:///srv/a/b.md") and chain.permits(P, "git/commit")
    assert not chain.permits(R, "docs/file:///etc/passwd") and not chain.permits(P, "fs/x")
    assert not chain.permits(R, "docs/file:///srv/../etc/passwd")  # every reading of the URI must be granted
    assert not chain.permits(R, "docs/file:///srv/a%2F..%2F..%2Fetc")
    assert chain.check_call("mem/knowledge://x", None, R).approval_required
    assert [b.key.split(":", 2)[2] for b in chain.budgets("docs/file:///srv/a", R)] == ["resource:docs/file:///srv/*", "calls"]
    assert chain.budgets("docs/file:///srv/a") == ()  # the tool of that name is not granted
    two = delegate(root, world.planner, "coder", ["time/*"], resources=["docs/file:///srv/a/*"], prompts=["git/commit"], now=NOW + 10)
    sub = world.verifier.verify(two, NOW + 30)
    assert sub.permits(R, "docs/file:///srv/a/x") and not sub.permits(R, "docs/file:///srv/b")
    assert sub.permits(P, "git/commit") and not sub.permits(P, "git/push")
    # the parent's budget is inherited
    assert any(b.key.endswith("resource:docs/file:///srv/a/*") and b.limit == 9 for b in sub.budgets("docs/file:///srv/a/x", R))


@pytest.mark.parametrize(("kind", "more"), [(R, {"resources": ["docs/*"]}), (R, {"resources": ["other/file:///srv/x"]}),
                                            (P, {"prompts": ["*/commit"]}), (P, {"prompts": ["git/commit"]})])
def test_delegation_cannot_widen_resources_or_prompts(world: World, kind: Kind, more: dict[str, list[str]]) -> None:
    root = world.root(resources=["docs/file:///srv/*"], prompts=["git/c*"]) if "git/commit" not in more.get("prompts", []) \
        else world.root()
    with pytest.raises(GrantError) as err:
        delegate(root, world.planner, "coder", ["time/*"], now=NOW + 10, **more)  # type: ignore[arg-type]
    assert err.value.code == "widened_tools" and str(err.value).startswith(f"{kind}s: ")


def test_a_widened_resource_link_is_rejected_whole(world: World) -> None:
    root = world.root(resources=["docs/file:///srv/*"])
    forged = world.resign_last(delegate(root, world.planner, "coder", ["time/*"], resources=["docs/file:///srv/a"], now=NOW + 10),
                               world.planner,
                               lambda c: c["authorization_details"][0].__setitem__("resources", {"docs/*": {"approval": "never"}}))
    with pytest.raises(GrantError) as err:
        world.verifier.verify(forged, NOW + 30)
    assert err.value.code == "widened_tools" and err.value.link_index == 1


def test_resource_entries_take_no_arguments(world: World) -> None:
    with pytest.raises(GrantError, match="unknown members: arguments"):
        world.root(resources={"docs/*": {"arguments": {"type": "object"}}})


def test_prompt_arguments_are_constrained(world: World) -> None:
    chain = world.verifier.verify(world.root(prompts={"git/commit": {"arguments": {"properties": {"msg": {"maxLength": 3}}}}}), NOW + 30)
    assert chain.check_call("git/commit", {"msg": "abc"}, P).allowed
    bad = chain.check_call("git/commit", {"msg": "abcd"}, P)
    assert not bad.allowed and bad.code == "arguments_not_permitted" and "prompt git/commit" in bad.reason


@pytest.mark.parametrize(("parent", "child", "ok"), [
    ("docs/*", "docs/file:///a/*", True),
    ("docs/file:///a/*", "docs/file:///a/b/c", True),
    ("docs/file:///a/*", "docs/file:///*", False),
    ("*/file:///a/*", "docs/file:///a/x*", True),
    ("docs/*", "*/x", False),
    ("d*/*", "docs/x", True),
])
def test_resource_coverage(parent: str, child: str, ok: bool) -> None:
    assert covers(parent, child, R) is ok


def test_resource_patterns_are_canonical_like_requests(world: World) -> None:
    chain = world.verifier.verify(world.root(resources=["docs/file:///srv/s%C3%A9cret/*", "docs/file:///srv/open/a%20b"]), NOW + 30)
    assert chain.permits(R, "docs/file:///srv/sécret/x") and chain.permits(R, "docs/file:///srv/se\u0301cret/x")
    assert chain.permits(R, "docs/file:///srv/open/a%20b") and not chain.permits(R, "docs/file:///srv/open/a")
    assert covers("docs/file:///srv/*", "docs/file:///srv/a/%2E%2E/b", R)
    assert not covers("docs/file:///srv/*", "docs/file:///srv/a/../../etc/*", R)


def test_an_escaped_star_in_a_pattern_stays_a_literal_star(world: World) -> None:
    chain = world.verifier.verify(world.root(resources=["docs/file:///srv/a%2A"]), NOW + 30)
    assert not chain.permits(R, "docs/file:///srv/abc")
    assert not covers("docs/file:///srv/a%2A", "docs/file:///srv/a*", R)
