"""Every negative grant-chain vector (forged algorithms and keys, broken links, widened scopes,
expiry, ...): each chain is rejected whole, with its stable reason code."""

from __future__ import annotations

from typing import Any

import pytest
from grantkit import AUD, NOW, World, b64, decode, hs256, make_world, parent_hash, sign_raw

from mcp_guard.grants import ChainVerifier, GrantError, generate_keypair
from mcp_guard.grants.keys import public_jwk


def rejected(world: World, token: str, now: float = NOW + 30, verifier: ChainVerifier | None = None) -> GrantError:
    """Verification fails as a whole: no chain object, just the error (cached or not)."""
    v = verifier or world.verifier
    for _ in range(2):  # the second time comes from the cache and must fail the same way
        with pytest.raises(GrantError) as info:
            v.verify(token, now)
    return info.value


def test_valid_three_link_chain_verifies(world: World) -> None:
    chain = world.verifier.verify(world.three(), NOW + 30)
    assert chain.principal.user == "alice@example.com"
    assert chain.principal.agents == ("planner", "coder", "tester")
    assert chain.principal.purpose == "code-review" and chain.principal.verified
    assert chain.principal.grant_id == chain.link_ids[-1] and len(chain.link_ids) == 3


# --------------------------------------------------------------------------- algorithm and key confusion


def test_alg_none_is_refused(world: World) -> None:
    h, p = decode(world.root())
    token = sign_raw({**h, "alg": "none"}, p, None)
    assert rejected(world, token).code == "alg_not_allowed"


def test_alg_none_on_a_delegated_link_is_refused(world: World) -> None:
    chain = world.two().split("~")
    h, p = decode(chain[1])
    token = f"{chain[0]}~{sign_raw({**h, 'alg': 'none'}, p, None)}"
    err = rejected(world, token)
    assert (err.code, err.link_index) == ("alg_not_allowed", 1)


def test_hs256_keyed_with_the_issuer_public_key_is_refused(world: World) -> None:
    from cryptography.hazmat.primitives import serialization

    h, p = decode(world.root())
    pub = world.idp.public_key()
    for secret in (
        pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        public_jwk(pub)["x"].encode(),
    ):
        assert rejected(world, hs256({**h, "alg": "HS256"}, p, secret)).code == "alg_not_allowed"


@pytest.mark.parametrize("member", ["jwk", "jku", "x5u", "x5c"])
def test_header_supplied_keys_are_refused(world: World, member: str) -> None:
    attacker, _ = generate_keypair()
    h, p = decode(world.root())
    value: Any = {
        "jwk": public_jwk(attacker.public_key()),
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
        "x5c": ["MIIB"],
    }[member]
    token = sign_raw({**h, member: value}, p, attacker)
    assert rejected(world, token).code == "header_key_not_allowed"


def test_kid_cannot_choose_the_key(world: World) -> None:
    """A kid naming the attacker's key does not make the verifier use it."""
    from mcp_guard.grants import thumbprint

    attacker, _ = generate_keypair()
    h, p = decode(world.root())
    token = sign_raw({**h, "kid": thumbprint(attacker.public_key())}, p, attacker)
    assert rejected(world, token).code == "bad_signature"
    token = sign_raw(h, p, attacker)  # even with the right kid
    assert rejected(world, token).code == "bad_signature"


def test_holder_key_of_another_type_is_refused(world: World) -> None:
    """Key-type confusion: a cnf key that is not Ed25519 (here an RSA JWK) never becomes a verification key."""
    def to_rsa(p: dict[str, Any]) -> None:
        p["cnf"] = {"jwk": {"kty": "RSA", "n": b64(b"\x01" * 256), "e": "AQAB"}}

    token = world.resign_last(world.root(), world.idp, to_rsa)
    assert rejected(world, token).code == "bad_key"


def test_issuer_key_of_another_type_is_refused_at_configuration() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    with pytest.raises(GrantError) as info:
        ChainVerifier({"corp-idp": ec.generate_private_key(ec.SECP256R1()).public_key()}, AUD)  # type: ignore[dict-item]
    assert info.value.code == "bad_key"


def test_link_signed_by_the_wrong_key_is_refused(world: World) -> None:
    stranger, _ = generate_keypair()
    # a delegated link signed by someone who does not hold the parent's cnf key
    assert rejected(world, world.resign_last(world.two(), stranger, lambda p: None)).code == "bad_signature"
    # the root signed by a key other than the issuer's
    h, p = decode(world.root())
    assert rejected(world, sign_raw(h, p, stranger)).code == "bad_signature"


def test_untrusted_root_issuer_is_refused(world: World) -> None:
    def rename(p: dict[str, Any]) -> None:
        p["iss"] = "evil-idp"

    assert rejected(world, world.resign_last(world.root(), world.idp, rename)).code == "untrusted_issuer"
    other = make_world()  # a whole chain from an issuer this guard does not trust
    assert rejected(world, other.three()).code in {"bad_signature"}


