"""The inline upstream's default name: derived from the command, ``upstream`` when it says too little
or when the policies were written for the documented default ``upstream``."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_guard.proxy.reload import load_policy_set
from mcp_guard.upstreams.naming import derive_upstream_name, inline_upstream_name


@pytest.mark.parametrize(("command", "name"), [
    ("npx -y @modelcontextprotocol/server-filesystem ./workspace", "filesystem"),
    ("npx -y @modelcontextprotocol/server-filesystem@2026.8.31 .", "filesystem"),
    ("mcp-server-time", "time"),
    ("/home/me/.venv/bin/mcp-server-time --local-timezone UTC", "time"),
    ("uvx mcp-server-git==2026.10.19 --repository .", "git"),
    ("uvx --from mcp-server-git mcp-server-git", "git"),
    ("python -m mcp_server_time", "time"),
    ("python3 servers/notes_server.py", "notes"),
    ("pipx run mcp-server-fetch", "fetch"),
    ("uv tool run mcp-server-fetch", "fetch"),
    ("npx @playwright/mcp@latest", "playwright"),
    ("github-mcp-server stdio", "github"),
    ("C:\\tools\\weather.exe", "weather"),
    ("my server!", "my"),
])
def test_the_documented_rule(command: str, name: str) -> None:
    assert derive_upstream_name(command.split(" ")) == name


@pytest.mark.parametrize("command", ["node dist/index.js", "python", "docker run -i --rm mcp/github", "npx -y", "python -m", "./server", "uvx mcp"])
def test_commands_that_say_too_little_have_no_derived_name(command: str) -> None:
    assert derive_upstream_name(command.split(" ")) is None


def test_policies_written_for_the_default_keep_it() -> None:
    argv = ["mcp-server-time"]
    assert inline_upstream_name(argv, set()) == "time"
    assert inline_upstream_name(argv, {"time", "fs"}) == "time"
    assert inline_upstream_name(argv, {"upstream"}) == "upstream"  # policies say upstream/get_current_time
    assert inline_upstream_name(argv, {"upstream", "time"}) == "time"
    assert inline_upstream_name(["node", "index.js"], {"fs"}) == "upstream"


def test_derived_names_are_valid_upstream_names() -> None:
    from mcp_guard.config import UPSTREAM_NAME

    for argv in (["x" * 80], ["npx", "@a/" + "é" * 10 + "tool"], ["--weird--"], ["a.b.c"]):
        name = derive_upstream_name(argv)
        assert name is None or UPSTREAM_NAME.match(name), (argv, name)


POLICY = """version: 1
policies:
  - id: p
    rules:
      - {effect: allow, tools: ["time/get_current_time", "fs/read_file", "*/list"]}
      - {effect: allow, prompts: ["gti/review"]}
"""


def test_the_inline_form_parses_the_policies_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Naming the inline server needs the policies; the guard compiles that same parse instead of
    reading and parsing the files again, and warns exactly as a fresh load would."""
    from mcp_guard.cli.run import merge_inline
    from mcp_guard.config import default_config
    from mcp_guard.policy import load_sources, parse

    (tmp_path / "p.yaml").write_text(POLICY)
    loads: list[str] = []
    real = parse.load
    monkeypatch.setattr(parse, "load", lambda text, file: (loads.append(file), real(text, file))[1])
    config, parsed = merge_inline(default_config(), ("mcp-server-time",), None, (str(tmp_path),))
    policies = load_policy_set(config, parsed)
    assert list(config.upstreams) == ["time"]
    assert len(loads) == 1, loads
    fresh = load_sources([(loads[0], POLICY)], upstreams=["time"])
    assert policies.warnings == fresh.warnings
    assert [w.split(": ", 1)[1] for w in policies.warnings] == [
        "warning: no upstream named `fs` is configured, so `fs/read_file` can never match",
        "warning: no upstream named `gti` is configured, so `gti/review` can never match",
    ]


def test_checking_against_names_is_what_parsing_with_them_says() -> None:
    from mcp_guard.policy import parse_sources

    once = parse_sources([("p.yaml", POLICY)])
    assert not once.warnings  # no names known: nothing to warn about yet
    for names in (["time"], ["time", "fs"], ["git"], ["time", "fs", "gti"]):
        assert once.against(names).lines() == parse_sources([("p.yaml", POLICY)], upstreams=names).lines()
    assert "did you mean `git`?" in "\n".join(once.against(["git", "time"]).lines())
