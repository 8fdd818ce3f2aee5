#!/usr/bin/env bash
# Proxy-overhead benchmark: drive.py against each target, interleaved
# (A B C ... A B C ...) for ROUNDS rounds, for each tools/list size, then a
# table of medians and target/direct ratios.
#
# Env knobs (all optional):
#   PY          python with mcp==2.3.0 + fastmcp + anyio   (default: this repo's .venv/bin/python)
#   ROUNDS      rounds per size                             (default: 3)
#   TOOLS       dummy-tool counts to test                   (default: "20 2000")
#   TARGETS     targets, in run order                       (default: "direct passthrough fastmcp guard")
#               known: direct passthrough passthrough_parse fastmcp fastmcp_mw
#                      fastmcp_reuse agentguard guard guard_full guard_base guard_full_base
#                      guard_full: everything on (bench/full_config.py: 200-rule policy,
#                        3-link grant chain, audit log, OTLP traces + metrics to
#                        bench/otlp_sink.py, which this script starts on loopback)
#                      guard_base, guard_full_base: the same two, run from the source
#                        tree in $GUARD_BASE (e.g. a worktree of the previous release),
#                        for before/after in the same interleaved run
#                      direct_nootel (SDK's default OTel middleware removed)
#                      direct_otel (server: OTel SDK + in-memory exporter)
#                      direct_otel_both (client and server: OTel SDK + in-memory)
#                      (direct_otel* need opentelemetry-sdk in $PY)
#   GUARD_CMD   prefix that runs a proxy in front of a command; the upstream
#               "$PY echo_server.py" is appended (target "guard").
#               default: "<repo>/.venv/bin/mcp-guard run --policies <repo>/bench/policies/ --"
#               (the 200-rule bench policy; the guard exposes the tool as upstream_echo)
#   GUARD_BASE  a checkout of mcp-guard whose code guard_base/guard_full_base run
#               (PYTHONPATH=$GUARD_BASE $PY -m mcp_guard); its config format must match
#   AGENTGUARD  path to the `agentguard` CLI (pip agentguard-mcp, own venv);
#               adds target "agentguard"
#   DRIVE_ARGS  extra drive.py options, e.g. "--seq-n 500 --conc-n 500"
#   OUTDIR      where results go                            (default: ./results/<timestamp>)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
GUARD_CMD="${GUARD_CMD:-$ROOT/.venv/bin/mcp-guard run --policies $HERE/policies/ --}"
ROUNDS="${ROUNDS:-3}"
TOOLS="${TOOLS:-20 2000}"
TARGETS="${TARGETS:-direct passthrough fastmcp guard}"
[[ -n "${AGENTGUARD:-}" && " $TARGETS " != *" agentguard "* ]] && TARGETS="$TARGETS agentguard"
STAMP="$(date +%Y%m%d-%H%M%S)"
OUTDIR="${OUTDIR:-$HERE/results/$STAMP}"
mkdir -p "$OUTDIR"
RESULTS="$OUTDIR/results.jsonl"
ERRLOG="$OUTDIR/stderr.log"
: >"$RESULTS"

ECHO=("$PY" "$HERE/echo_server.py")
BASE_GUARD=(env "PYTHONPATH=${GUARD_BASE:-}" "$PY" -m mcp_guard)

if [[ " $TARGETS " == *" guard_full"* ]]; then  # everything on: an OTLP sink, then the configs
  "$PY" "$HERE/otlp_sink.py" --port-file "$OUTDIR/sink.url" --counts-file "$OUTDIR/sink_counts.json" &
  SINK_PID=$!
  trap 'kill "$SINK_PID" 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do [[ -s "$OUTDIR/sink.url" ]] && break; sleep 0.1; done
  SINK="$(cat "$OUTDIR/sink.url")"
  FULL_CFG="$(PYTHONPATH="$ROOT" "$PY" "$HERE/full_config.py" "$OUTDIR/full" --endpoint "$SINK" --python "$PY")"
  FULL_BASE_CFG="$(PYTHONPATH="$ROOT" "$PY" "$HERE/full_config.py" "$OUTDIR/full_base" --endpoint "$SINK" --python "$PY")"
fi

