#!/usr/bin/env bash
# `make bench`: builds what it needs (bench/setup.sh), then measures
# chatrelay, Postfix + Dovecot and maddy one after the other on loopback
# (bench/cmd/loadgen) and prints the table; results.json and results.md
# land in $OUT (default .cache/bench/results).
#
#   QUICK=1          small sizes, about 10 minutes instead of about 50
#   SERVERS=a,b      only these (chatrelay, postfix-dovecot, maddy)
#   ONLY=P1,P4       only these measurements (P6 always), for working on one
#   P1_MESSAGES=N    P1's sample size (default 500, 100 when QUICK)
#   BENCH_REIDLE=1   the second P1 client (bench/p1.py) answers each EXISTS
#                    with DONE and a new IDLE, as Delta Chat does
#   PROFILE=1        instead: CPU/heap profiles of chatrelay in-process
#                    (go test ./bench -bench ... -profdir $OUT/profiles)
#   MICRO=1          instead: the Go micro benchmarks of every package
#   SOAK=10m         instead: the soak (make soak): chatrelay with
#                    SOAK_IDLE (15000) connections in IDLE and SOAK_RATE
#                    (200) messages a second to them, for that long
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CACHE="${CACHE:-$ROOT/.cache/bench}"
OUT="${OUT:-$CACHE/results}"
GO="${GO:-go}"
cd "$ROOT"

if [ -n "${MICRO:-}" ]; then
  exec "$GO" test -run '^$' -bench . -benchmem ./...
fi
# Many idle connections need many descriptors, client and servers alike.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [ -n "${PROFILE:-}" ]; then
  mkdir -p "$OUT/profiles"
  "$GO" test ./bench -run '^$' -bench "${BENCH:-.}" -benchtime 1x -timeout 30m -profdir "$OUT/profiles" | tee "$OUT/profiles/bench.txt"
  for p in "$OUT"/profiles/*.cpu.pprof; do
    echo "== $p"; "$GO" tool pprof -top -nodecount 25 "$p" 2>/dev/null | sed -n '1,32p'
  done
  exit 0
fi

bash "$ROOT/bench/setup.sh"
args=(-cache "$CACHE" -out "$OUT")
[ -n "${QUICK:-}" ] && args+=(-quick)
[ -n "${SERVERS:-}" ] && args+=(-servers "$SERVERS")
[ -n "${ONLY:-}" ] && args+=(-only "$ONLY")
[ -n "${P1_MESSAGES:-}" ] && args+=(-p1-messages "$P1_MESSAGES")
[ -n "${SOAK:-}" ] && args+=(-soak "$SOAK" -soak-idle "${SOAK_IDLE:-15000}" -soak-rate "${SOAK_RATE:-200}")
"$CACHE/loadgen" "${args[@]}"
echo "results: $OUT/results.md, $OUT/results.json"
