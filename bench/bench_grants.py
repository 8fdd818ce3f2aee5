"""Grant-chain cost on the hot path.

Measures, for a 3-link chain (root -> planner -> coder -> tester, with an argument schema):
  * cached per-call cost: verifier.verify (cache hit, re-checks time) + chain.check_call + chain.budgets,
    against the same loop with no grant at all;
  * uncached verification (3 signatures, every invariant, schema lookup);
  * minting: issue_grant and delegate.

Run: .venv/bin/python bench/bench_grants.py [--rounds 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

from mcp_guard.grants import ChainVerifier, delegate, generate_keypair, issue_grant

NOW = time.time()
TOOL = "fs/read_text_file"
ARGS = {"path": "/srv/tickets/42.md"}
SCHEMA = {"type": "object", "properties": {"path": {"type": "string", "pattern": "^/srv/"}}, "required": ["path"]}


def build() -> tuple[ChainVerifier, str, Callable[[], ChainVerifier]]:
    idp, planner, coder, _tester = (generate_keypair()[0] for _ in range(4))
    root = issue_grant(idp, "corp-idp", "alice@example.com", "planner", {"fs/*": {"max_calls": 500}, "time/*": {}},
                       agent_key=planner.public_key(), depth=2, max_calls=1000, purpose="code-review",
                       tool_args={"fs/*": SCHEMA}, now=NOW)
    two = delegate(root, planner, "coder", ["fs/read_text_file", "fs/list_directory"], agent_key=coder.public_key(),
                   depth=1, max_calls=100, now=NOW)
    three = delegate(two, coder, "tester", ["fs/read_text_file"], max_calls=10, now=NOW)

    def fresh() -> ChainVerifier:
        return ChainVerifier({"corp-idp": idp.public_key()}, "urn:mcp-guard:local", cache_size=0)

    return ChainVerifier({"corp-idp": idp.public_key()}, "urn:mcp-guard:local"), three, fresh


def per_op_us(fn: Callable[[], Any], n: int, rounds: int) -> float:
    """Median over rounds of the mean time per call, in microseconds."""
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter_ns() - t0) / n / 1000)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args()
    verifier, token, fresh = build()
    now = NOW + 1

    def no_grant() -> None:
        return None

    def cached_call() -> None:
        chain = verifier.verify(token, now)
        check = chain.check_call(TOOL, ARGS)
        assert check.allowed
        chain.budgets(TOOL)

    uncached_verifier = fresh()

    def uncached() -> None:
        uncached_verifier.verify(token, now)

    idp, _ = generate_keypair()
    planner, _ = generate_keypair()
    root = issue_grant(idp, "i", "u", "a", ["fs/*"], agent_key=planner.public_key(), depth=1, now=NOW)

    results = {
        "chain_links": 3,
        "chain_bytes": len(token),
        "no_grant_us": per_op_us(no_grant, 200_000, opts.rounds),
        "cached_call_us": per_op_us(cached_call, 100_000, opts.rounds),
        "uncached_verify_us": per_op_us(uncached, 500, opts.rounds),
        "issue_us": per_op_us(lambda: issue_grant(idp, "i", "u", "a", ["fs/*"], now=NOW), 500, opts.rounds),
        "delegate_us": per_op_us(lambda: delegate(root, planner, "b", ["fs/x"], now=NOW), 500, opts.rounds),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    results["cached_overhead_us"] = results["cached_call_us"] - results["no_grant_us"]
    if opts.json:
        print(json.dumps(results, indent=2))
        return
    print(f"3-link chain, {results['chain_bytes']} bytes, Python {results['python']} ({results['machine']})")
    print(f"  per call, no grant                     {results['no_grant_us']:8.2f} us")
    print(f"  per call, cached chain (verify+check+budgets) {results['cached_call_us']:8.2f} us")
    print(f"  overhead of the grant per call         {results['cached_overhead_us']:8.2f} us  (budget: 30 us)")
    print(f"  uncached verification                  {results['uncached_verify_us']:8.1f} us")
    print(f"  issue_grant                            {results['issue_us']:8.1f} us")
    print(f"  delegate (parses+checks the chain)     {results['delegate_us']:8.1f} us")


if __name__ == "__main__":
    main()
