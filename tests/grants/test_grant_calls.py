"""Call-time enforcement: every link must permit the tool and its arguments; approval and budgets accumulate."""

from __future__ import annotations

import pytest
from grantkit import NOW, World

from mcp_guard.grants import GrantError, delegate, issue_grant
from mcp_guard.grants.model import compile_schema

REPO_SCHEMA = {"type": "object", "properties": {"repo": {"enum": ["acme/web", "acme/api"]}}, "required": ["repo"]}


def test_discovery_is_the_intersection_of_every_link(world: World) -> None:
    root = world.verifier.verify(world.root(), NOW + 30)
    chain = world.verifier.verify(world.three(), NOW + 30)
    assert root.permits_tool("fs/read_media_file") and root.permits_tool("time/get_current_time")
    assert chain.permits_tool("fs/read_text_file")
    for tool in ("fs/write_file", "fs/read_media_file", "time/get_current_time", "git/commit", "fs"):
        assert not chain.permits_tool(tool)


def test_call_outside_any_link_is_refused_naming_that_link(world: World) -> None:
    chain = world.verifier.verify(world.three(), NOW + 30)
    check = chain.check_call("fs/write_file", {"path": "/tmp/x", "content": "secret"})
    assert not check.allowed and check.code == "tool_not_granted" and check.link_index == 2
    assert "tester" in check.reason and "secret" not in check.reason


def test_approval_is_required_when_any_link_says_always(world: World) -> None:
    two = world.verifier.verify(world.two(), NOW + 30)
    assert two.check_call("fs/write_file", {}).approval_required  # inherited from the root's `always`
    assert not two.check_call("fs/read_text_file", {}).approval_required
    extra = delegate(world.root(), world.planner, "coder", ["time/*"], approve=["time/*"], now=NOW + 10)
    assert world.verifier.verify(extra, NOW + 30).check_call("time/now", None).approval_required


def test_budgets_cover_every_link_and_siblings_share_the_parent(world: World) -> None:
    chain = world.verifier.verify(world.three(), NOW + 30)
    root_id, mid_id, leaf_id = chain.link_ids
    budgets = {b.key: b for b in chain.budgets("fs/read_text_file")}
    assert budgets[f"grant:{root_id}:tool:fs/read*"].limit == 50
    assert budgets[f"grant:{root_id}:calls"].limit == 100
    assert budgets[f"grant:{mid_id}:tool:fs/read_text_file"].limit == 50  # inherited by delegate
    assert budgets[f"grant:{leaf_id}:calls"].limit == 100
    assert budgets[f"grant:{leaf_id}:calls"].expires_at == chain.links[2].exp
    root_token = chain.links[0].compact
    other = delegate(root_token, world.planner, "reviewer", ["fs/read_text_file"], now=NOW + 10)  # a sibling
    sibling = world.verifier.verify(other, NOW + 30)
    shared = {b.key for b in sibling.budgets("fs/read_text_file")} & set(budgets)
    assert shared == {f"grant:{root_id}:tool:fs/read*", f"grant:{root_id}:calls"}
    assert chain.budgets("git/commit") == ()


def test_arguments_must_satisfy_every_link_schema(world: World) -> None:
    root = issue_grant(world.idp, "corp-idp", "alice", "planner", ["github/*"], agent_key=world.planner.public_key(),
                       depth=1, tool_args={"github/*": REPO_SCHEMA}, now=NOW)
    child = delegate(root, world.planner, "coder", ["github/search_issues"], now=NOW,
                     tool_args={"github/search_issues": {"properties": {"repo": {"const": "acme/api"}}}})
    chain = world.verifier.verify(child, NOW + 1)
    assert chain.check_call("github/search_issues", {"repo": "acme/api"}).allowed
    web = chain.check_call("github/search_issues", {"repo": "acme/web"})  # root allows it, the child does not
    assert (web.allowed, web.link_index, web.code) == (False, 1, "arguments_not_permitted")
    other = chain.check_call("github/search_issues", {"repo": "evil/corp"})
    assert (other.allowed, other.link_index) == (False, 0)
    assert "evil" not in other.reason and "args.repo" in other.reason
    missing = chain.check_call("github/search_issues", None)
    assert not missing.allowed and "required" in missing.reason


def test_schemas_are_compiled_once_and_shared() -> None:
    assert compile_schema(dict(REPO_SCHEMA)) is compile_schema({**REPO_SCHEMA})


@pytest.mark.parametrize(
    "schema",
    [{"$ref": "https://example.com/schema.json"}, {"type": "nonsense"}, {"$dynamicRef": "#x"}, [1, 2]],
)
def test_remote_refs_and_invalid_schemas_are_refused(world: World, schema: object) -> None:
    with pytest.raises(GrantError) as info:
        issue_grant(world.idp, "corp-idp", "alice", "planner", ["fs/*"], tool_args={"fs/*": schema}, now=NOW)
    assert info.value.code == "malformed"


def test_local_refs_work(world: World) -> None:
    schema = {"$defs": {"p": {"type": "string", "pattern": "^/srv/"}}, "properties": {"path": {"$ref": "#/$defs/p"}}}
    token = issue_grant(world.idp, "corp-idp", "alice", "planner", ["fs/*"], tool_args={"fs/*": schema}, now=NOW)
    chain = world.verifier.verify(token, NOW)
    assert chain.check_call("fs/read", {"path": "/srv/a"}).allowed
    assert not chain.check_call("fs/read", {"path": "/etc/passwd"}).allowed


def test_cached_verification_rechecks_time(world: World) -> None:
    token = world.two()
    first = world.verifier.verify(token, NOW + 30)
    assert world.verifier.verify(token, NOW + 31) is first
    with pytest.raises(GrantError) as info:
        world.verifier.verify(token, NOW + 10 + 600)
    assert info.value.code == "expired"
    assert first.check_time(NOW + 30) is None


def test_explain_call_gives_every_link_a_verdict(world: World) -> None:
    chain = world.verifier.verify(world.three(), NOW + 30)
    lines = chain.explain_call("fs/write_file", {"path": "/x"})
    assert len(lines) == 3
    assert "permits" in lines[0] and "needs approval" in lines[0]
    assert "permits" in lines[1] and "refuses" in lines[2]


def test_link_ids_never_look_like_command_line_options() -> None:
    from mcp_guard.grants.issue import new_jti

    assert all(not new_jti().startswith("-") for _ in range(2000))


def test_evaluate_checks_the_chains_times_unless_the_caller_did(world: World) -> None:
    """``evaluate`` refuses an expired chain given the time; ``now=None`` is the proxy's pipeline,
    which checked expiry and revocation for the request moments before (and refuses there)."""
    from mcp_guard.decision import Outcome, evaluate
    from mcp_guard.policy import load_sources

    chain = world.verifier.verify(world.three(), NOW + 30)
    policies = load_sources([("p.yaml", "version: 1\npolicies:\n- id: p\n  rules:\n  - effect: allow\n    tools: [fs/*]\n")])
    late = NOW + 20 + 300 + 1  # past the leaf's ttl
    assert chain.check_time(late) is not None
    expired = evaluate(policies, chain, chain.principal, "fs/read_text_file", {}, None, late)
    assert expired.decision is Outcome.EXPIRED and "expired" in expired.reason
    assert evaluate(policies, chain, chain.principal, "fs/read_text_file", {}, None, NOW + 30).forward
    assert evaluate(policies, chain, chain.principal, "fs/read_text_file", {}, None, None).forward
