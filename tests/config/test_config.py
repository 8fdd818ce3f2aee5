"""guard.yaml: every problem at once as file:line:col with hints, ${VAR} expansion,
paths relative to the file, defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_guard.config import (
    DEFAULT_AUDIENCE,
    ClientCredentialsConfig,
    OAuthConfig,
    check_grant_variable,
    expand,
    load_config,
    parse_config,
    parse_duration,
    resolve_state_url,
    upstream_environment,
)
from mcp_guard.errors import ConfigError

SPEC_EXAMPLE = """\
version: 1
upstreams:
  fs:
    command: npx
    args: ["-y", "@modelcontextprotocol/server-filesystem", "./workspace"]
    env: {LOG_LEVEL: info}
  time:
    command: mcp-server-time
  tickets:
    url: http://127.0.0.1:9000/mcp
    headers: {Authorization: "Bearer ${TICKETS_TOKEN}"}
policies: ./policies
identity:
  user: ${USER}
  agent: claude-desktop
  purpose: code-review
  grant: ${MCP_GUARD_GRANT:-}
trust:
  issuers:
    corp-idp: ./keys/corp-idp.jwk
  audience: urn:mcp-guard:local
approvals:
  timeout: 120s
audit:
  path: ./audit.jsonl
pinning: enforce
state:
  url: sqlite:///.mcp-guard/state.db
