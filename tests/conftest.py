"""pytest fixtures over the helpers in ``tests/fixtures`` (import those directly for non-fixture use)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures import (
    ALLOW_ALL,
    TOOLS_BIN,
    RecordFile,
    conformance_server_command,
    free_port,
    serve_http,
    tools_available,
    write_guard_config,
)


@pytest.fixture
def tools_bin() -> Path:
    """``.tools/node_modules/.bin`` (Node 22 + the pinned npm MCP tools); skips when missing."""
    if not tools_available():
        pytest.skip("Node 22 missing from .tools/node_modules/.bin; run scripts/setup")
    return TOOLS_BIN


@pytest.fixture
def port() -> int:
    """A free TCP port on 127.0.0.1."""
    return free_port()


@pytest.fixture
def record_file(tmp_path: Path) -> RecordFile:
    """Where a recording upstream writes what it received: pass ``record_file.env()`` as its env."""
    return RecordFile(tmp_path / "received.jsonl")


GuardFactory = Callable[..., Path]


@pytest.fixture
def make_guard(tmp_path: Path) -> GuardFactory:
    """``make_guard(upstreams, policies=ALLOW_ALL, **top_level) -> guard.yaml path`` in tmp_path."""

    def make(upstreams: dict[str, dict[str, Any]], policies: Any = ALLOW_ALL, **extra: Any) -> Path:
        return write_guard_config(tmp_path, upstreams, policies, **extra)

    return make


@pytest.fixture
def conformance_http_url(tmp_path: Path) -> Iterator[str]:
    """The conformance fixture served over Streamable HTTP on a free port; yields its /mcp URL."""
    p = free_port()
    with serve_http(conformance_server_command("--http", "--port", str(p)), p, log=tmp_path / "fixture-http.log") as url:
        yield url
