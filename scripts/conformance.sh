#!/usr/bin/env bash
# Delta Chat core's own Python suite (deltachat-rpc-client/tests) against
# chatrelay (TESTING.md layer 9, docs/CONFORMANCE.md).
#
# Usage: scripts/conformance.sh CORE_SRC [PYTEST ARGS...]
#   CORE_SRC: a copy of the chatmail/core repository (at least its
#   deltachat-rpc-client/ and test-data/ folders) at the version of the
#   deltachat-rpc-server we test with. The suite is read from there, never
#   copied into this repository.
#
# Needs root (a network and mount namespace of its own) and Linux. Installs
# pytest, pytest-timeout, pytest-xdist and imap-tools from Debian packages
# when missing; the suite's deltachat-rpc-client package is pure Python and
# comes from CORE_SRC through PYTHONPATH.
#
# It builds chatrelay, then, inside a new network namespace (only its own
# loopback, nothing reaches outside) with a private /etc/hosts that names
# the relay and a private /etc/resolv.conf that fails look-ups fast, starts `chatrelay serve` for CHATMAIL_DOMAIN (default
# _chatrelay.test: core skips CA checks for names starting with `_`, and
# checks the name) on the standard ports of 127.0.0.1, runs the suite with
# CHATMAIL_DOMAIN set, and prints one line per test and the totals.
#
# tests/test_cross_core.py is left out: it installs other core versions
# from PyPI into a virtualenv, which needs the internet; set
# CONFORMANCE_CROSS_CORE=1 to run it anyway.
#
# Environment: CONFORMANCE_TIMEOUT (seconds per test, default 240),
# CONFORMANCE_JOBS (parallel pytest workers, default 2),
# CONFORMANCE_OUT (folder for the relay log, junit XML and table; default
# a temporary folder, kept and printed at the end), DELTACHAT_RPC_SERVER
# (the binary; `make deltachat` installs it), CHATMAIL_DOMAIN.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "conformance: $*" >&2; exit 1; }

