"""Policy engine benchmark: decision time vs. policy-set size, and ``visible`` over a large catalogue.

Not a timed test: run it by hand on a quiet machine and copy the table into docs/performance.md.

    .venv/bin/python bench/bench_policy.py [--calls 20000] [--json out.json]

Sets of 10, 1,000 and 10,000 rules over 100 upstreams (50 tools each, 5,000 tools): literal and
globbed tools, argument conditions (under, in, regex, max), principal conditions, subjects, a few
cross-upstream deny rules.  A second series grows only rules that cannot apply to the measured
calls (other upstreams), to show the index keeps decisions flat.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

from mcp_guard.identity import Principal
from mcp_guard.policy import Condition, Effect, Policy, PolicySet, Rule, Subjects

UPSTREAMS = [f"u{i:03d}" for i in range(100)]
TOOLS_PER_UPSTREAM = 50
WHO = Principal(user="alice@example.com", agents=("planner", "coder"), purpose="review")


def tool_name(u: int, t: int) -> str:
    verb = ("read", "list", "write", "delete", "search")[t % 5]
    return f"{UPSTREAMS[u]}/{verb}_{t:02d}"


def make_rule(rng: random.Random, upstreams: range) -> Rule:
    u = rng.choice(upstreams)
    t = rng.randrange(TOOLS_PER_UPSTREAM)
    roll = rng.random()
    if roll < 0.7:
        tools: tuple[str, ...] = (tool_name(u, t),)
    elif roll < 0.95:
        tools = (f"{UPSTREAMS[u]}/{('read', 'list', 'search')[t % 3]}_*",)
    else:
        tools = (f"{UPSTREAMS[u]}/*",)
    effect = rng.choices([Effect.ALLOW, Effect.APPROVE, Effect.DENY], weights=[80, 10, 10])[0]
    when: list[Condition] = []
    kind = rng.randrange(5)
    if kind == 0:
        when.append(Condition("args.path", (("under", f"/srv/{UPSTREAMS[u]}"),)))
    elif kind == 1:
        when.append(Condition("args.mode", (("in", ("read", "stat", "list")),)))
    elif kind == 2:
        when.append(Condition("args.name", (("regex", "[a-z0-9_-]{1,40}"),)))
        when.append(Condition("args.limit", (("max", 100),)))
    elif kind == 3:
        when.append(Condition("chain.depth", (("max", 3),)))
    return Rule(effect, tools, tuple(when))


def make_set(n_rules: int, seed: int = 7, upstreams: range = range(100)) -> PolicySet:
    rng = random.Random(seed)
    policies = []
    per_policy = 10
    for p in range((n_rules + per_policy - 1) // per_policy):
        count = min(per_policy, n_rules - p * per_policy)
        subjects = rng.choice([Subjects(), Subjects(users=("*@example.com",)), Subjects(agents=("coder", "coder-*")),
                               Subjects(purposes=("review", "triage")), Subjects(users=("bob@corp.test",))])
        rules = tuple(make_rule(rng, upstreams) for _ in range(count))
        if p == 0:  # a few cross-upstream rules every set has
            rules = (Rule(Effect.DENY, ("*/delete_*",), (Condition("args.path", (("glob", "*/.git/*"),)),)), *rules)
        policies.append(Policy(f"policy-{p:05d}", rules, None, subjects))
    return PolicySet(policies)


def make_calls(rng: random.Random, n: int, upstreams: range = range(100)) -> list[tuple[str, dict[str, Any]]]:
    calls = []
    for _ in range(n):
        u = rng.choice(upstreams)
        args = {"path": f"/srv/{UPSTREAMS[u]}/a/{rng.randrange(100)}.txt", "mode": rng.choice(["read", "write"]),
                "name": rng.choice(["report_1", "Bad Name!"]), "limit": rng.randrange(200)}
        calls.append((tool_name(u, rng.randrange(TOOLS_PER_UPSTREAM)), args))
    return calls


def time_decisions(ps: PolicySet, calls: list[tuple[str, dict[str, Any]]]) -> dict[str, float]:
    for tool, args in calls:  # warm the per-tool candidate cache, as a running guard would be
        ps.decide(WHO, tool, args)
    samples = []
    clock = time.perf_counter_ns
    for tool, args in calls:
        t0 = clock()
        ps.decide(WHO, tool, args)
        samples.append(clock() - t0)
    samples.sort()
    return {
        "p50_us": samples[len(samples) // 2] / 1000,
        "p99_us": samples[int(len(samples) * 0.99)] / 1000,
        "mean_us": statistics.fmean(samples) / 1000,
    }


def time_cold_decision(n_rules: int, calls: list[tuple[str, dict[str, Any]]]) -> float:
    """First decision per tool (candidate list built on the spot), µs, median over calls."""
    ps = make_set(n_rules)
    samples = []
    seen: set[str] = set()
    for tool, args in calls:
        if tool in seen:
            continue
        seen.add(tool)
        t0 = time.perf_counter_ns()
        ps.decide(WHO, tool, args)
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples) / 1000


def time_visible(ps: PolicySet, principal: Principal) -> float:
    tools = [tool_name(u, t) for u in range(len(UPSTREAMS)) for t in range(TOOLS_PER_UPSTREAM)]
    t0 = time.perf_counter()
    shown = [t for t in tools if ps.visible(principal, t)]
    elapsed = (time.perf_counter() - t0) * 1000
    assert len(tools) == 5000 and shown is not None
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--json", help="also write the results here")
    opts = ap.parse_args()
    rng = random.Random(1)
    calls = make_calls(rng, opts.calls)
    results: dict[str, Any] = {"decide": {}, "flat": {}, "visible": {}}

    print(f"{'rules':>7} {'build ms':>9} {'p50 µs':>8} {'p99 µs':>8} {'mean µs':>8} {'cold µs':>8}")
    for n in (10, 1_000, 10_000):
        t0 = time.perf_counter()
        ps = make_set(n)
        build = (time.perf_counter() - t0) * 1000
        row = time_decisions(ps, calls)
        row["build_ms"] = build
        row["cold_us"] = time_cold_decision(n, calls[:2000])
        results["decide"][n] = row
        print(f"{n:>7} {build:>9.1f} {row['p50_us']:>8.2f} {row['p99_us']:>8.2f} {row['mean_us']:>8.2f} {row['cold_us']:>8.1f}")

    print("\nrules that cannot apply (calls on upstreams 0-9, extra rules on 10-99 only):")
    near = make_calls(random.Random(2), opts.calls, range(10))
    for extra in (0, 1_000, 10_000, 50_000):
        base = make_set(500, seed=3, upstreams=range(10))
        noise = make_set(extra, seed=4, upstreams=range(10, 100)) if extra else PolicySet([])
        ps = PolicySet([*base.policies, *(Policy("z-" + p.id, p.rules, None, p.subjects) for p in noise.policies)])
        row = time_decisions(ps, near)
        results["flat"][extra] = row
        print(f"  +{extra:>6} inapplicable rules: p50 {row['p50_us']:.2f} µs, p99 {row['p99_us']:.2f} µs")

    print("\nvisible() over 5,000 tools:")
    for n in (10, 1_000, 10_000):
        ps = make_set(n)
        cold = time_visible(ps, WHO)  # also builds the per-tool candidate lists, once per policy set
        warm = statistics.median(time_visible(ps, WHO) for _ in range(7))
        others = [Principal(user=f"user{i}@corp.test", agents=("coder",), purpose="triage") for i in range(7)]
        other = statistics.median(time_visible(ps, who) for who in others)
        fresh = make_set(n)
        t0 = time.perf_counter()
        fresh.warm(tool_name(u, t) for u in range(len(UPSTREAMS)) for t in range(TOOLS_PER_UPSTREAM))
        warm_ms = (time.perf_counter() - t0) * 1000
        after_warm = time_visible(fresh, WHO)
        results["visible"][n] = {"first_ms": cold, "same_principal_ms": warm, "new_principal_ms": other,
                                 "warm_ms": warm_ms, "first_after_warm_ms": after_warm}
        print(f"  {n:>6} rules: first listing after load {cold:.2f} ms, same principal again {warm:.2f} ms, "
              f"a new principal {other:.2f} ms; warm() {warm_ms:.0f} ms, then first listing {after_warm:.2f} ms")

    if opts.json:
        with open(opts.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