# --------------------------------------------------------------------------- attenuation invariants


def _last_tools(p: dict[str, Any]) -> dict[str, Any]:
    tools: dict[str, Any] = p["authorization_details"][0]["tools"]
    return tools


def test_widened_tools_are_refused(world: World) -> None:
    def add_tool(p: dict[str, Any]) -> None:
        _last_tools(p)["git/commit"] = {"approval": "never"}

    err = rejected(world, world.resign_last(world.two(), world.planner, add_tool))
    assert (err.code, err.link_index) == ("widened_tools", 1)


def test_widened_glob_is_refused(world: World) -> None:
    def widen_glob(p: dict[str, Any]) -> None:
        _last_tools(p)["fs/*"] = {"approval": "always", "max_calls": 1}  # parent has fs/read* and fs/write_file only

    assert rejected(world, world.resign_last(world.two(), world.planner, widen_glob)).code == "widened_tools"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p["authorization_details"][0].update(max_calls=101),
        lambda p: p["authorization_details"][0].pop("max_calls"),
        lambda p: _last_tools(p)["fs/read_text_file"].update(max_calls=51),
        lambda p: _last_tools(p)["fs/read_text_file"].pop("max_calls"),
    ],
    ids=["link-budget-raised", "link-budget-dropped", "tool-budget-raised", "tool-budget-dropped"],
)
def test_raised_budget_is_refused(world: World, mutate: Any) -> None:
    assert rejected(world, world.resign_last(world.two(), world.planner, mutate)).code == "budget_raised"


def test_relaxed_approval_is_refused(world: World) -> None:
    def relax(p: dict[str, Any]) -> None:
        _last_tools(p)["fs/write_file"]["approval"] = "never"

    assert rejected(world, world.resign_last(world.two(), world.planner, relax)).code == "approval_relaxed"


def test_extended_expiry_is_refused(world: World) -> None:
    def extend(p: dict[str, Any]) -> None:
        p["exp"] = NOW + 3601

    assert rejected(world, world.resign_last(world.two(), world.planner, extend)).code == "expiry_extended"


def test_earlier_start_is_refused(world: World) -> None:
    def earlier(p: dict[str, Any]) -> None:
        p["nbf"] = NOW - 100

    assert rejected(world, world.resign_last(world.two(), world.planner, earlier)).code == "starts_earlier"


@pytest.mark.parametrize("depth", [2, 3])
def test_raised_depth_is_refused(world: World, depth: int) -> None:
    def raise_depth(p: dict[str, Any]) -> None:
        p["delegation"]["max_depth"] = depth

    assert rejected(world, world.resign_last(world.two(), world.planner, raise_depth)).code == "depth_not_decreasing"


def test_delegating_below_a_leaf_is_refused(world: World) -> None:
    """The third link has max_depth 0 and no cnf key: nobody can sign a fourth link."""
    three = world.three()
    h, p = decode(three.split("~")[-1])
    p4 = {**p, "iss": "agent:tester", "jti": "fourthlink0000", "parent_jti": p["jti"],
          "parent_hash": parent_hash(three.split("~")[-1]),
          "act": {"sub": "agent:intruder", "sub_profile": "ai_agent", "act": p["act"]}}
    token = f"{three}~{sign_raw(h, p4, world.tester)}"
    assert rejected(world, token).code == "depth_not_decreasing"


@pytest.mark.parametrize(
    ("claim", "value", "code"),
    [
        ("sub", "user:mallory@example.com", "user_changed"),
        ("purpose", "exfiltration", "purpose_changed"),
        ("aud", "urn:mcp-guard:other", "audience_mismatch"),
    ],
)
def test_changed_constants_are_refused(world: World, claim: str, value: str, code: str) -> None:
    def change(p: dict[str, Any]) -> None:
        p[claim] = value

    assert rejected(world, world.resign_last(world.two(), world.planner, change)).code == code


def test_dropping_the_purpose_is_refused(world: World) -> None:
    assert rejected(world, world.resign_last(world.two(), world.planner, lambda p: p.pop("purpose"))).code == "purpose_changed"


def test_root_for_another_audience_is_refused(world: World) -> None:
    assert rejected(world, world.root(audience="https://other-guard.example/mcp")).code == "audience_mismatch"


def test_wrong_parent_hash_is_refused(world: World) -> None:
    def rehash(p: dict[str, Any]) -> None:
        p["parent_hash"] = b64(b"\x00" * 32)

    assert rejected(world, world.resign_last(world.two(), world.planner, rehash)).code == "parent_hash_mismatch"