[ $# -ge 1 ] || die "usage: make conformance CORE_SRC=DIR (a copy of github.com/chatmail/core)"
core=$(cd "$1" 2>/dev/null && pwd) || die "CORE_SRC $1: no such folder"
shift
suite=$core/deltachat-rpc-client
[ -d "$suite/tests" ] && [ -d "$suite/src/deltachat_rpc_client" ] ||
  die "CORE_SRC $core has no deltachat-rpc-client/tests: give a copy of the chatmail/core repository"
[ "$(id -u)" = 0 ] || die "needs root (a network and mount namespace of its own): run sudo make conformance CORE_SRC=$core"
[ "$(uname -s)" = Linux ] || die "needs Linux"

domain=${CHATMAIL_DOMAIN:-_chatrelay.test}
timeout=${CONFORMANCE_TIMEOUT:-240}
jobs=${CONFORMANCE_JOBS:-2}
rpc=${DELTACHAT_RPC_SERVER:-$root/.cache/deltachat/node_modules/@deltachat/stdio-rpc-server-linux-x64/deltachat-rpc-server}
[ -x "$rpc" ] || die "deltachat-rpc-server not found at $rpc: run make deltachat or set DELTACHAT_RPC_SERVER"

# Debian's python3, where the Debian packages install (not a pyenv or venv
# python that may come first in PATH).
py=/usr/bin/python3
pkgs=""
if [ ! -x $py ]; then pkgs="python3"; fi
[ -x $py ] && $py -c 'import pytest' 2>/dev/null || pkgs="$pkgs python3-pytest"
[ -x $py ] && $py -c 'import pytest_timeout' 2>/dev/null || pkgs="$pkgs python3-pytest-timeout"
[ -x $py ] && $py -c 'import xdist' 2>/dev/null || pkgs="$pkgs python3-pytest-xdist"
[ -x $py ] && $py -c 'import imap_tools' 2>/dev/null || pkgs="$pkgs python3-imap-tools"
command -v ip >/dev/null || pkgs="$pkgs iproute2"
command -v unshare >/dev/null || pkgs="$pkgs util-linux"
if [ -n "$pkgs" ]; then
  command -v apt-get >/dev/null || die "missing:$pkgs (Debian packages) and no apt-get"
  echo "conformance: installing$pkgs with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
fi

out=${CONFORMANCE_OUT:-$(mktemp -d /tmp/chatrelay-conformance.XXXXXX)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d /tmp/chatrelay-conformance-run.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "conformance: building chatrelay"
(cd "$root" && CGO_ENABLED=0 ${GO:-go} build -o "$work/chatrelay" ./cmd/chatrelay)

# The relay's config: the standard ports on the namespace's loopback (the
# suite's direct IMAP checks use 993), a self-signed certificate for the
# `_` domain. Every test account comes from 127.0.0.1, so the per-address
# limits that keep one guesser or one spammer in check are opened wide; a
# busy test machine must not count as a starved one either.
cat >"$work/chatrelay.toml" <<EOF
domain = "$domain"
data_dir = "$work/data"
max_load1 = 1000.0
min_free_memory = 0
min_free_disk = 0
new_accounts_per_minute = 100000.0
new_accounts_burst = 100000
send_rate_per_minute = 100000.0
send_rate_burst = 100000

[listen]
imaps = "127.0.0.1:993"
imap = "127.0.0.1:143"
submissions = "127.0.0.1:465"
submission = "127.0.0.1:587"
smtp = "127.0.0.1:25"
https = "127.0.0.1:443"
http = "127.0.0.1:80"

[tls]
mode = "selfsigned"

[turn]
listen_udp = "127.0.0.1:3478"
listen_tcp = "127.0.0.1:3478"
relay_ip = "127.0.0.1"
relay_bind = "127.0.0.1"
min_port = 49152
max_port = 49251
allow_peers = ["127.0.0.0/8"]

[limits]
imap_per_ip = 0
submission_per_ip = 0
smtp_per_ip = 0
https_per_ip = 0
prove_within_seconds = 60
EOF
printf '127.0.0.1 localhost %s\n::1 localhost\n' "$domain" >"$work/hosts"
# No DNS server inside the namespace: core asks for autoconfig.DOMAIN at
# every configuration, and the machine's resolver, out of reach there, made
# each one wait 5 s. A resolver on the namespace's own loopback, where
# nothing answers, with a 1 s timeout, gives up after 1 s.
printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$work/resolv.conf"

# The part that runs inside the namespace.
cat >"$work/inside.sh" <<'EOF'
set -uo pipefail
ip link set lo up
mount --bind "$WORK/hosts" /etc/hosts
mount --bind "$WORK/resolv.conf" /etc/resolv.conf
"$WORK/chatrelay" serve --config "$WORK/chatrelay.toml" --log-level debug >"$OUT/relay.log" 2>&1 &
relay=$!
ok=
for _ in $(seq 1 300); do
  if ! kill -0 $relay 2>/dev/null; then break; fi
  if (exec 3<>/dev/tcp/127.0.0.1/993) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/443) 2>/dev/null; then ok=1; break; fi
  sleep 0.2
done
if [ -z "$ok" ]; then
  echo "conformance: the relay did not start; its log:" >&2
  tail -n 30 "$OUT/relay.log" >&2
  kill $relay 2>/dev/null
  exit 3
fi
mkdir -p "$WORK/bin"
ln -s "$RPC" "$WORK/bin/deltachat-rpc-server"
# The suite's own IMAP connections (imap-tools, Python's ssl) verify the
# certificate as on a real relay: trust the relay's self-signed one there.
cert=$(find "$WORK/data" -name selfsigned.crt | head -n 1)
if [ -n "$cert" ]; then
  cat /etc/ssl/certs/ca-certificates.crt "$cert" >"$WORK/ca.pem" 2>/dev/null || cp "$cert" "$WORK/ca.pem"
  export SSL_CERT_FILE="$WORK/ca.pem"
fi
cd "$SUITE"
status=0
# Core's events (every rpc-server event is logged at DEBUG) land in the
# failure reports of pytest.log; the timestamps let them be laid beside
# the relay's log.
PATH="$WORK/bin:$PATH" PYTHONPATH="$SUITE/src" CHATMAIL_DOMAIN="$DOMAIN" \
  RUST_MIN_STACK=8388608 HOME="$WORK" \
  nice -n 5 /usr/bin/python3 -m pytest -p deltachat_rpc_client.pytestplugin \
  -o log_cli=false -o cache_dir="$WORK/pytest-cache" -p no:cacheprovider \
  --log-format='%(asctime)s.%(msecs)03d %(levelname)s %(message)s' --log-date-format=%H:%M:%S \
  --timeout="$TIMEOUT" -n "$JOBS" --junitxml="$OUT/junit.xml" -q -rfEs \
  $IGNORE "$@" tests >"$OUT/pytest.log" 2>&1 || status=$?
kill $relay 2>/dev/null
wait $relay 2>/dev/null
exit $status
EOF

ignore="--ignore=tests/test_cross_core.py"
if [ -n "${CONFORMANCE_CROSS_CORE:-}" ]; then ignore=""; else
  echo "conformance: leaving out tests/test_cross_core.py (installs other core versions from PyPI; CONFORMANCE_CROSS_CORE=1 runs it)"
fi
echo "conformance: core suite from $core, relay $domain, output in $out"
echo "conformance: $(date -u +%H:%M:%S) running (timeout ${timeout}s per test, $jobs workers)"
start=$(date +%s)
status=0
WORK=$work OUT=$out SUITE=$suite DOMAIN=$domain RPC=$rpc TIMEOUT=$timeout JOBS=$jobs IGNORE=$ignore \
  unshare --net --mount --propagation private bash "$work/inside.sh" "$@" || status=$?
echo "conformance: finished in $(($(date +%s) - start))s (pytest exit $status)"
if [ ! -f "$out/junit.xml" ]; then
  tail -n 40 "$out/pytest.log" 2>/dev/null || true
  die "no results (see $out)"
fi
$py "$root/scripts/conformance-table.py" "$out/junit.xml" | tee "$out/table.txt"
echo "conformance: pytest log $out/pytest.log, relay log $out/relay.log"
# pytest's 1 means some tests failed: the table says which.
[ $status -le 1 ] || exit $status
