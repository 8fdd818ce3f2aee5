"""``serve.admin``, ``serve.drain_timeout`` and an upstream's ``required``: parsed, defaulted, and
every mistake refused with ``file:line: message``."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_guard.config import AdminConfig, parse_config
from mcp_guard.errors import ConfigError

BASE = """\
version: 1
upstreams:
  fs: {command: server, required: true}
  extra: {command: other}
"""


def test_admin_listen_drain_and_required_upstreams(tmp_path: Path) -> None:
    text = BASE + "serve:\n  admin: {listen: 0.0.0.0:9464}\n  drain_timeout: 45s\n"
    config = parse_config(text, str(tmp_path / "guard.yaml"), environ={})
    assert config.serve.admin == AdminConfig("0.0.0.0", 9464)
    assert config.serve.drain_timeout == 45
    assert (config.upstreams["fs"].required, config.upstreams["extra"].required) == (True, False)


def test_defaults_no_admin_listener_and_a_twenty_second_drain(tmp_path: Path) -> None:
    config = parse_config(BASE, str(tmp_path / "guard.yaml"), environ={})
    assert config.serve.admin is None and config.serve.drain_timeout == 20


def test_an_ipv6_admin_address(tmp_path: Path) -> None:
    config = parse_config(BASE + "serve:\n  admin: {listen: '[::1]:9464'}\n", str(tmp_path / "guard.yaml"), environ={})
    assert config.serve.admin == AdminConfig("::1", 9464)


@pytest.mark.parametrize(("block", "message"), [
    ("  admin: {listen: 9464}\n", "`listen` must be HOST:PORT"),
    ("  admin: {listen: 'localhost:99999'}\n", "`listen` must be HOST:PORT"),
    ("  admin: {listen: 'localhost:'}\n", "`listen` must be HOST:PORT"),
    ("  admin: {}\n", "`serve.admin` needs `listen: HOST:PORT`"),
    ("  admin: {listen: 'a:1', port: 2}\n", "port"),
    ("  drain_timeout: soon\n", "must be a duration"),
])
def test_mistakes_name_the_line(tmp_path: Path, block: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(BASE + "serve:\n" + block, str(tmp_path / "guard.yaml"), environ={})
    problems = "\n".join(exc.value.problems)
    assert f"guard.yaml:{BASE.count(chr(10)) + 2}:" in problems and message in problems


def test_required_must_be_a_boolean(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(BASE.replace("required: true", "required: maybe"), str(tmp_path / "guard.yaml"), environ={})
    assert "guard.yaml:3:" in "\n".join(exc.value.problems)
