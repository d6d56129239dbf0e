#!/usr/bin/env bash
# Real-host tests (TESTING.md layer 8): boots Debian bookworm guests with
# systemd-nspawn and installs, reboots, upgrades and removes the relay in
# them, then runs the no-outside-world drill. Prints one line per check
# and the total time; the full `go test -v` log is kept in
# $CHATRELAY_HOSTTEST_CACHE/last.log.
#
# Usage: scripts/hosttest.sh [--optional]
#   --optional: when this machine cannot run the tests (not root, no
#   apt-get to install the tools), say why and exit 0 (`make test`).
#
# As root it installs what it needs with apt-get (debootstrap,
# systemd-container, nftables, iproute2). The guest image is made once
# with debootstrap from the Debian mirror in this host's apt sources and
# kept as a tarball in $CHATRELAY_HOSTTEST_CACHE (default .cache/hosttest);
# point that at a directory that outlives the clone to skip debootstrap.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
optional=
[ "${1:-}" = --optional ] && optional=1
GO=${GO:-go}
export CHATRELAY_HOSTTEST_CACHE=${CHATRELAY_HOSTTEST_CACHE:-$root/.cache/hosttest}

skip() {
  echo "hosttest skipped: $*"
  if [ -n "$optional" ]; then exit 0; fi
  exit 1
}

[ "$(id -u)" = 0 ] || skip "needs root (systemd-nspawn, veth links, debootstrap): run sudo make hosttest"
[ "$(uname -s)" = Linux ] || skip "needs Linux"

missing=""
command -v debootstrap >/dev/null || missing="$missing debootstrap"
command -v systemd-nspawn >/dev/null || missing="$missing systemd-container"
command -v nft >/dev/null || missing="$missing nftables"
command -v ip >/dev/null || missing="$missing iproute2"
command -v nsenter >/dev/null || missing="$missing util-linux"
if [ -n "$missing" ]; then
  command -v apt-get >/dev/null || skip "needs$missing and there is no apt-get to install them"
  echo "hosttest: installing$missing"
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null; }; then
    skip "could not install$missing"
  fi
fi

mkdir -p "$CHATRELAY_HOSTTEST_CACHE"
log="$CHATRELAY_HOSTTEST_CACHE/last.log"
start=$(date +%s)
cd "$root"
# Every step inside has its own timeout; this one bounds the whole run.
CHATRELAY_HOSTTEST=1 timeout --kill-after=30s 25m \
  "$GO" test -count=1 -v -timeout 20m ./hosttest/ >"$log" 2>&1
rc=$?
grep -E -- '^ *--- (PASS|FAIL|SKIP)|^(guest image|debootstrap took|host tests:)|^(ok|FAIL|panic)|: systemd-analyze security chatrelay.service: ' "$log" |
  sed -E 's/^( *)--- /\1/; s/^ +[a-z_]+_test.go:[0-9]+: /    measured: /'
if [ $rc -ne 0 ]; then
  echo "hosttest: FAIL (exit $rc); the log's failures:"
  grep -E -B2 -A20 -- '--- FAIL' "$log" | grep -vE '^ *--- (PASS|SKIP)' | head -150
  echo "full log: $log"
fi
echo "hosttest: total $(( $(date +%s) - start ))s"
exit $rc
