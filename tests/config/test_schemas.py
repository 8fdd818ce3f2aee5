"""The JSON Schemas agree with the parsers and with the files the project ships.

- ``schemas/*.schema.json`` are exactly what ``mcp-guard schema`` prints (regenerate after a
  parser change: ``for k in config policy tests; do .venv/bin/mcp-guard schema $k > schemas/...``);
- every shipped guard.yaml, policy and policy test file (policies/, examples/, the README and docs
  examples, the golden files the parser accepts) validates; the golden files with structural
  errors do not;
- an unknown key anywhere is rejected by both the parser and the schema;
- every YAML file in policies/ and examples/ names its schema in a modeline that resolves.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from mcp_guard.cli import main
from mcp_guard.config import CONFIG_KEYS, parse_config
from mcp_guard.errors import ConfigError
from mcp_guard.policy import parse_text
from mcp_guard.policy.testing import parse_test_file
from mcp_guard.schema import FILES, SCHEMAS

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "policy" / "golden"
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$", re.M)


def validator(kind: str) -> Draft202012Validator:
    return Draft202012Validator(SCHEMAS[kind]())


def kind_of(path: Path) -> str:
    if path.name.endswith((".test.yaml", ".test.yml")):
        return "tests"
    return "config" if path.name.startswith("guard") else "policy"


def errors(kind: str, data: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(kind).iter_errors(data)]


def shipped() -> list[Path]:
    files = [*(ROOT / "policies").rglob("*.y*ml"), *(ROOT / "examples").rglob("*.y*ml")]
    return sorted(files)


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_committed_schema_is_what_the_command_prints(kind: str) -> None:
    printed = CliRunner().invoke(main, ["schema", kind])
    assert printed.exit_code == 0, printed.output
    committed = ROOT / "schemas" / FILES[kind]
    assert committed.read_text(encoding="utf-8") == printed.stdout, (
        f"schemas/{FILES[kind]} is stale: run `.venv/bin/mcp-guard schema {kind} > schemas/{FILES[kind]}`")
    Draft202012Validator.check_schema(SCHEMAS[kind]())


@pytest.mark.parametrize("path", shipped(), ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_files_validate_and_name_their_schema(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    kind = kind_of(path)
    assert errors(kind, yaml.safe_load(text)) == []
    found = MODELINE.search(text)
    assert found, f"{path.relative_to(ROOT)} has no `# yaml-language-server: $schema=...` modeline"
    target = (path.parent / found.group(1)).resolve()
    assert target == (ROOT / "schemas" / FILES[kind]).resolve(), found.group(1)


def _doc_blocks() -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, m in enumerate(re.finditer(r"```ya?ml\n(.*?)```", page.read_text(encoding="utf-8"), re.S)):
            data = yaml.safe_load(m.group(1))
            if not isinstance(data, dict):
                continue
            if "cases" in data:
                kind = "tests"
            elif isinstance(data.get("policies"), list):
                kind = "policy"
            elif set(data) <= set(CONFIG_KEYS):  # a guard.yaml, or some of its top-level blocks
                kind, data = "config", {"version": 1, **data}
            else:
                continue  # a fragment of a rule (`when:`, `limits:`)
            out.append((f"{page.name}#{i + 1}", kind, data))
    return out


@pytest.mark.parametrize(("where", "kind", "data"), _doc_blocks(), ids=[w for w, _, _ in _doc_blocks()])
def test_documentation_examples_validate(where: str, kind: str, data: dict[str, Any]) -> None:
    assert errors(kind, data) == []


# golden inputs of `mcp-guard check`: which are well-formed, which carry structural errors
GOLDEN_VALID = ["duplicates/a.yaml", "duplicates/b.yaml", "warnings/policies.yaml", "warnings/p.test.yaml",
                # their problems are files and commands on disk, which no schema can see
                "trust_and_commands/guard.yaml", "trust_and_commands/policies/p.yaml", "command_warning/guard.yaml",
                "command_warning/p.yaml"]
GOLDEN_INVALID = ["typos/policies.yaml", "syntax/fine.yaml", "config/guard.yaml", "config/policies/p.yaml",
                  "config/policies/p.test.yaml", "selectors/policies.yaml"]


@pytest.mark.parametrize("name", GOLDEN_VALID)
def test_golden_files_without_structural_errors_validate(name: str) -> None:
    path = GOLDEN / name
    assert errors(kind_of(path), yaml.safe_load(path.read_text(encoding="utf-8"))) == []


@pytest.mark.parametrize("name", GOLDEN_INVALID)
def test_golden_files_with_structural_errors_do_not(name: str) -> None:
    path = GOLDEN / name
    assert errors(kind_of(path), yaml.safe_load(path.read_text(encoding="utf-8"))) != []


def test_every_golden_yaml_is_classified() -> None:
    names = {str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*.yaml")} - {"syntax/broken.yaml"}  # not YAML at all
    assert names == set(GOLDEN_VALID) | set(GOLDEN_INVALID)


# --------------------------------------------------------------------------- unknown keys: both refuse

POLICY: dict[str, Any] = {"version": 1, "policies": [{
    "id": "p", "subjects": {"users": ["*"]},
    "rules": [{"effect": "allow", "tools": ["fs/read"], "when": {"args.path": {"under": "/srv"}}}],
    "limits": [{"tools": ["fs/*"], "per_minute": 5}]}]}
POLICY_SPOTS: list[tuple[Any, ...]] = [(), ("policies", 0), ("policies", 0, "subjects"), ("policies", 0, "rules", 0),
                                       ("policies", 0, "rules", 0, "when", "args.path"), ("policies", 0, "limits", 0)]
CONFIG: dict[str, Any] = {"version": 1, "upstreams": {"fs": {"command": "x"}}, "identity": {"user": "u"},
                          "audit": {"path": "a.jsonl"}, "approvals": {"timeout": "30s"}, "state": {"url": "memory://"}}
CONFIG_SPOTS: list[tuple[Any, ...]] = [(), ("upstreams", "fs"), ("identity",), ("audit",), ("approvals",), ("state",)]


def _with_bogus(doc: dict[str, Any], spot: tuple[Any, ...]) -> dict[str, Any]:
    copy = yaml.safe_load(yaml.safe_dump(doc))
    target = copy
    for step in spot:
        target = target[step]
    target["bogus"] = 1
    return copy


@pytest.mark.parametrize("spot", POLICY_SPOTS, ids=lambda s: "/".join(map(str, s)) or "top")
def test_an_unknown_policy_key_is_refused_by_both(spot: tuple[Any, ...]) -> None:
    assert errors("policy", POLICY) == [] and not parse_text(yaml.safe_dump(POLICY)).errors
    bad = _with_bogus(POLICY, spot)
    assert errors("policy", bad) != []
    assert parse_text(yaml.safe_dump(bad)).errors


@pytest.mark.parametrize("spot", CONFIG_SPOTS, ids=lambda s: "/".join(map(str, s)) or "top")
def test_an_unknown_config_key_is_refused_by_both(spot: tuple[Any, ...], tmp_path: Path) -> None:
    file = str(tmp_path / "guard.yaml")
    parse_config(yaml.safe_dump(CONFIG), file, environ={})
    assert errors("config", CONFIG) == []
    bad = _with_bogus(CONFIG, spot)
    assert errors("config", bad) != []
    with pytest.raises(ConfigError):
        parse_config(yaml.safe_dump(bad), file, environ={})


def test_an_upstream_needs_exactly_one_of_command_and_url() -> None:
    assert errors("config", {"version": 1, "upstreams": {"a": {"command": "x", "url": "http://127.0.0.1/mcp"}}}) != []
    assert errors("config", {"version": 1, "upstreams": {"a": {"args": ["x"]}}}) != []
    assert errors("config", {"version": 1, "upstreams": {"a b": {"command": "x"}}}) != []


def test_test_file_schema_follows_the_parser() -> None:
    good = {"cases": [{"name": "n", "principal": {"user": "u", "agent": "a"}, "call": {"tool": "fs/x"}, "expect": "deny"}]}
    assert errors("tests", good) == [] and not parse_test_file(yaml.safe_dump(good), "t.test.yaml").problems
    both = {"cases": [{**good["cases"][0], "principal": {"user": "u", "agent": "a", "agents": ["a"]}}]}
    assert errors("tests", both) != [] and parse_test_file(yaml.safe_dump(both), "t.test.yaml").problems
