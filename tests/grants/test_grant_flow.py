"""Flow claims on grant links: starting labels, label ceilings and endorsements, attenuated at
verification however the chain was made (the library refuses, and a re-signed widening is rejected)."""

from __future__ import annotations

from typing import Any

import pytest
from grantkit import NOW, World

from mcp_guard.grants import GrantError, delegate
from mcp_guard.grants.flow import FlowClaims


def test_flow_claims_travel_and_inherit(world: World) -> None:
    root = world.root(labels=["private"], label_ceiling=["private", "untrusted"], endorse=["jane@example.com"])
    child = delegate(root, world.planner, "coder", ["fs/read_text_file"], agent_key=world.coder.public_key(), now=NOW + 10,
                     label_ceiling=["private"])
    chain = world.verifier.verify(child, NOW + 20)
    assert chain.flow.labels == {"private"}
    assert chain.flow.ceiling == {"private"}
    assert chain.flow.endorse == {"jane@example.com"}  # inherited


def _kw(claims: FlowClaims) -> dict[str, Any]:
    return claims.to_json()


@pytest.mark.parametrize(("root", "child", "field"), [
    (FlowClaims(label_ceiling=("untrusted",)), FlowClaims(label_ceiling=("untrusted", "private")), "label_ceiling"),
    (FlowClaims(labels=("private",)), FlowClaims(label_ceiling=("untrusted",)), "label_ceiling"),
    (FlowClaims(endorse=("a@example.com",)), FlowClaims(endorse=("a@example.com", "mallory@evil.example")), "endorse"),
    (FlowClaims(), FlowClaims(endorse=("anything",)), "endorse"),
    (FlowClaims(endorse_sources=({"tools": ["fs/read_text_file"]},)), FlowClaims(endorse_sources=({"tools": ["web/*"]},)), "endorse_sources"),
])
def test_delegate_refuses_to_widen_flow_claims(world: World, root: FlowClaims, child: FlowClaims, field: str) -> None:
    token = world.root(**_kw(root))
    with pytest.raises(GrantError) as err:
        delegate(token, world.planner, "coder", ["fs/read_text_file"], now=NOW + 10, **_kw(child))
    assert str(err.value).startswith(f"{field}:")


def test_a_resigned_widening_is_rejected_at_verification(world: World) -> None:
    """The holder signs a child that lifts its ceiling by hand: the guard refuses the whole chain."""
    root = world.root(label_ceiling=["untrusted", "private"])
    token = delegate(root, world.planner, "coder", ["fs/read_text_file"], now=NOW + 10, label_ceiling=["untrusted"])
    assert world.verifier.verify(token, NOW + 20).flow.ceiling == {"untrusted"}

    def lift(p: dict[str, Any]) -> None:
        p["authorization_details"][0]["label_ceiling"] = ["untrusted", "private", "secret"]

    forged = world.resign_last(token, world.planner, lift)
    with pytest.raises(GrantError, match="label_ceiling"):
        world.verifier.verify(forged, NOW + 20)


def test_a_child_cannot_drop_its_parents_labels(world: World) -> None:
    """Laundering: a tainted agent delegating to a clean sub-agent passes its labels on."""
    root = world.root(labels=["untrusted"])
    token = delegate(root, world.planner, "coder", ["fs/read_text_file"], now=NOW + 10, labels=["untrusted"])

    def drop(p: dict[str, Any]) -> None:
        p["authorization_details"][0]["labels"] = []

    chain = world.verifier.verify(world.resign_last(token, world.planner, drop), NOW + 20)
    assert chain.flow.labels == {"untrusted"}  # starting labels are the union down the chain


def test_malformed_flow_claims_are_refused(world: World) -> None:
    def bad(p: dict[str, Any]) -> None:
        p["authorization_details"][0]["labels"] = ["Not A Label"]

    with pytest.raises(GrantError, match="labels must be a list of labels"):
        world.verifier.verify(world.resign_last(world.two(), world.planner, bad), NOW + 20)
