"""The document models are the one description of guard.yaml and policy files.

- every guard.yaml, policy and policy test example in the README, docs/ and policies/ passes the
  guard's own readers (not only the JSON Schema);
- random mutations of a valid guard.yaml give either a configuration or ``file:line:col``
  problems, never a traceback;
- the readers keep no key tables (the models validate every key), and the engine's operators are the model's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.mutation import mutated
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_guard.config import CONFIG_KEYS, GuardConfig, parse_config
from mcp_guard.config.document import GuardDoc
from mcp_guard.errors import ConfigError
from mcp_guard.policy import parse, parse_flow, parse_text, testing
from mcp_guard.policy.document import (
    AnnotationsDoc,
    ConditionDoc,
    LabelEntryDoc,
    PolicyDoc,
    PolicyFileDoc,
    RuleDoc,
    TestFileDoc,
    keys,
)
from mcp_guard.policy.model import ANNOTATION_HINTS, LABEL_OPERATORS, OPERATORS
from mcp_guard.policy.testing import parse_test_file

ROOT = Path(__file__).resolve().parents[2]
PROBLEM = re.compile(r"^.+:\d+:\d+: .+")


def _doc_blocks() -> list[tuple[str, str, str]]:
    """``(where, kind, yaml text)`` of every YAML example in the README and docs/."""
    out = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, m in enumerate(re.finditer(r"```ya?ml\n(.*?)```", page.read_text(encoding="utf-8"), re.S)):
            data = yaml.safe_load(m.group(1))
            if not isinstance(data, dict):
                continue
            if "cases" in data:
                kind = "tests"
            elif isinstance(data.get("policies"), list) or "labels" in data:
                kind = "policy"
            elif set(data) <= set(CONFIG_KEYS):
                kind = "config"
            else:
                continue  # a fragment of a rule (`when:`, `limits:`)
            out.append((f"{page.name}#{i + 1}", kind, m.group(1)))
    return out


@pytest.mark.parametrize(("where", "kind", "text"), _doc_blocks(), ids=[w for w, _, _ in _doc_blocks()])
def test_every_documented_example_passes_the_readers(where: str, kind: str, text: str) -> None:
    if kind == "tests":
        assert parse_test_file(text, where).problems == []
    elif kind == "policy":
        assert [str(p) for p in parse_text(text, where).errors] == []
    else:  # the model, after expansion: files the example names are not on this disk
        data = {"version": 1, **yaml.safe_load(text)}
        GuardDoc.model_validate(_expanded_for_docs(data))


def _expanded_for_docs(data: Any) -> Any:
    """``${VAR}`` and ``${VAR:-default}`` as a reader with every variable set would see them."""
    if isinstance(data, dict):
        return {k: _expanded_for_docs(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_expanded_for_docs(v) for v in data]
    return re.sub(r"\$\{[^}]*\}", "x" * 32, data) if isinstance(data, str) else data


def _shipped() -> list[Path]:
    return sorted((ROOT / "policies").rglob("*.y*ml"))


@pytest.mark.parametrize("path", _shipped(), ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_policies_and_examples_parse(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if path.name.endswith((".test.yaml", ".test.yml")):
        assert parse_test_file(text, path.name).problems == []
    else:
        assert [str(p) for p in parse_text(text, path.name).errors] == []


def test_the_readers_keep_no_key_lists_of_their_own() -> None:
    """The models validate every key; the readers only compile what the models accepted."""
    for module in (parse, parse_flow, testing):
        tables = [name for name, value in vars(module).items() if name.startswith("_") and isinstance(value, tuple | frozenset | set) and value
                  and all(isinstance(k, str) for k in value) and set(value) & set(keys(RuleDoc) + keys(PolicyDoc) + keys(PolicyFileDoc)
                                                                                + keys(LabelEntryDoc) + keys(TestFileDoc))]
        assert tables == [], f"{module.__name__} keeps key lists: {tables}"
    assert set(keys(ConditionDoc)) == {*OPERATORS, *LABEL_OPERATORS}
    assert set(keys(AnnotationsDoc)) == set(ANNOTATION_HINTS)
    assert tuple(GuardDoc.model_fields) == CONFIG_KEYS


# --------------------------------------------------------------------------- mutations never crash

VALID: dict[str, Any] = {
    "version": 1,
    "upstreams": {
        "fs": {"command": "x", "args": ["-y", "srv"], "env": {"A": "1"}, "timeout": "30s", "roots": ["./ws"], "prefix": False},
        "web": {"url": "https://mcp.example.com/mcp", "headers": {"X-Key": "k"},
                "auth": {"oauth": {"client_id": "c", "scopes": "a b", "redirect_uri": "http://127.0.0.1:8765/cb"}}},
    },
    "identity": {"user": "alice", "agent": "bot", "purpose": "review"},
    "approvals": {"timeout": "2m", "remember": "session"},
    "audit": {"path": "audit.jsonl", "fsync": True, "max_bytes": 1000},
    "pinning": "enforce",
    "state": {"url": "memory://"},
    "telemetry": {"service_name": "g"},
    "flow": {"max_content_mib": 8},
    "serve": {"url": "https://g.example.com/mcp", "oauth": [{"issuer": "https://idp.example.com", "scopes": ["mcp"]}],
              "max_sessions": 10, "session_idle": "10m", "admin": {"listen": "127.0.0.1:9464"},
              "approvals": {"client_id": "page"}},
}
ODD = st.one_of(st.none(), st.booleans(), st.integers(-2, 70000), st.floats(allow_nan=True), st.text(max_size=8),
                st.sampled_from(["${NOPE}", "${X:-1}", "30s", "pass", "https://a.example", "http://evil.example", "a:1"]),
                st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.sampled_from(["bogus", "url", "command"]),
                                                                         st.integers(0, 3), max_size=2))


def test_the_unmutated_config_loads(tmp_path: Path) -> None:
    config = parse_config(yaml.safe_dump(VALID), str(tmp_path / "guard.yaml"), environ={})
    assert config.upstreams["fs"].roots == (str((tmp_path / "ws").resolve()),) and config.serve.approvals is not None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=mutated(VALID, ODD, ["bogus", "comand", "url", "command", "issuer", "timeout"], most=4))
def test_a_mutated_config_loads_or_says_where_it_is_wrong(doc: dict[str, Any], tmp_path: Path) -> None:
    text = yaml.safe_dump(doc)
    try:
        config = parse_config(text, str(tmp_path / "guard.yaml"), environ={"X": "1"})
    except ConfigError as exc:
        assert exc.problems, exc
        assert all(PROBLEM.match(p) for p in exc.problems), exc.problems
        assert all(line.startswith(str(tmp_path / "guard.yaml")) for line in exc.problems)
        return
    assert isinstance(config, GuardConfig)


def test_a_null_value_is_the_key_left_out_but_an_unknown_key_is_still_refused(tmp_path: Path) -> None:
    text = "version: 1\nupstreams:\n  fs: {command: x, args: null, roots: null, timeout: null}\nidentity: {user: null}\n"
    up = parse_config(text, str(tmp_path / "guard.yaml"), environ={}).upstreams["fs"]
    assert (up.args, up.roots, up.timeout) == ((), "none", 60.0)
    with pytest.raises(ConfigError) as err:
        parse_config("version: 1\nidentity: {agnt: null}\n", str(tmp_path / "guard.yaml"), environ={})
    assert err.value.problems == [f"{tmp_path / 'guard.yaml'}:2:12: unknown key `agnt` in identity (did you mean `agent`?)"]