"""


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "policies").mkdir()
    from mcp_guard.grants import write_keypair

    _, jwk, _ = write_keypair(tmp_path / "keys")
    jwk.rename(tmp_path / "keys" / "corp-idp.jwk")
    return tmp_path


def test_the_spec_example_loads(home: Path) -> None:
    (home / "guard.yaml").write_text(SPEC_EXAMPLE)
    cfg = load_config(home / "guard.yaml", environ={"USER": "alice", "TICKETS_TOKEN": "t0k"})
    assert list(cfg.upstreams) == ["fs", "time", "tickets"]
    assert cfg.upstreams["fs"].args[-1] == "./workspace" and cfg.upstreams["fs"].env == {"LOG_LEVEL": "info"}
    assert cfg.upstreams["tickets"].headers == {"Authorization": "Bearer t0k"}
    assert cfg.upstreams["fs"].exposed("read_file") == "fs_read_file"
    assert cfg.policies == ((home / "policies").resolve(),)
    assert cfg.identity.user == "alice" and cfg.identity.grant is None and cfg.identity.purpose == "code-review"
    assert cfg.trust.issuers == {"corp-idp": (home / "keys" / "corp-idp.jwk").resolve()}
    assert cfg.trust.audience == DEFAULT_AUDIENCE
    assert cfg.approvals.timeout == 120.0 and cfg.pinning == "enforce"
    assert cfg.audit.path == str((home / "audit.jsonl").resolve())
    assert cfg.state_url == f"sqlite:///{(home / '.mcp-guard' / 'state.db').resolve()}"


def test_every_problem_at_once_with_positions_and_hints(home: Path) -> None:
    text = "version: 1\nupstreams:\n  fs:\n    comand: npx\n  t:\n    command: x\n    roots: pas\nidentity:\n  agnt: a\npinning: enforc\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, str(home / "guard.yaml"), environ={})
    lines = err.value.problems
    assert any(line.endswith("guard.yaml:4:5: unknown key `comand` in upstream `fs` (did you mean `command`?)") for line in lines)
    assert any(":3:3: upstream `fs` needs exactly one of `command`" in line for line in lines)
    assert any(":7:12: `roots` must be one of pass | none, not `pas` (did you mean `pass`?)" in line for line in lines)
    assert any(":9:3: unknown key `agnt` in identity (did you mean `agent`?)" in line for line in lines)
    assert any(":10:10: `pinning` must be one of off | warn | enforce" in line for line in lines)
    assert [int(line.split(":")[1]) for line in lines] == sorted(int(line.split(":")[1]) for line in lines)


def test_unset_variable_is_an_error_unless_defaulted(home: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("version: 1\nidentity:\n  user: ${NOPE}\n", str(home / "g.yaml"), environ={})
    assert "environment variable NOPE is not set" in err.value.problems[0]
    cfg = parse_config("version: 1\nidentity:\n  user: ${NOPE:-bob}\n", str(home / "g.yaml"), environ={})
    assert cfg.identity.user == "bob"


@pytest.mark.parametrize(("text", "env", "out"), [
    ("${A}", {"A": "x"}, "x"), ("${A:-d}", {}, "d"), ("${A:-d}", {"A": ""}, "d"), ("pre-${A}-post", {"A": "1"}, "pre-1-post"),
    ("$A stays", {"A": "1"}, "$A stays"),
])
def test_expansion(text: str, env: dict[str, str], out: str) -> None:
    assert expand(text, env)[0] == out


@pytest.mark.parametrize(("value", "seconds"), [("120s", 120.0), ("10m", 600.0), ("1h", 3600.0), ("500ms", 0.5), (90, 90.0), ("1d", 86400.0)])
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", -1, True, "10 parsecs"])
def test_bad_durations(value: object) -> None:
    assert parse_duration(value) is None


def test_state_urls(tmp_path: Path) -> None:
    assert resolve_state_url("sqlite:///rel/s.db", tmp_path) == f"sqlite:///{(tmp_path / 'rel' / 's.db').resolve()}"
    assert resolve_state_url("sqlite:////abs/s.db", tmp_path) == "sqlite:////abs/s.db"
    assert resolve_state_url("redis://127.0.0.1:6379/0", tmp_path) == "redis://127.0.0.1:6379/0"


def test_upstream_options(home: Path) -> None:
    text = ("version: 1\nupstreams:\n  fs:\n    command: x\n    prefix: false\n    roots: [./ws]\n    timeout: 2s\n"
            "    protocol: auto\n    trust_annotations: true\n")
    up = parse_config(text, str(home / "g.yaml"), environ={}).upstreams["fs"]
    assert (up.prefix, up.roots, up.timeout, up.protocol, up.trust_annotations) == (False, (str((home / "ws").resolve()),), 2.0, "auto", True)
    assert up.exposed("read") == "read"


def _errors(problems: list[str] | tuple[str, ...]) -> list[str]:
    """The error lines of a problem list (``check`` advisories such as a command not on PATH aside)."""
    return [p for p in problems if ": warning: " not in p]


def test_timeouts_have_short_documented_defaults(home: Path) -> None:
    up = parse_config("version: 1\nupstreams:\n  fs: {command: x}\n", str(home / "g.yaml"), environ={}).upstreams["fs"]
    assert (up.timeout, up.startup_timeout) == (60.0, 10.0)
    up = parse_config("version: 1\nupstreams:\n  fs: {command: x, startup_timeout: 90s, timeout: 5s}\n", str(home / "g.yaml"), environ={}).upstreams["fs"]
    assert (up.timeout, up.startup_timeout) == (5.0, 90.0)
    with pytest.raises(ConfigError) as err:
        parse_config("version: 1\nupstreams:\n  fs: {command: x, startup_timeout: soon}\n", str(home / "g.yaml"), environ={})
    assert "`startup_timeout` must be a duration" in _errors(err.value.problems)[0]


def test_an_upstream_gets_only_the_essentials_and_what_it_names(home: Path) -> None:
    text = ("version: 1\nupstreams:\n  fs:\n    command: x\n    env: {OWN: '1', HOME: /srv/fs}\n"
            "    env_passthrough: [NODE_OPTIONS, 'npm_config_*']\n")
    up = parse_config(text, str(home / "g.yaml"), environ={}).upstreams["fs"]
    guard_env = {
        "PATH": "/bin", "HOME": "/root", "LANG": "C", "LC_ALL": "C", "TZ": "UTC", "NODE_OPTIONS": "--x",
        "npm_config_cache": "/c", "GITHUB_TOKEN": "secret", "OTEL_EXPORTER_OTLP_HEADERS": "k=v",
        "MCP_GUARD_GRANT": "chain", "LC": "not-a-locale-var-but-a-prefix-match-needs-the-underscore",
    }
    assert upstream_environment(up, guard_env) == {
        "PATH": "/bin", "HOME": "/srv/fs", "LANG": "C", "LC_ALL": "C", "TZ": "UTC", "NODE_OPTIONS": "--x",
        "npm_config_cache": "/c", "OWN": "1",
    }
    with pytest.raises(ConfigError) as err:
        parse_config("version: 1\nupstreams:\n  fs: {command: x, env_passthrough: ['A B', 'X*Y']}\n", str(home / "g.yaml"), environ={})
    errors = _errors(err.value.problems)
    assert len(errors) == 2 and "is not a variable name or a PREFIX* pattern" in errors[0]


def test_a_grant_variable_the_config_ignores_is_refused(home: Path) -> None:
    plain = parse_config("version: 1\nupstreams:\n  fs: {command: x}\n", str(home / "g.yaml"), environ={})
    with pytest.raises(ConfigError, match=r"MCP_GUARD_GRANT is set but identity.grant is not"):
        check_grant_variable(plain, {"MCP_GUARD_GRANT": "a.b.c"})
    check_grant_variable(plain, {"MCP_GUARD_GRANT": " "})  # empty: nothing is ignored
    check_grant_variable(plain, {})
    uses = "version: 1\nupstreams:\n  fs: {command: x}\nidentity: {grant: '${MCP_GUARD_GRANT:-}'}\n"
    check_grant_variable(parse_config(uses, str(home / "g.yaml"), environ={"MCP_GUARD_GRANT": "a.b.c"}), {"MCP_GUARD_GRANT": "a.b.c"})


def test_invalid_yaml_names_the_line(home: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("version: 1\nupstreams: [\n", str(home / "g.yaml"), environ={})
    assert err.value.problems[0].startswith(f"{home / 'g.yaml'}:3:1: invalid YAML")


def test_workdir_and_resolve(home: Path) -> None:
    text = ("version: 1\nupstreams:\n  fs:\n    command: x\n    cwd: ./run\n    workdir: ./ws\n    resolve: true\n"
            "  plain:\n    command: y\n    cwd: ./run\n  remote:\n    url: http://127.0.0.1:1/mcp\n    workdir: /srv/app\n")
    ups = parse_config(text, str(home / "g.yaml"), environ={}).upstreams
    fs, plain, remote = ups["fs"], ups["plain"], ups["remote"]
    assert fs.workdir == str((home / "ws").resolve()) and fs.resolve
    assert fs.paths.workdir == fs.workdir and fs.paths.resolve is not None
    # never guessed from cwd: a server may resolve relative paths elsewhere
    assert plain.workdir is None and not plain.resolve and plain.paths.resolve is None
    assert remote.workdir == "/srv/app" and not remote.resolve


def test_resolve_needs_a_local_upstream(home: Path) -> None:
    text = "version: 1\nupstreams:\n  remote:\n    url: http://127.0.0.1:1/mcp\n    resolve: true\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, str(home / "g.yaml"), environ={})
    assert err.value.problems[0].startswith(f"{home / 'g.yaml'}:5:14: `resolve` needs a local (stdio) upstream")


def test_resolve_path_follows_links_and_keeps_new_names(tmp_path: Path) -> None:
    from mcp_guard.config import resolve_path

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    real = str((tmp_path / "real").resolve())
    assert resolve_path(str(tmp_path / "link" / "new.txt")) == f"{real}/new.txt"
    assert resolve_path(str(tmp_path / "link")) == real
    assert resolve_path(str(tmp_path / "nope" / ".." / "x")) is None
AUTH_EXAMPLE = """\
version: 1
upstreams:
  linear:
    url: https://mcp.linear.app/mcp
    auth:
      oauth: {}
  internal:
    url: https://tools.internal/mcp
    auth:
      client_credentials: {client_id: guard, client_secret: "${INTERNAL_SECRET}", scopes: [tools]}
  portal:
    url: https://portal.example/mcp
    auth:
      oauth: {client_id: pre-reg, client_secret: s, scopes: "read write", redirect_uri: "http://127.0.0.1:8765/callback"}
  plain:
    url: https://plain.example/mcp
    auth:
      headers: {Authorization: Bearer abc}
