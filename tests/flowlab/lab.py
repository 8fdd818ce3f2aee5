"""The flow lab's machinery: the four set-ups, a scripted agent driven by the ``mcp`` SDK client,
and one run of a scenario under a set-up, through either face of the guard.

Set-ups (``SETUPS``):

- ``nothing``: an allow-all policy, no grant;
- ``grant``: the task-scoped grant of the scenario alone (tools and argument schemas), allow-all policy;
- ``flow``: the shipped example policy ``policies/examples/lethal-trifecta.yaml`` (refusals only)
  beside the allow-all policy, no grant;
- ``grant+flow``: both, the grant also carrying the task's endorsements and label ceiling.

Faces: ``Served`` is one real ``mcp-guard serve`` process per set-up in front of every lab
upstream, each scenario (and each helper agent) an HTTP session of its own in a world reset
between scenarios; without it, a scenario gets a real ``mcp-guard run`` process of its own.
``serve`` needs every caller to present a token: under the set-ups without a grant the agent's
token is a grant of every tool (``*/*``), which narrows nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import mcp_types as t
from fixtures import ROOT, free_port, guarded_session, tools_env, write_guard_config
from fixtures.serving import connect, serving
from mcp.shared.exceptions import MCPError

from flowlab.world import World, site
from mcp_guard.grants import delegate, generate_keypair, issue_grant, public_jwk

SETUPS = ("nothing", "grant", "flow", "grant+flow")
Setup = Literal["nothing", "grant", "flow", "grant+flow"]
FLOW_POLICY = ROOT / "policies" / "examples" / "lethal-trifecta.yaml"
ALLOW_ALL = [{"id": "allow-all", "rules": [{"effect": "allow", "tools": ["*/*"], "resources": ["*/*"], "prompts": ["*/*"]}]}]
ISSUER = "lab-idp"
UPSTREAMS = ("web", "fs", "memory", "mail", "bank")
EVERY_TOOL: Mapping[str, Mapping[str, Any]] = {"*/*": {}}


class Refused(Exception):
    """The guard (or the upstream) refused a call: the scripted agent gives up there."""


@dataclass(frozen=True)
class Grant:
    """The task-scoped grant a principal would give the agent for one scenario's task.

    ``tools`` maps ``UPSTREAM/TOOL`` patterns to grant entries (``arguments`` schemas...);
    ``endorse``, ``endorse_sources`` and ``label_ceiling`` are the flow parts, used only in the
    ``grant+flow`` set-up.  ``helper`` is the narrower grant the agent delegates to a sub-agent.
    """

    tools: Mapping[str, Mapping[str, Any]]
    endorse: tuple[str, ...] = ()
    endorse_sources: tuple[Mapping[str, Any], ...] = ()
    label_ceiling: tuple[str, ...] | None = None
    helper: Grant | None = None


class Agent:
    """A scripted agent: each call goes through the guard; a refusal raises ``Refused``."""

    def __init__(self, client: Any, world: World, lab: Lab) -> None:
        self.client, self.world, self.lab = client, world, lab
        self.log: list[str] = []

    async def call(self, upstream: str, tool: str, args: Mapping[str, Any]) -> Any:
        try:
            result: t.CallToolResult = await self.client.call_tool(f"{upstream}_{tool}", dict(args))
        except MCPError as exc:
            self.log.append(f"{upstream}/{tool}: error {exc}")
            raise Refused(str(exc)) from None
        text = " ".join(b.text for b in result.content if isinstance(b, t.TextContent))
        if result.is_error:
            self.log.append(f"{upstream}/{tool}: refused: {text}")
            raise Refused(text)
        self.log.append(f"{upstream}/{tool}: ok")
        return result.structured_content if result.structured_content is not None else text

    @contextlib.asynccontextmanager
    async def helper(self) -> AsyncIterator[Agent]:
        """A sub-agent this agent delegates to: a new guard session (under the helper grant
        delegated from this agent's grant, where the set-up has grants)."""
        async with self.lab.session(self.world, helper=True) as agent:
            yield agent


@dataclass
class Lab:
    """One scenario under one set-up: writes the guard.yaml and starts guarded sessions."""

    setup: Setup
    upstreams: tuple[str, ...]
    grant: Grant
    tmp: Path
    served: Served | None = None
    agents: list[Agent] = field(default_factory=list)
    _chain: str | None = None

    def _keys(self) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self._idp: Ed25519PrivateKey
        self._agent_key, self._agent_pub = generate_keypair()
        _, self._helper_pub = generate_keypair()
        if self.served is not None:  # the key the serve process trusts
            self._idp = self.served.idp
            return
        self._idp, idp_pub = generate_keypair()
        (self.tmp / "idp.jwk").write_text(json.dumps(public_jwk(idp_pub)))

    def _tools(self, g: Grant, world: World) -> Any:
        """The tools a chain link grants: the task's, or every tool where the set-up has no grant."""
        return self._here(g.tools, world) if self.setup in ("grant", "grant+flow") else EVERY_TOOL

    def _flow_claims(self, g: Grant) -> dict[str, Any]:
        if self.setup != "grant+flow":
            return {}
        out: dict[str, Any] = {}
        if g.endorse:
            out["endorse"] = list(g.endorse)
        if g.endorse_sources:
            out["endorse_sources"] = [dict(s) for s in g.endorse_sources]
        if g.label_ceiling is not None:
            out["label_ceiling"] = list(g.label_ceiling)
        return out

    def _here(self, value: Any, world: World) -> Any:
        """``value`` with the story's ``/srv/`` paths made this world's."""
        return json.loads(json.dumps(value).replace('"/srv/', f'"{world.srv}/'))

    def chain(self, world: World, *, helper: bool) -> str:
        """The grant chain the agent (or its helper) presents."""
        if self._chain is None:
            self._keys()
            self._chain = issue_grant(
                self._idp, ISSUER, "alice@corp.example", "assistant", self._tools(self.grant, world),
                agent_key=self._agent_pub, purpose="lab", depth=1, ttl=600, **self._flow(self.grant, world),
            )
        if not helper:
            return self._chain
        sub = self.grant.helper or self.grant
        return delegate(self._chain, self._agent_key, "helper", self._tools(sub, world), agent_key=self._helper_pub,
                        ttl=600, **self._flow(sub, world))

    def _flow(self, g: Grant, world: World) -> dict[str, Any]:
        """The flow keyword arguments of issue_grant / delegate (grant+flow only)."""
        return dict(self._here(self._flow_claims(g), world))

    def config(self, world: World) -> Path:
        """The ``run`` guard's configuration: this scenario's upstreams under this set-up."""
        if self.setup not in ("grant", "grant+flow"):
            return guard_config(self.setup, self.tmp, world, self.upstreams, trust=False)
        return guard_config(self.setup, self.tmp, world, self.upstreams,
                            identity={"user": "nobody", "grant": "${MCP_GUARD_GRANT:-}"})

    @contextlib.asynccontextmanager
    async def session(self, world: World, *, helper: bool = False) -> AsyncIterator[Agent]:
        async with self._client(world, helper) as client:
            agent = Agent(client, world, self)
            self.agents.append(agent)
            yield agent

    @contextlib.asynccontextmanager
    async def _client(self, world: World, helper: bool) -> AsyncIterator[Any]:
        if self.served is not None:  # an HTTP session of its own, the chain as its bearer token
            async with connect(self.served.url, self.chain(world, helper=helper)) as client:
                yield client
            return
        env: dict[str, str] = {}
        if self.setup in ("grant", "grant+flow"):
            env["MCP_GUARD_GRANT"] = self.chain(world, helper=helper)
        config = self.config(world)
        async with guarded_session(config, env=tools_env(env), stderr=self.tmp / "guard.stderr") as client:
            yield client


def guard_config(setup: Setup, tmp: Path, world: World, upstreams: tuple[str, ...], *, trust: bool = True,
                 **extra: Any) -> Path:
    """``tmp/guard/guard.yaml`` for ``setup``: the upstreams, allow-all, the flow policy where the
    set-up has it, sqlite state and an audit log in ``tmp``, ``lab-idp`` trusted (``trust``)."""
    extra |= {"audit": {"path": str(tmp / "audit.jsonl")}, "state": {"url": f"sqlite:///{tmp / 'state.db'}"}}
    if trust:
        extra["trust"] = {"issuers": {ISSUER: str(tmp / "idp.jwk")}}
    config = write_guard_config(tmp / "guard", {u: world.upstream(u) for u in upstreams}, ALLOW_ALL, **extra)
    if setup in ("flow", "grant+flow"):  # the shipped policy beside allow-all, its /srv paths made this world's
        text = FLOW_POLICY.read_text(encoding="utf-8").replace("/srv/", f"{world.srv}/")
        (config.parent / "policies" / "lethal-trifecta.yaml").write_text(text, encoding="utf-8")
    return config


class Served:
    """One ``mcp-guard serve`` process for one set-up, in front of every lab upstream in one world,
    with the loopback site beside it; ``world()`` resets that world for the next scenario."""

    def __init__(self, setup: Setup, tmp: Path) -> None:
        self.setup, self.tmp = setup, tmp
        self._ready = False
        self.idp, idp_pub = generate_keypair()
        self._stack = contextlib.ExitStack()
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "idp.jwk").write_text(json.dumps(public_jwk(idp_pub)))
        base, seen = self._stack.enter_context(site())
        self._world = World(tmp / "world", base, seen)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/mcp"
        try:
            self._stack.enter_context(serving(guard_config(setup, tmp, self._world, UPSTREAMS), port))
        except BaseException:
            self._stack.close()
            raise

    def world(self) -> World:
        self._world.reset()
        return self._world

    async def ready(self) -> None:
        """Wait until every upstream has started (``serve`` listens while they still start)."""
        if self._ready:
            return
        chain = issue_grant(self.idp, ISSUER, "lab", "probe", dict(EVERY_TOOL), ttl=600)
        for _ in range(120):
            async with connect(self.url, chain) as client:
                names = {t.name.split("_", 1)[0] for t in (await client.list_tools()).tools}
            if names >= set(UPSTREAMS):
                self._ready = True
                return
            await asyncio.sleep(0.5)
        raise TimeoutError(f"the {self.setup} serve's upstreams did not all start: {sorted(names)}")

    def close(self) -> None:
        self._stack.close()