def test_link_spliced_onto_another_root_is_refused(world: World) -> None:
    """A valid second link moved under a different (equally valid) root of the same holder."""
    other_root = world.root()  # new jti, same planner key
    token = f"{other_root}~{world.two().split('~')[1]}"
    assert rejected(world, token).code == "parent_hash_mismatch"


def test_reordered_links_are_refused(world: World) -> None:
    a, b, c = world.three().split("~")
    for order in ((b, a, c), (a, c, b), (c, b, a), (b, c)):
        err = rejected(world, "~".join(order))
        assert err.code in {"malformed", "untrusted_issuer", "bad_signature", "parent_hash_mismatch"}


def test_dropped_links_are_refused(world: World) -> None:
    a, _b, c = world.three().split("~")
    assert rejected(world, f"{a}~{c}").code == "bad_signature"


def test_actor_chain_must_continue(world: World) -> None:
    def rewrite_history(p: dict[str, Any]) -> None:
        p["act"]["act"] = {"sub": "agent:someone-else", "sub_profile": "ai_agent"}

    assert rejected(world, world.resign_last(world.two(), world.planner, rewrite_history)).code == "actor_mismatch"


def test_issuer_must_be_the_previous_holder(world: World) -> None:
    def claim_other_issuer(p: dict[str, Any]) -> None:
        p["iss"] = "agent:ceo"

    assert rejected(world, world.resign_last(world.two(), world.planner, claim_other_issuer)).code == "issuer_mismatch"


def test_unknown_restriction_is_not_ignored(world: World) -> None:
    def add_unknown(p: dict[str, Any]) -> None:
        _last_tools(p)["fs/read_text_file"]["only_on_tuesdays"] = True

    assert rejected(world, world.resign_last(world.two(), world.planner, add_unknown)).code == "malformed"

    def other_type(p: dict[str, Any]) -> None:
        p["authorization_details"][0]["type"] = "payment_initiation"

    assert rejected(world, world.resign_last(world.two(), world.planner, other_type)).code == "malformed"


# --------------------------------------------------------------------------- caps


def test_oversize_chain_is_refused(world: World) -> None:
    def pad(p: dict[str, Any]) -> None:
        p["authorization_details"][0]["tools"].update({f"fs/tool_{i:05d}": {} for i in range(600)})

    token = world.resign_last(world.root(), world.idp, pad)
    assert len(token) > 16 * 1024
    assert rejected(world, token).code == "too_large"
    assert rejected(world, "x" * 1_000_000).code == "too_large"


def test_too_many_links_are_refused(world: World) -> None:
    a, b, c = world.three().split("~")
    assert rejected(world, "~".join([a, b, c] * 3)).code == "too_many_links"
    small = ChainVerifier({"corp-idp": world.idp.public_key()}, AUD, max_links=2)
    assert rejected(world, world.three(), verifier=small).code == "too_many_links"


@pytest.mark.parametrize("token", ["", "~", "a.b.c", "not a token", "é.é.é", "a.b", "....", "x~~y"])
def test_garbage_is_malformed(world: World, token: str) -> None:
    assert rejected(world, token).code in {"malformed", "bad_signature"}


def test_duplicate_json_members_are_refused(world: World) -> None:
    _h, p = decode(world.root())
    raw = '{"alg":"EdDSA","typ":"mcp-guard-grant+jwt","alg":"EdDSA"}'
    signing_input = f"{b64(raw.encode())}.{b64(__import__('json').dumps(p).encode())}"
    token = f"{signing_input}.{b64(world.idp.sign(signing_input.encode()))}"
    assert rejected(world, token).code == "malformed"


# --------------------------------------------------------------------------- time and revocation


def test_expired_chain_is_refused(world: World) -> None:
    token = world.three()
    world.verifier.verify(token, NOW + 30)  # cached as valid...
    err = rejected(world, token, now=NOW + 320)  # ...but the tester link (ttl 300 from NOW+20) has expired
    assert (err.code, err.link_index) == ("expired", 2)
    assert rejected(world, world.root(), now=NOW + 3600).code == "expired"


def test_not_yet_valid_chain_is_refused(world: World) -> None:
    token = world.root(now=NOW + 1000)
    assert rejected(world, token, now=NOW).code == "not_yet_valid"
    world.verifier.verify(token, NOW + 1000 - 10)  # within the 30 s clock-skew leeway


def test_revoked_ancestor_denies_descendants(world: World) -> None:
    chain = world.verifier.verify(world.three(), NOW + 30)
    root_id, middle_id, leaf_id = chain.link_ids
    assert chain.check_revoked(set()) is None
    for revoked, index in (({root_id}, 0), ({middle_id}, 1), ({leaf_id}, 2)):
        err = chain.check_revoked(revoked)
        assert err is not None and (err.code, err.link_index) == ("revoked", index)
    sibling = world.verifier.verify(world.two(), NOW + 30)  # another branch of the same root
    assert sibling.check_revoked({root_id}) is None  # different root jti: unaffected
