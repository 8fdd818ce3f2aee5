"""Property tests: glob coverage is sound, attenuation never widens, any tampered byte invalidates."""

from __future__ import annotations

from typing import Any

from grantkit import AUD, NOW, decode, make_world, sign_raw
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_guard.grants import ChainVerifier, GrantChain, GrantError, delegate, issue_grant
from mcp_guard.grants.model import covers, matches

WORLD = make_world()
VERIFIER = ChainVerifier({"corp-idp": WORLD.idp.public_key()}, AUD, cache_size=4)

segment_glob = st.text(alphabet="ab*", min_size=1, max_size=5)
segment_name = st.text(alphabet="ab", min_size=0, max_size=7)


@given(parent=segment_glob, child=segment_glob, name=segment_name)
def test_covers_is_sound(parent: str, child: str, name: str) -> None:
    """If the parent covers the child pattern, every tool the child selects is selected by the parent."""
    p, c, tool = f"u/{parent}", f"u/{child}", f"u/{name}"
    if covers(p, c) and matches(c, tool):
        assert matches(p, tool)


@given(pattern=segment_glob, name=st.text(alphabet="ab", min_size=1, max_size=7))
def test_a_pattern_covers_itself_and_star_covers_all(pattern: str, name: str) -> None:
    assert covers(f"u/{pattern}", f"u/{pattern}")
    assert covers("u/*", f"u/{pattern}") and matches("u/*", f"u/{name}")


def test_covers_examples() -> None:
    assert covers("fs/*", "fs/read_*") and covers("fs/read*", "fs/read_text_file")
    assert not covers("fs/read*", "fs/*") and not covers("fs/*_file", "fs/*")
    assert not covers("fs/*", "git/*") and not covers("fs/a*b", "fs/a*")
    assert covers("*/*", "fs/read") and not covers("fs/*", "*/read")


# --------------------------------------------------------------------------- attenuation

UNIVERSE = [f"{u}/{t}" for u in ("fs", "time") for t in ("read", "read_file", "write", "write_file", "now")]
PATTERNS = ["fs/*", "fs/read*", "fs/write*", "fs/read_file", "fs/write_file", "fs/*_file", "time/*", "time/now", "*/read", "*/*", "git/*"]

entry = st.fixed_dictionaries(
    {},
    optional={"approval": st.sampled_from(["never", "always"]), "max_calls": st.integers(0, 20)},
)
tool_map = st.dictionaries(st.sampled_from(PATTERNS), entry, min_size=1, max_size=4)
link_spec = st.fixed_dictionaries(
    {
        "tools": tool_map,
        "max_calls": st.none() | st.integers(0, 50),
        "ttl": st.integers(20, 5000),
        "depth": st.integers(0, 3),
        "nbf_shift": st.integers(-5, 5),
    }
)


def _effective(chain: GrantChain, tool: str) -> tuple[bool, bool, frozenset[str]]:
    check = chain.check_call(tool, {})
    return chain.permits_tool(tool), check.approval_required, frozenset(b.key for b in chain.budgets(tool))


