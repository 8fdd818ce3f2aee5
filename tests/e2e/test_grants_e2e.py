"""Grant chains end to end: a root grant to a planner, delegated to a coder, presented through
``MCP_GUARD_GRANT`` to real ``mcp-guard run`` processes in front of the recording upstream."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from fixtures import (
    RecordFile,
    chattr,
    guarded_session,
    mcp_guard_bin,
    recording_server_command,
    stdio_upstream,
    tools_env,
    write_guard_config,
)
from fixtures.clock import ShiftedClock
from helpers_proxy import text
from mcp.shared.exceptions import MCPError

from mcp_guard.grants import delegate, generate_keypair, issue_grant, public_jwk

pytestmark = pytest.mark.e2e

TOOLS = ["rec/echo", "rec/read_note", "rec/write_note"]


class Keys:
    def __init__(self, tmp: Path) -> None:
        import json

        from cryptography.hazmat.primitives import serialization

        self.idp, idp_pub = generate_keypair()
        self.planner, self.planner_pub = generate_keypair()
        self.coder, self.coder_pub = generate_keypair()
        self.idp_jwk = tmp / "idp.jwk"
        self.idp_jwk.write_text(json.dumps(public_jwk(idp_pub)))
        self._ser = serialization

    def chain(self, *, coder_tools: list[str], coder_ttl: float = 600, coder_calls: int | None = None) -> tuple[str, str]:
        root = issue_grant(
            self.idp, "corp-idp", "alice@example.com", "planner", TOOLS,
            agent_key=self.planner_pub, purpose="refactor", depth=1, ttl=3600,
        )
        chain = delegate(root, self.planner, "coder", coder_tools, agent_key=self.coder_pub, ttl=coder_ttl, max_calls=coder_calls)
        return chain, chain.rsplit("~", 1)[-1]


def _config(tmp: Path, keys: Keys, record: RecordFile) -> Path:
    return write_guard_config(
        tmp,
        {"rec": stdio_upstream(recording_server_command(), env=record.env())},
        identity={"user": "ignored-when-granted", "grant": "${MCP_GUARD_GRANT:-}"},
        trust={"issuers": {"corp-idp": str(keys.idp_jwk)}},
        state={"url": f"sqlite:///{tmp / 'state.db'}"},
        audit={"path": str(tmp / "audit.jsonl")},
    )


def _env(chain: str) -> dict[str, str]:
    return tools_env({"MCP_GUARD_GRANT": chain})


def _link_id(token: str) -> str:
    import base64
    import json

    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"])


async def test_list_is_the_intersection_and_calls_outside_are_not_forwarded(tmp_path: Path) -> None:
    keys = Keys(tmp_path)
    record = RecordFile(tmp_path / "rec.jsonl")
    chain, _ = keys.chain(coder_tools=["rec/echo", "rec/read_note"])
    config = _config(tmp_path, keys, record)
    async with guarded_session(config, env=_env(chain)) as client:
        names = sorted(t.name for t in (await client.list_tools()).tools)
        assert names == ["rec_echo", "rec_read_note"]  # policy allows all; planner has write_note; coder does not
        ok = await client.call_tool("rec_echo", {"text": "hi"})
        assert not ok.is_error
        with pytest.raises(MCPError) as hidden:
            await client.call_tool("rec_write_note", {"path": "a", "text": "b"})
        assert hidden.value.error.code == -32602
        assert hidden.value.error.message == "Unknown tool: rec_write_note"
    assert record.tools_called() == ["echo"]
    audit = (tmp_path / "audit.jsonl").read_text()
    assert "agent:coder" in audit and "agent:planner" in audit and chain not in audit


async def test_revoke_from_another_process_takes_effect_on_the_next_call(tmp_path: Path) -> None:
    keys = Keys(tmp_path)
    record = RecordFile(tmp_path / "rec.jsonl")
    chain, _ = keys.chain(coder_tools=["rec/echo"])
    config = _config(tmp_path, keys, record)
    async with guarded_session(config, env=_env(chain)) as client:
        assert not (await client.call_tool("rec_echo", {"text": "1"})).is_error
        planner_jti = _link_id(chain.split("~")[0])  # revoking an ancestor revokes its descendants
        done = await asyncio.to_thread(
            subprocess.run,
            [str(mcp_guard_bin()), "grant", "revoke", "--config", str(config), "--", planner_jti],
            capture_output=True, text=True, timeout=30, env=_env(""),
        )
        assert done.returncode == 0, done.stderr
        refused = await client.call_tool("rec_echo", {"text": "2"})
        assert refused.is_error
        assert "revoked" in text(refused)
    assert [a for _, a in record.calls()] == [{"text": "1"}]


async def test_expiry_mid_session_refuses(tmp_path: Path) -> None:
    """The coder's link expires while the guard runs: the guard's own clock is moved past it (no
    sleeping, so a slow start-up on a loaded machine cannot eat the link's lifetime first)."""
    keys = Keys(tmp_path)
    record = RecordFile(tmp_path / "rec.jsonl")
    ttl = 600
    chain, _ = keys.chain(coder_tools=["rec/echo"], coder_ttl=ttl)
    config = _config(tmp_path, keys, record)
    clock = ShiftedClock(tmp_path)
    async with guarded_session(config, env=clock.env(_env(chain))) as client:
        assert not (await client.call_tool("rec_echo", {"text": "early"})).is_error
        clock.advance(ttl / 2)  # still inside the link's lifetime
        assert not (await client.call_tool("rec_echo", {"text": "midway"})).is_error
        clock.advance(ttl / 2 + 5)  # just past it
        late = await client.call_tool("rec_echo", {"text": "late"})
        assert late.is_error
        assert "expire" in text(late).lower()
        with pytest.raises(MCPError) as listed:  # an expired chain gets nothing, not even a list
            await client.list_tools()
        assert listed.value.error.code == -32001 and "expire" in listed.value.error.message.lower()
    assert [a for _, a in record.calls()] == [{"text": "early"}, {"text": "midway"}]


async def test_budget_holds_across_two_guard_processes(tmp_path: Path) -> None:
    keys = Keys(tmp_path)
    record = RecordFile(tmp_path / "rec.jsonl")
    chain, _ = keys.chain(coder_tools=["rec/echo"], coder_calls=5)
    config = _config(tmp_path, keys, record)

    async def hammer(tag: str) -> list[bool]:
        outcomes: list[bool] = []
        async with guarded_session(config, env=_env(chain)) as client:
            for i in range(5):
                res = await client.call_tool("rec_echo", {"text": f"{tag}{i}"})
                outcomes.append(not res.is_error)
                if res.is_error:
                    assert "budget" in text(res)
        return outcomes

    a, b = await asyncio.gather(hammer("a"), hammer("b"))
    assert sum(a) + sum(b) == 5
    assert len(record.calls()) == 5


def test_invalid_chain_refuses_to_start(tmp_path: Path) -> None:
    keys = Keys(tmp_path)
    record = RecordFile(tmp_path / "rec.jsonl")
    chain, _ = keys.chain(coder_tools=["rec/echo"])
    tampered = chain[:-3] + ("AAA" if not chain.endswith("AAA") else "BBB")
    config = _config(tmp_path, keys, record)
    done = subprocess.run(
        [str(mcp_guard_bin()), "run", "--config", str(config)],
        input="", capture_output=True, text=True, timeout=30, env=_env(tampered),
    )
    assert done.returncode == 1
    assert "is invalid (bad_signature)" in done.stderr
    assert "Traceback" not in done.stderr
    assert record.records() == []


async def test_a_deleted_state_database_refuses_chained_calls_and_revoke_says_why(tmp_path: Path) -> None:
    """Deleting state.db under a running guard used to switch revocation off without a word: the
    guard read the deleted file, and `grant revoke` wrote to a fresh one nobody read."""
    keys = Keys(tmp_path)
    record = RecordFile(tmp_path / "rec.jsonl")
    chain, _ = keys.chain(coder_tools=["rec/echo"])
    config = _config(tmp_path, keys, record)
    log = tmp_path / "guard.log"
    async with guarded_session(config, env=_env(chain), stderr=log) as client:
        assert not (await client.call_tool("rec_echo", {"text": "1"})).is_error
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"state.db{suffix}").unlink(missing_ok=True)
        done = await asyncio.to_thread(
            subprocess.run,
            [str(mcp_guard_bin()), "grant", "revoke", "--config", str(config), "--", _link_id(chain.split("~")[0])],
            capture_output=True, text=True, timeout=30, env=_env(""),
        )
        assert done.returncode == 1, done
        assert "still uses the deleted one" in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "state.db").exists()
        for i in (2, 3, 4):
            refused = await client.call_tool("rec_echo", {"text": str(i)})
            assert refused.is_error
            assert "the state store is unavailable" in text(refused) and "was deleted" in text(refused)
    assert [a for _, a in record.calls()] == [{"text": "1"}]
    assert log.read_text().count("was deleted while mcp-guard was using it") == 1, log.read_text()


