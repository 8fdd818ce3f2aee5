"""``x-under``: the path-safe argument constraint of grant links (never a regex over a path)."""

from __future__ import annotations

import pytest
from grantkit import NOW, World

from mcp_guard.grants import delegate
from mcp_guard.paths import PathContext

OLD_DOCS_EXAMPLE = {"properties": {"path": {"type": "string", "pattern": "^/srv/"}}}
X_UNDER = {"properties": {"path": {"type": "string", "x-under": "/srv"}}}


@pytest.mark.parametrize("escape", ["/srv/../etc/passwd", "/srv/tickets/../../etc/shadow", "/srv/./../root/.ssh/id_rsa"])
def test_the_old_regex_example_lets_dot_dot_escape_and_x_under_refuses_it(world: World, escape: str) -> None:
    regex = world.verifier.verify(world.root(tool_args={"fs/read*": OLD_DOCS_EXAMPLE}), NOW + 30)
    assert regex.check_call("fs/read_text_file", {"path": escape}).allowed  # why the docs no longer show it
    safe = world.verifier.verify(world.root(tool_args={"fs/read*": X_UNDER}), NOW + 30)
    check = safe.check_call("fs/read_text_file", {"path": escape})
    assert not check.allowed and check.code == "arguments_not_permitted"
    assert check.reason == "args.path fails the `x-under` constraint required by the grant of agent planner for fs/read_text_file"


@pytest.mark.parametrize(("value", "ok"), [
    ("/srv/a.txt", True), ("/srv", True), ("//srv/./a", True), ("file:///srv/a", True),
    ("/srvx/a", False), ("a.txt", False), ("~/a", False), ("/srv/a\\..\\..\\etc", False), (42, False), ("/SRV/a", False),
])
def test_x_under_judges_like_the_policy_under(world: World, value: object, ok: bool) -> None:
    chain = world.verifier.verify(world.root(tool_args={"fs/read*": {"properties": {"path": {"x-under": "/srv"}}}}), NOW + 30)
    assert chain.check_call("fs/read_text_file", {"path": value}).allowed is ok


def test_x_under_uses_the_upstream_workdir_for_relative_paths(world: World) -> None:
    chain = world.verifier.verify(world.root(tool_args={"fs/read*": X_UNDER}), NOW + 30)
    assert not chain.check_call("fs/read_text_file", {"path": "notes/a.md"}).allowed
    assert chain.check_call("fs/read_text_file", {"path": "notes/a.md"}, paths=PathContext(workdir="/srv/app")).allowed
    assert not chain.check_call("fs/read_text_file", {"path": "../../etc/x"}, paths=PathContext(workdir="/srv/app")).allowed
    assert not chain.check_call("fs/read_text_file", {"path": "notes/a.md"}).allowed  # the context does not leak


def test_a_delegate_adds_x_under_narrowing_its_parent(world: World) -> None:
    root = world.root()
    two = delegate(root, world.planner, "coder", ["fs/read_text_file"], tool_args={"fs/read_text_file": X_UNDER}, now=NOW + 10)
    chain = world.verifier.verify(two, NOW + 30)
    assert chain.check_call("fs/read_text_file", {"path": "/srv/a"}).allowed
    assert not chain.check_call("fs/read_text_file", {"path": "/etc/a"}).allowed