def _forge(parent_token: str, spec: dict[str, Any]) -> str:
    """A child link built straight from random claims and signed with the holder's real key —
    no help from ``delegate``: only the verifier stands between it and acceptance."""
    parent_compact = parent_token.split("~")[-1]
    _h, pp = decode(parent_compact)
    from grantkit import parent_hash

    claims = {
        "iss": "agent:planner", "sub": pp["sub"], "aud": pp["aud"], "jti": "child-link-0001",
        "iat": NOW, "nbf": pp["nbf"] + spec["nbf_shift"], "exp": NOW + spec["ttl"],
        "act": {"sub": "agent:coder", "act": pp["act"]},
        "delegation": {"max_depth": spec["depth"]},
        "parent_jti": pp["jti"], "parent_hash": parent_hash(parent_compact), "purpose": pp["purpose"],
        "authorization_details": [{"type": "mcp_tool_grant", "tools": spec["tools"],
                                   **({"max_calls": spec["max_calls"]} if spec["max_calls"] is not None else {})}],
    }
    if spec["depth"]:
        claims["cnf"] = {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": decode(parent_compact)[1]["cnf"]["jwk"]["x"]}}
    return f"{parent_token}~{sign_raw({'alg': 'EdDSA', 'typ': 'mcp-guard-grant+jwt'}, claims, WORLD.planner)}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(root=link_spec, child=link_spec)
def test_verified_chains_never_widen(root: dict[str, Any], child: dict[str, Any]) -> None:
    """Random root, random forged child: whatever the verifier accepts is no wider than its parent,
    link by link (tools, expiry, depth, link budget) and in effect (tools, approval, budgets)."""
    try:
        root_token = issue_grant(
            WORLD.idp, "corp-idp", "alice", "planner", root["tools"], agent_key=WORLD.planner.public_key(),
            purpose="p", ttl=root["ttl"], depth=max(root["depth"], 1), max_calls=root["max_calls"], now=NOW,
        )
    except GrantError:
        return
    parent = VERIFIER.verify(root_token, NOW + 10)
    token = _forge(root_token, child)
    try:
        chain = VERIFIER.verify(token, NOW + 10)
    except GrantError:
        return
    pl, cl = parent.links[0], chain.links[1]
    assert cl.exp <= pl.exp and cl.nbf >= pl.nbf and cl.max_depth < pl.max_depth
    assert pl.max_calls is None or (cl.max_calls is not None and cl.max_calls <= pl.max_calls)
    for tool in UNIVERSE:
        if cl.entries_for(tool):
            assert pl.entries_for(tool), f"link 1 alone grants {tool}"
        p_ok, p_appr, p_budgets = _effective(parent, tool)
        c_ok, c_appr, c_budgets = _effective(chain, tool)
        assert not c_ok or p_ok
        if c_ok:
            assert c_appr or not p_appr
            assert p_budgets <= c_budgets


@settings(max_examples=200, deadline=None)
@given(spec=link_spec)
def test_delegate_never_produces_a_wider_chain(spec: dict[str, Any]) -> None:
    """``delegate`` either refuses with a reason code or produces a chain the verifier accepts."""
    root_token = WORLD.root()
    try:
        token = delegate(root_token, WORLD.planner, "coder", spec["tools"],
                         agent_key=WORLD.coder.public_key() if spec["depth"] else None,
                         ttl=spec["ttl"], depth=spec["depth"], max_calls=spec["max_calls"], now=NOW + 10)
    except GrantError as exc:
        assert exc.code in {"widened_tools", "budget_raised", "approval_relaxed", "depth_not_decreasing", "malformed"}
        return
    chain = VERIFIER.verify(token, NOW + 10)
    parent = VERIFIER.verify(root_token, NOW + 10)
    for tool in UNIVERSE:
        assert not chain.permits_tool(tool) or parent.permits_tool(tool)


# --------------------------------------------------------------------------- tampering

TOKEN = WORLD.three()
TAMPER_VERIFIER = ChainVerifier({"corp-idp": WORLD.idp.public_key()}, AUD, cache_size=1)
VERIFIER.verify(TOKEN, NOW + 30)


@settings(max_examples=500, deadline=None)
@given(index=st.integers(0, len(TOKEN) - 1), replacement=st.characters(codec="latin-1") | st.sampled_from("AQgw-_~.="))
def test_any_tampered_byte_invalidates(index: int, replacement: str) -> None:
    if TOKEN[index] == replacement:
        return
    tampered = TOKEN[:index] + replacement + TOKEN[index + 1 :]
    try:
        TAMPER_VERIFIER.verify(tampered, NOW + 30)
    except GrantError:
        return
    raise AssertionError(f"tampering position {index} with {replacement!r} was accepted")


@settings(max_examples=100, deadline=None)
@given(index=st.integers(0, len(TOKEN) - 1))
def test_any_deleted_byte_invalidates(index: int) -> None:
    try:
        TAMPER_VERIFIER.verify(TOKEN[:index] + TOKEN[index + 1 :], NOW + 30)
    except GrantError:
        return
    raise AssertionError(f"deleting position {index} was accepted")
