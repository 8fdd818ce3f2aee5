"""The 2026-07-28 era's rules for one request (``proxy/era_rules.py``): pure, no transport."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_guard.proxy.era_rules import (
    HEADER_MISMATCH,
    REMOVED_METHODS,
    check,
    http_status,
    modern_header,
    modern_request,
)

META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


def req(method: str = "tools/call", meta: Any = META, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = dict(params)
    if meta is not None:
        body["_meta"] = meta
    return {"jsonrpc": "2.0", "id": 7, "method": method, "params": body}


def headers(method: str = "tools/call", name: str | None = "echo", version: str = "2026-07-28") -> dict[str, str]:
    out = {"mcp-protocol-version": version, "mcp-method": method}
    if name is not None:
        out["mcp-name"] = name
    return out


def test_a_complete_request_passes() -> None:
    assert check(req(name="echo"), headers()) is None
    assert check(req(name="echo")) is None  # stdio: no headers to compare


@pytest.mark.parametrize("method", sorted(REMOVED_METHODS))
def test_removed_methods_are_unknown_with_404(method: str) -> None:
    refusal = check(req(method), headers(method, None))
    assert refusal is not None and refusal.code == -32601 and refusal.status == 404
    assert refusal.answer(7)["error"]["code"] == -32601


@pytest.mark.parametrize("meta", [None, {}, {"io.modelcontextprotocol/protocolVersion": "2026-07-28"},
                                  {"io.modelcontextprotocol/clientCapabilities": {}}, "not an object"])
def test_missing_envelope_is_invalid_params_400(meta: Any) -> None:
    refusal = check(req(meta=meta, name="echo"), headers())
    assert refusal is not None and (refusal.code, refusal.status) == (-32602, 400)


def test_an_unsupported_version_lists_the_supported_ones() -> None:
    meta = {**META, "io.modelcontextprotocol/protocolVersion": "v999.0.0"}
    refusal = check(req(meta=meta, name="echo"), headers(version="v999.0.0"))
    assert refusal is not None and (refusal.code, refusal.status) == (-32022, 400)
    assert refusal.data["supported"] == ["2026-07-28"] and refusal.data["requested"] == "v999.0.0"
    assert check(req(meta=meta, name="echo")) is not None  # stdio too


def test_header_and_meta_versions_must_agree() -> None:
    refusal = check(req(name="echo"), headers(version="2026-08-01"))
    assert refusal is not None and (refusal.code, refusal.status) == (HEADER_MISMATCH, 400)


@pytest.mark.parametrize("sent", [None, "other", "ECHO", "еcho", "echo\u200b", "=?base64?ZWNobw?="])
def test_mcp_name_missing_wrong_or_a_look_alike_is_refused(sent: str | None) -> None:
    """Cyrillic е, a zero-width space, a non-canonical Base64 sentinel: none names ``echo``."""
    refusal = check(req(name="echo"), headers(name=sent))
    assert refusal is not None and refusal.code == HEADER_MISMATCH


def test_mcp_name_in_base64_names_the_same_tool() -> None:
    assert check(req(name="echo"), headers(name="=?base64?ZWNobw==?=")) is None


def test_mcp_method_missing_or_wrong_is_refused() -> None:
    assert check(req(name="echo"), {**headers(), "mcp-method": "tools/list"}) is not None
    no_method = headers()
    del no_method["mcp-method"]
    assert check(req(name="echo"), no_method) is not None


def test_a_routing_header_given_twice_is_refused_even_when_both_agree() -> None:
    raw = [("Mcp-Name", "echo"), ("mcp-name", "echo"), ("Mcp-Method", "tools/call")]
    refusal = check(req(name="echo"), headers(), raw)
    assert refusal is not None and refusal.code == HEADER_MISMATCH and "mcp-name" in refusal.message


def test_which_requests_are_modern() -> None:
    assert modern_header("2026-07-28") and modern_header("v999.0.0")
    assert not modern_header(None) and not modern_header("2025-11-25") and not modern_header("2025-06-18")
    assert modern_request(req()) and not modern_request(req(meta=None)) and not modern_request({"method": "x"})


def test_http_status_of_answers() -> None:
    assert http_status(-32601) == 404 and http_status(-32602) == 400 and http_status(-32001) == 200
    assert http_status(None) == 200 and http_status("x") == 200
