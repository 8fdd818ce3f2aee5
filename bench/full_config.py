"""Write the "everything on" guard configuration the stdio bench runs (target ``guard_full``).

Everything a production guard would have on for an allowed call:

- the 200-rule bench policy (``policies/bench.yaml``);
- a 3-link signed grant chain (bench IdP -> planner -> coder -> tester), verified at start and
  re-checked on every request (expiry, revocation, every link's tool entries);
- the hash-chained audit log, each record written (flushed to the file) before the call is forwarded;
- OTLP/HTTP traces **and** metrics exported to ``--endpoint`` (``otlp_sink.py`` on loopback);
- the default state store (sqlite), which counts the calls.

  python full_config.py DIR --endpoint http://127.0.0.1:PORT [--python PY] [--parts grant,audit,traces,metrics]

writes ``DIR/guard.yaml`` (plus the IdP's public key and the chain) and prints its path.  ``--parts``
keeps only the named parts on top of the policy (``--parts ""``: the policy alone), which is how
``count_instructions.py --per-part`` prices each part.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from mcp_guard.grants import delegate, generate_keypair, issue_grant, public_jwk

HERE = Path(__file__).resolve().parent
DAY = 24 * 3600
PARTS = ("grant", "audit", "traces", "metrics")


def three_link_chain(directory: Path) -> str:
    """A 3-link chain for ``upstream/*`` ending with the tester agent; the IdP's key goes to ``idp.jwk``."""
    idp, idp_pub = generate_keypair()
    planner, planner_pub = generate_keypair()
    coder, coder_pub = generate_keypair()
    (directory / "idp.jwk").write_text(json.dumps(public_jwk(idp_pub)))
    root = issue_grant(idp, "bench-idp", "alice@example.com", "planner", ["upstream/*"], agent_key=planner_pub,
                       purpose="benchmark", depth=2, ttl=7 * DAY)
    middle = delegate(root, planner, "coder", ["upstream/*"], agent_key=coder_pub, depth=1, ttl=7 * DAY)
    return delegate(middle, coder, "tester", ["upstream/echo", "upstream/dummy_*"], ttl=7 * DAY)


def write(directory: Path, endpoint: str, python: str, parts: tuple[str, ...] = PARTS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "version": 1,
        "upstreams": {"upstream": {"command": python, "args": [str(HERE / "echo_server.py")],
                                   "env_passthrough": ["ECHO_TOOLS"]}},
        "policies": str(HERE / "policies"),
    }
    if "grant" in parts:
        (directory / "chain.tok").write_text(three_link_chain(directory))
        doc["identity"] = {"grant": "@" + str(directory / "chain.tok")}
        doc["trust"] = {"issuers": {"bench-idp": str(directory / "idp.jwk")}}
    if "audit" in parts:
        doc["audit"] = {"path": str(directory / "audit.jsonl")}
    if "traces" in parts or "metrics" in parts:
        doc["telemetry"] = {"endpoint": endpoint, "service_name": "mcp-guard-bench"}
        for part in ("traces", "metrics"):
            doc["telemetry"][f"{part}_exporter"] = "otlp" if part in parts else "none"
    path = directory / "guard.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory", type=Path)
    ap.add_argument("--endpoint", required=True, help="OTLP/HTTP base URL (the sink)")
    ap.add_argument("--python", default=sys.executable, help="python that runs echo_server.py")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)} (default: all)")
    args = ap.parse_args()
    parts = tuple(p for p in args.parts.split(",") if p)
    if unknown := set(parts) - set(PARTS):
        sys.exit(f"full_config.py: unknown parts {sorted(unknown)} (known: {', '.join(PARTS)})")
    print(write(args.directory.resolve(), args.endpoint, args.python, parts))


if __name__ == "__main__":
    main()