target_cmd() {  # sets CMD (server command) and TDRIVE (per-target drive.py options)
  TDRIVE=()
  case "$1" in
    direct)            CMD=("${ECHO[@]}") ;;
    direct_nootel)     CMD=(env ECHO_NO_OTEL=1 "${ECHO[@]}") ;;
    direct_otel)       CMD=(env ECHO_OTEL_MEMORY=1 "${ECHO[@]}") ;;
    direct_otel_both)  CMD=(env ECHO_OTEL_MEMORY=1 "${ECHO[@]}"); TDRIVE=(--otel-memory) ;;
    passthrough)       CMD=("$PY" "$HERE/passthrough_proxy.py" -- "${ECHO[@]}") ;;
    passthrough_parse) CMD=("$PY" "$HERE/passthrough_proxy.py" --parse -- "${ECHO[@]}") ;;
    fastmcp)           CMD=("$PY" "$HERE/fastmcp_proxy.py" -- "${ECHO[@]}") ;;
    fastmcp_mw)        CMD=("$PY" "$HERE/fastmcp_proxy.py" --middleware 1 -- "${ECHO[@]}") ;;
    fastmcp_reuse)     CMD=("$PY" "$HERE/fastmcp_proxy.py" --reuse-session -- "${ECHO[@]}") ;;
    agentguard)        CMD=("${AGENTGUARD:?set AGENTGUARD}" run --audit-log "$OUTDIR/agentguard_audit.log" -- "${ECHO[@]}") ;;
    guard_full)        CMD=("$ROOT/.venv/bin/mcp-guard" run --config "$FULL_CFG") ;;
    guard_base)        CMD=("${BASE_GUARD[@]}" run --policies "$HERE/policies/" -- "${ECHO[@]}") ;;
    guard_full_base)   CMD=("${BASE_GUARD[@]}" run --config "$FULL_BASE_CFG") ;;
    guard)             read -r -a G <<<"${GUARD_CMD:?set GUARD_CMD}"; CMD=("${G[@]}" "${ECHO[@]}") ;;
    *) echo "unknown target $1" >&2; exit 2 ;;
  esac
}

echo "# $(date -u +%FT%TZ) $(nproc) cores; PY=$PY; rounds=$ROUNDS; tools=[$TOOLS]; targets=[$TARGETS]" | tee "$OUTDIR/meta.txt"
"$PY" -c 'import importlib.metadata as m
def v(p):
    try: return m.version(p)
    except m.PackageNotFoundError: return "-"
print("# versions:", *(f"{p}={v(p)}" for p in ("mcp", "fastmcp", "anyio", "pydantic", "mcp-guard")))' | tee -a "$OUTDIR/meta.txt"
[[ " $TARGETS " == *" guard "* ]] && echo "# guard: $GUARD_CMD" | tee -a "$OUTDIR/meta.txt"
[[ " $TARGETS " == *"_base "* ]] && echo "# base: ${GUARD_BASE:?set GUARD_BASE} at $(git -C "$GUARD_BASE" rev-parse --short HEAD)" | tee -a "$OUTDIR/meta.txt"
echo "# head: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet || echo +dirty); uptime:$(uptime | sed 's/.*up[^,]*,[^,]*,//')" | tee -a "$OUTDIR/meta.txt"

for n in $TOOLS; do
  export ECHO_TOOLS="$n"
  for r in $(seq 1 "$ROUNDS"); do
    for t in $TARGETS; do
      target_cmd "$t"
      printf '%s tools=%s round=%s target=%s ... ' "$(date +%T)" "$n" "$r" "$t" >&2
      # shellcheck disable=SC2086
      if line="$("$PY" "$HERE/drive.py" --label "$t" --server-stderr "$ERRLOG" ${DRIVE_ARGS:-} ${TDRIVE[@]+"${TDRIVE[@]}"} -- "${CMD[@]}" 2>>"$ERRLOG")"; then
        echo "$line" >>"$RESULTS"
        echo "ok" >&2
      else
        echo "FAILED (see $ERRLOG)" >&2
      fi
    done
  done
done

echo "# uptime at the end:$(uptime | sed 's/.*up[^,]*,[^,]*,//')" | tee -a "$OUTDIR/meta.txt"
if [[ -n "${SINK_PID:-}" ]]; then kill "$SINK_PID"; wait "$SINK_PID" || true; echo "# OTLP exports received: $(cat "$OUTDIR/sink_counts.json")" | tee -a "$OUTDIR/meta.txt"; fi
"$PY" "$HERE/summarize.py" "$RESULTS" | tee "$OUTDIR/summary.txt"
echo "raw: $RESULTS" >&2
