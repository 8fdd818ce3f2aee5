"""Write the "everything on" guard configuration the stdio bench runs (target ``guard_full``).

Everything a production guard would have on for an allowed call:

- the 200-rule bench policy (``policies/bench.yaml``);
- a 3-link signed grant chain (bench IdP -> planner -> coder -> tester), verified at start and
  re-checked on every request (expiry, revocation, every link's tool entries);
- the hash-chained audit log, each record written (flushed to the file) before the call is forwarded;
- OTLP/HTTP traces **and** metrics exported to ``--endpoint`` (``otlp_sink.py`` on loopback);
- the default state store (sqlite), which counts the calls.

  python full_config.py DIR --endpoint http://127.0.0.1:PORT [--python PY]

writes ``DIR/guard.yaml`` (plus the IdP's public key and the chain) and prints its path.
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


def write(directory: Path, endpoint: str, python: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "chain.tok").write_text(three_link_chain(directory))
    doc: dict[str, Any] = {
        "version": 1,
        "upstreams": {"upstream": {"command": python, "args": [str(HERE / "echo_server.py")],
                                   "env_passthrough": ["ECHO_TOOLS"]}},
        "policies": str(HERE / "policies"),
        "identity": {"grant": "@" + str(directory / "chain.tok")},
        "trust": {"issuers": {"bench-idp": str(directory / "idp.jwk")}},
        "audit": {"path": str(directory / "audit.jsonl")},
        "telemetry": {"traces_exporter": "otlp", "metrics_exporter": "otlp", "endpoint": endpoint,
                      "service_name": "mcp-guard-bench"},
    }
    path = directory / "guard.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory", type=Path)
    ap.add_argument("--endpoint", required=True, help="OTLP/HTTP base URL (the sink)")
    ap.add_argument("--python", default=sys.executable, help="python that runs echo_server.py")
    args = ap.parse_args()
    print(write(args.directory.resolve(), args.endpoint, args.python))


if __name__ == "__main__":
    main()
