"""Anchored patterns mean the whole string.

Python's ``$`` also matches before a final newline, so ``re.compile(r"^x$").match("x\\n")`` succeeds:
a validator written that way accepts a grant pattern, a subject name, a label or an origin with a
trailing newline that then looks like the value it imitates.  The package calls ``fullmatch`` on
every ``^…$`` pattern (the patterns keep ``$`` because the JSON Schema and pydantic share them, and
there it means the end of the text); the scan below keeps it so.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from mcp_guard.config.model import EXPOSED_NAME
from mcp_guard.grants.model import GrantError, Kind, check_pattern
from mcp_guard.policy.document import RuleDoc, _condition_key
from mcp_guard.serve.asgi import LOCAL_ORIGIN
from mcp_guard.telemetry.spans import remote_parent

PACKAGE = Path(__file__).resolve().parents[1] / "mcp_guard"


def _end_anchored(call: ast.Call) -> bool:
    if not call.args:
        return False
    arg = call.args[0]
    text = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else ast.unparse(arg)
    return text.rstrip("'\"").endswith("$")


def _anchored_names() -> set[str]:
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                    and isinstance(node.value.func, ast.Attribute) and node.value.func.attr == "compile"
                    and _end_anchored(node.value)):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_no_end_anchored_pattern_is_used_with_match_or_search() -> None:
    names = _anchored_names()
    assert {"EXPOSED_NAME", "LOCAL_ORIGIN", "_TRACEPARENT"} <= names  # the scan sees what it should
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and node.attr in ("match", "search")
                    and isinstance(node.value, ast.Name) and node.value.id in names):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not found, "use fullmatch on ^…$ patterns:\n" + "\n".join(found)


@pytest.mark.parametrize(("pattern", "kind"), [("fs/read\n", Kind.TOOL), ("fs/file:///srv/*\n", Kind.RESOURCE),
                                               ("fs/read", Kind.PROMPT)])
def test_grant_patterns_with_a_trailing_newline_are_refused(pattern: str, kind: Kind) -> None:
    if pattern.endswith("\n"):
        with pytest.raises(GrantError):
            check_pattern(pattern, kind)
    else:
        assert check_pattern(pattern, kind) == pattern


def test_policy_keys_and_selectors_with_a_trailing_newline_are_refused() -> None:
    assert _condition_key("args.path") == "args.path"
    with pytest.raises(ValidationError):
        RuleDoc.model_validate({"effect": "allow", "tools": ["fs/read\n"]})


def test_an_upstream_tool_name_with_a_trailing_newline_is_not_host_safe() -> None:
    assert EXPOSED_NAME.fullmatch("read")
    assert not EXPOSED_NAME.fullmatch("read\n")


def test_an_origin_or_traceparent_with_a_trailing_newline_is_not_taken() -> None:
    assert LOCAL_ORIGIN.fullmatch("http://localhost:8080")
    assert not LOCAL_ORIGIN.fullmatch("http://localhost:8080\n")
    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert remote_parent({"traceparent": good}) is not None
    assert remote_parent({"traceparent": good + "\n"}) is None
