"""The grant CLI through click's runner, and once through the installed ``mcp-guard`` as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mcp_guard.cli import main
from mcp_guard.grants import ChainVerifier, load_public_key
from mcp_guard.kinds import Kind
from mcp_guard.state import open_store

BIN = Path(sys.executable).parent / "mcp-guard"


def run(*args: str, ok: bool = True) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert (result.exit_code == 0) == ok, result.output + result.stderr
    return result.stdout if ok else result.stderr


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    for name in ("idp", "planner", "coder"):
        run("keygen", "--out", str(tmp_path / name))
    return tmp_path


def _guard_yaml(tmp: Path) -> Path:
    cfg = tmp / "guard.yaml"
    cfg.write_text(
        "version: 1\n"
        "trust:\n  issuers:\n    corp-idp: ./idp/public.jwk\n"
        "state:\n  url: sqlite:///state/state.db\n",
        encoding="utf-8",
    )
    return cfg


def test_keygen_writes_a_private_key_only_its_owner_can_read(keys: Path) -> None:
    priv = keys / "idp" / "private.pem"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert priv.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    jwk = json.loads((keys / "idp" / "public.jwk").read_text())
    assert (jwk["kty"], jwk["crv"]) == ("OKP", "Ed25519") and "d" not in jwk
    assert load_public_key(keys / "idp" / "public.pem") is not None
    err = run("keygen", "--out", str(keys / "idp"), ok=False)
    assert "already exists" in err and "--force" in err


def _issue(keys: Path, *extra: str) -> str:
    return run(
        "grant", "issue", "--key", str(keys / "idp/private.pem"), "--issuer", "corp-idp", "--user", "alice@example.com",
        "--agent", "planner", "--agent-key", str(keys / "planner/public.jwk"), "--tools", "fs/*,time/*",
        "--purpose", "code-review", "--depth", "1", "--max-calls", "100", "--approve", "fs/write_file", *extra,
    ).strip()


def test_issue_delegate_inspect_and_revoke(keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(keys)
    root = _issue(keys, "--arguments", 'fs/*={"properties": {"path": {"type": "string"}}}')
    assert root.count(".") == 2 and "\n" not in root  # the token alone on stdout
    (keys / "root.tok").write_text(root + "\n")
    chain = run(
        "grant", "delegate", "--chain", "@root.tok", "--key", "planner/private.pem", "--agent", "coder",
        "--tools", "fs/read_text_file", "--ttl", "10m", "--max-calls", "10",
    ).strip()
    assert chain.startswith(root + "~")
    cfg = _guard_yaml(keys)
    out = run("grant", "inspect", "--config", str(cfg), chain)
    assert "VALID: user:alice@example.com -> agent:planner -> agent:coder" in out
    assert "fs/write_file (approval always)" in out and "verdict: ok" in out
    verifier = ChainVerifier({"corp-idp": load_public_key(keys / "idp/public.jwk")}, "urn:mcp-guard:local")
    root_id = verifier.verify(chain, __import__("time").time()).link_ids[0]

    assert f"revoked {root_id}" in run("grant", "revoke", "--config", str(cfg), root_id)
    err = run("grant", "inspect", "--config", str(cfg), chain, ok=False)
    assert "revoked" in err

    async def is_revoked() -> str | None:
        from mcp_guard.config import load_config

        store = open_store(load_config(cfg).state_url)
        try:
            return await store.revoked([root_id])
        finally:
            await store.close()

    assert asyncio.run(is_revoked()) == root_id


def test_delegate_refuses_to_widen_naming_the_field(keys: Path) -> None:
    root = _issue(keys)
    base = ["grant", "delegate", "--chain", root, "--key", str(keys / "planner/private.pem"), "--agent", "coder"]
    assert "tools: git/commit" in run(*base, "--tools", "git/commit", ok=False)
    assert "max_calls" in run(*base, "--tools", "fs/read_text_file", "--max-calls", "101", ok=False)
    assert "depth" in run(*base, "--tools", "fs/read_text_file", "--depth", "1",
                          "--agent-key", str(keys / "coder/public.jwk"), ok=False)
    wrong = run("grant", "delegate", "--chain", root, "--key", str(keys / "coder/private.pem"), "--agent", "x",
                "--tools", "fs/read_text_file", ok=False)
    assert "not the key of agent planner" in wrong


def test_inspect_reports_an_invalid_chain_and_exits_1(keys: Path) -> None:
    root = _issue(keys)
    forged = root[:-3] + ("AAA" if root[-3:] != "AAA" else "BBB")
    result = CliRunner().invoke(main, ["grant", "inspect", "--trust", f"corp-idp={keys / 'idp/public.jwk'}", forged])
    assert result.exit_code == 1
    assert "INVALID" in result.stdout and "rejected" in result.stdout
    wrong_issuer = CliRunner().invoke(main, ["grant", "inspect", "--trust", f"other={keys / 'idp/public.jwk'}", root])
    assert wrong_issuer.exit_code == 1 and "untrusted_issuer" in wrong_issuer.stderr


def test_inspect_without_trust_says_the_root_was_not_verified(keys: Path) -> None:
    out = run("grant", "inspect", _issue(keys))
    assert "root signature NOT checked" in out


def test_bad_inputs_are_one_sentence_errors(keys: Path, tmp_path: Path) -> None:
    err = run("grant", "issue", "--key", str(keys / "idp/public.pem"), "--issuer", "i", "--user", "u", "--agent", "a",
              "--tools", "fs/x", ok=False)
    assert err.startswith("mcp-guard: ") and "Traceback" not in err
    assert "--ttl" in run("grant", "issue", "--key", str(keys / "idp/private.pem"), "--issuer", "i", "--user", "u",
                          "--agent", "a", "--tools", "fs/x", "--ttl", "soon", ok=False)
    assert "UPSTREAM/TOOL" in run("grant", "issue", "--key", str(keys / "idp/private.pem"), "--issuer", "i",
                                  "--user", "u", "--agent", "a", "--tools", "fs/[ab]", ok=False)
    assert "agent_key" in run("grant", "issue", "--key", str(keys / "idp/private.pem"), "--issuer", "i",
                              "--user", "u", "--agent", "a", "--tools", "fs/x", "--depth", "1", ok=False)


def test_real_subprocess_keygen_issue_delegate_inspect(tmp_path: Path) -> None:
    def mg(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN), *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)

    for name in ("idp", "planner", "coder"):
        assert mg("keygen", "--out", name).returncode == 0
    root = mg("grant", "issue", "--key", "idp/private.pem", "--issuer", "corp-idp", "--user", "alice@example.com",
              "--agent", "planner", "--agent-key", "planner/public.jwk", "--tools", "fs/*,time/*", "--depth", "1",
              "--ttl", "1h")
    assert root.returncode == 0, root.stderr
    (tmp_path / "root.tok").write_text(root.stdout)
    chain = mg("grant", "delegate", "--chain", "@root.tok", "--key", "planner/private.pem", "--agent", "coder",
               "--agent-key", "coder/public.jwk", "--tools", "time/*")
    assert chain.returncode == 0, chain.stderr
    ok = mg("grant", "inspect", "--trust", "corp-idp=idp/public.jwk", chain.stdout.strip())
    assert ok.returncode == 0 and "VALID" in ok.stdout
    widen = mg("grant", "delegate", "--chain", "@root.tok", "--key", "planner/private.pem", "--agent", "coder",
               "--tools", "git/*")
    assert widen.returncode == 1 and widen.stderr.startswith("mcp-guard: tools: git/*") and widen.stdout == ""


def test_resources_and_prompts_through_the_cli(keys: Path) -> None:
    root = _issue(keys, "--resources", "docs/file:///srv/*,mem/*", "--prompts", "git/*")
    out = run("grant", "inspect", "--trust", f"corp-idp={keys / 'idp/public.jwk'}", root)
    assert "  resources: docs/file:///srv/*, mem/*" in out and "  prompts: git/*" in out and "VALID" in out
    base = ["grant", "delegate", "--chain", root, "--key", str(keys / "planner/private.pem"), "--agent", "coder",
            "--tools", "time/*"]
    narrow = run(*base, "--resources", "docs/file:///srv/tickets/*")
    shown = run("grant", "inspect", "--trust", f"corp-idp={keys / 'idp/public.jwk'}", narrow)
    assert "link 1:" in shown and "  resources: docs/file:///srv/tickets/*" in shown and "  prompts: (none)" in shown
    assert run(*base, "--resources", "docs/*", ok=False).startswith("mcp-guard: resources: docs/* is not within the resources of link 0")
    assert run(*base, "--prompts", "fs/*", ok=False).startswith("mcp-guard: prompts: fs/* is not within the prompts of link 0")
    verifier = ChainVerifier({"corp-idp": load_public_key(keys / "idp/public.jwk")}, "urn:mcp-guard:local")
    chain = verifier.verify(narrow.strip(), time.time())
    assert chain.permits(Kind.RESOURCE, "docs/file:///srv/tickets/1") and not chain.permits(Kind.PROMPT, "git/commit")