"""


def test_upstream_auth_forms(home: Path) -> None:
    cfg = parse_config(AUTH_EXAMPLE, str(home / "guard.yaml"), environ={"INTERNAL_SECRET": "s3cr3t", "USER": "alice"})
    ups = cfg.upstreams
    assert ups["linear"].auth == OAuthConfig()
    assert ups["internal"].auth == ClientCredentialsConfig(client_id="guard", client_secret="s3cr3t", scopes=("tools",))
    assert ups["portal"].auth == OAuthConfig(client_id="pre-reg", client_secret="s", scopes=("read", "write"),
                                             redirect_uri="http://127.0.0.1:8765/callback")
    assert ups["plain"].auth is None and ups["plain"].headers == {"Authorization": "Bearer abc"}
    tokens = home / ".mcp-guard" / "tokens" / "alice"
    assert ups["linear"].token_file == str(tokens / "linear.token") and ups["plain"].token_file is None


def test_upstream_auth_problems_point_at_their_lines(home: Path) -> None:
    text = """\
version: 1
upstreams:
  a:
    url: https://a.example/mcp
    headers: {Authorization: Bearer x}
    auth:
      oauth: {scope: read}
  b:
    command: server
    auth:
      client_credentials: {client_id: x, client_secret: y}
  c:
    url: https://c.example/mcp
    auth:
      client_credential: {client_id: x}
  d:
    url: https://d.example/mcp
    auth:
      oauth: {client_metadata_url: "http://d.example/cimd.json", redirect_uri: "https://d.example/cb"}
      client_credentials: {client_id: x, client_secret: y}
  e:
    url: https://e.example/mcp
    auth:
      client_credentials: {client_id: x}
"""
    with pytest.raises(ConfigError) as err:
        parse_config(text, str(home / "guard.yaml"), environ={})
    lines = "\n".join(err.value.problems)
    assert "guard.yaml:6:5: `auth.oauth` supplies the Authorization header; remove the static one from `headers`" in lines
    assert "guard.yaml:7:15: unknown key `scope` in auth.oauth (did you mean `scopes`?)" in lines
    assert "guard.yaml:10:5: `auth` applies to HTTP upstreams (`url`) only" in lines
    assert "guard.yaml:15:7: unknown key `client_credential` in auth (did you mean `client_credentials`?)" in lines
    assert "guard.yaml:18:5: `auth` takes one of `oauth` or `client_credentials`, not both" in lines
    assert "guard.yaml:24:7: `client_credentials` needs `client_secret`" in lines