async def test_an_immutable_state_file_refuses_calls_instead_of_killing_the_guard(tmp_path: Path) -> None:
    """`chattr +i` on the -shm file SQLite maps used to end the guard with SIGBUS and no log line."""
    keys = Keys(tmp_path)
    record = RecordFile(tmp_path / "rec.jsonl")
    chain, _ = keys.chain(coder_tools=["rec/echo"])
    config = _config(tmp_path, keys, record)
    log = tmp_path / "guard.log"
    shm = tmp_path / "state.db-shm"
    async with guarded_session(config, env=_env(chain), stderr=log) as client:
        assert not (await client.call_tool("rec_echo", {"text": "1"})).is_error
        if not chattr("+i", shm):
            pytest.skip("chattr +i is not possible here (needs root and a filesystem with the immutable flag)")
        try:
            for i in (2, 3):
                refused = await client.call_tool("rec_echo", {"text": str(i)})
                assert refused.is_error and "is not writable" in text(refused)
        finally:
            assert chattr("-i", shm)
        assert not (await client.call_tool("rec_echo", {"text": "4"})).is_error
    assert [a["text"] for _, a in record.calls()] == ["1", "4"]
    logged = log.read_text()
    assert logged.count("is not writable") == 1 and "usable again" in logged, logged


def test_a_grant_in_the_environment_that_the_config_does_not_use_refuses_to_start(tmp_path: Path) -> None:
    """MCP_GUARD_GRANT beside a guard.yaml without `identity.grant` used to be ignored without a
    word, and the agent ran with the configuration's wider authority."""
    keys = Keys(tmp_path)
    record = RecordFile(tmp_path / "rec.jsonl")
    chain, _ = keys.chain(coder_tools=["rec/echo"])
    config = write_guard_config(
        tmp_path, {"rec": stdio_upstream(recording_server_command(), env=record.env())},
        identity={"user": "alice"}, trust={"issuers": {"corp-idp": str(keys.idp_jwk)}},
    )
    done = subprocess.run(
        [str(mcp_guard_bin()), "run", "--config", str(config)],
        input="", capture_output=True, text=True, timeout=30, env=_env(chain),
    )
    assert done.returncode == 1, done
    assert "MCP_GUARD_GRANT is set but identity.grant is not" in done.stderr
    assert "grant: ${MCP_GUARD_GRANT}" in done.stderr and "Traceback" not in done.stderr
    assert record.records() == []
    # the CLI commands that only need the state store still work with the variable set
    listed = subprocess.run(
        [str(mcp_guard_bin()), "approvals", "list", "--config", str(config)],
        capture_output=True, text=True, timeout=30, env=_env(chain),
    )
    assert listed.returncode == 0, listed.stderr