class Serves:
    """One serve per set-up, started when a scenario first asks for it, kept until ``close``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.running: dict[str, Served] = {}

    def get(self, setup: Setup) -> Served:
        if setup not in self.running:
            self.running[setup] = Served(setup, self.tmp / setup.replace("+", "-"))
        return self.running[setup]

    def close(self) -> None:
        while self.running:
            self.running.popitem()[1].close()


Steps = Callable[[Agent, World], Awaitable[None]]


@dataclass(frozen=True)
class Outcome:
    """What one run showed: for a benign task whether it was completed, for an attack whether it
    reached its sink.  ``log`` is each call the agents made and how the guard answered."""

    succeeded: bool
    log: tuple[str, ...]


async def run(setup: Setup, upstreams: tuple[str, ...], grant: Grant, steps: Steps,
              succeeded: Callable[[World], bool], tmp: Path, served: Served | None = None) -> Outcome:
    """Run ``steps`` once under ``setup`` in a fresh world, through ``served`` (its set-up's serve)
    or else a ``run`` guard of its own; the agent stops at its first refusal."""
    tmp.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - before any session starts
    with contextlib.ExitStack() as stack:
        if served is None:
            world = World(tmp / "world", *stack.enter_context(site()))
        else:
            assert served.setup == setup, (served.setup, setup)
            await served.ready()
            world = served.world()
        lab = Lab(setup, upstreams, grant, tmp, served)
        async with lab.session(world) as agent:
            try:
                await steps(agent, world)
            except* Refused:  # also a refusal inside a helper's session (raised through its task group)
                pass
        return Outcome(succeeded(world), tuple(line for a in lab.agents for line in a.log))

