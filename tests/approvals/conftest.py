"""Fixtures for the approval tests: a guard in front of the recording upstream, and a host."""

from __future__ import annotations

from pathlib import Path

import pytest
from approvalkit import IDENTITY, POLICIES, GuardYaml, Host
from fixtures import RecordFile, recording_server_command, stdio_upstream, write_guard_config


@pytest.fixture
def host() -> Host:
    return Host()



@pytest.fixture
def guard_yaml(tmp_path: Path, record_file: RecordFile) -> GuardYaml:
    """``guard_yaml(timeout="20s", remember="none", state="memory://") -> guard.yaml`` with an audit log."""

    def make(timeout: str = "20s", remember: str = "none", state: str = "memory://") -> Path:
        path: Path = write_guard_config(
            tmp_path,
            {"notes": stdio_upstream(recording_server_command(), env=record_file.env())},
            POLICIES,
            identity=IDENTITY,
            approvals={"timeout": timeout, "remember": remember},
            audit={"path": str(tmp_path / "audit.jsonl")},
            state={"url": state},
        )
        return path

    return make
