#!/usr/bin/env bash
# Installs and builds what `make bench` compares: chatrelay (built like
# `make build`), maddy v0.8.1 (built from the Go module, not committed), and
# Postfix + Dovecot from Debian (as root only; not started, not enabled).
# Everything built goes to $CACHE (default .cache/bench). Safe to re-run.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${CACHE:-$ROOT/.cache/bench}"
GO="${GO:-go}"
MADDY_VERSION="${MADDY_VERSION:-v0.8.1}"
mkdir -p "$CACHE"

echo "bench setup: chatrelay"
(cd "$ROOT" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w -X main.version=bench" -o "$CACHE/chatrelay" ./cmd/chatrelay)

echo "bench setup: loadgen"
(cd "$ROOT" && "$GO" build -o "$CACHE/loadgen" ./bench/cmd/loadgen)

if [ ! -x "$CACHE/maddy" ] || [ "$(cat "$CACHE/maddy.version" 2>/dev/null)" != "$MADDY_VERSION" ]; then
  echo "bench setup: maddy $MADDY_VERSION"
  # maddy's go.mod replaces go-imap/go-smtp with forks, so `go install`
  # refuses it: build inside a copy of the module instead.
  # Downloaded from outside any module, so chatrelay's go.mod is untouched.
  dl="$(mktemp -d)"
  dir="$(cd "$dl" && "$GO" mod download -json "github.com/foxcpp/maddy@$MADDY_VERSION" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')"  || dir=""
  rmdir "$dl"
  if [ -z "$dir" ]; then echo "bench setup: cannot download maddy; it will be skipped"; else
    rm -rf "$CACHE/maddy-src"
    cp -r "$dir" "$CACHE/maddy-src"
    chmod -R u+w "$CACHE/maddy-src"
    if (cd "$CACHE/maddy-src" && GOFLAGS=-mod=mod "$GO" build -trimpath -ldflags "-s -w" -o "$CACHE/maddy" ./cmd/maddy); then
      echo "$MADDY_VERSION" > "$CACHE/maddy.version"
    else
      echo "bench setup: maddy did not build; it will be skipped"
    fi
  fi
fi

need=""
command -v postfix >/dev/null || need="$need postfix"
command -v dovecot >/dev/null || need="$need dovecot-imapd dovecot-lmtpd"
if [ -n "$need" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bench setup: installing$need (services are not started)"
    # "No configuration": the package leaves /etc/postfix alone; the bench
    # runs its own instance from a temporary directory.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $need openssl >/dev/null || echo "bench setup: could not install$need; Postfix+Dovecot will be skipped"
  else
    echo "bench setup: not root; Postfix+Dovecot will be skipped"
  fi
fi

if [ ! -x "$ROOT/.cache/deltachat/node_modules/@deltachat/stdio-rpc-server-linux-x64/deltachat-rpc-server" ]; then
  echo "bench setup: Delta Chat core"
  "$ROOT/scripts/install-deltachat.sh" "$ROOT/.cache/deltachat" || echo "bench setup: no Delta Chat core; P2 will be skipped"
fi
