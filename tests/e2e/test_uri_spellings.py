"""Every spelling of a denied resource URI is refused before it reaches a real upstream.

A real ``mcp-guard run`` in front of the recording server (which answers a read of any URI and
records what it received): each respelling of ``file:///srv/secret/...`` and
``https://example.com/secret/...`` answers exactly as an unknown URI and never arrives upstream,
while the allowed neighbours do.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures import RecordFile, recording_server_command, stdio_upstream, write_guard_config
from helpers_proxy import raw_guard

pytestmark = [pytest.mark.e2e]

POLICY = [{"id": "uris", "rules": [
    {"effect": "allow", "resources": ["rec/*"]},
    {"effect": "deny", "resources": ["rec/file:///srv/secret/*", "rec/https://example.com/secret/*"]},
]}]
DENIED = [
    "file://localhost/srv/secret/s.txt", "file:/srv/secret/s.txt", "file:////srv/secret/s.txt",
    "file:///srv//secret/s.txt", "FILE://LOCALHOST/srv/secret/s.txt", "file:///srv/%73ecret/s.txt",
    "file:///srv\\secret\\s.txt", "file:///srv/open/../secret/s.txt",
    "https://EXAMPLE.COM/secret/a", "https://example.com:443/secret/a", "https://%65xample.com/secret/a",
    "https://example.com\\secret\\a", "https://example.com//secret/a", "https://example.com./secret/a",
    "https://user@example.com/secret/a",
]
ALLOWED = ["file:///srv/open/s.txt", "https://example.com/open/a", "https://example.com:8443/secret/a"]


async def test_no_spelling_of_a_denied_uri_reaches_the_upstream(tmp_path: Path) -> None:
    record = RecordFile(tmp_path / "rec.jsonl")
    config = write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command("--watchable"), env=record.env())},
                                POLICY, audit={"path": str(tmp_path / "audit.jsonl")})
    async with raw_guard(config) as g:
        await g.initialize()
        for uri in DENIED:
            answer = await g.request("resources/read", {"uri": uri})
            assert answer.get("error", {}).get("message") == f"Resource not found: {uri}", (uri, answer)
        for uri in ALLOWED:
            answer = await g.request("resources/read", {"uri": uri})
            assert answer["result"]["contents"][0]["uri"] == uri, (uri, answer)
    reached = [r["uri"] for r in record.records() if r["method"] == "resources/read"]
    assert reached == ALLOWED
