#!/usr/bin/env bash
# Installs Delta Chat core's JSON-RPC server (deltachat-rpc-server) from the
# npm registry for the end-to-end tests and prints the binary's path.
#
# Usage: scripts/install-deltachat.sh [DIR]
#   DIR defaults to .cache/deltachat under the repository root.
#   DC_RPC_VERSION overrides the version (default 2.62.0).
#
# Idempotent: does nothing but print the path when that version is present.
# When npm is missing and we run as root (CI on Debian), installs nodejs and
# npm with apt-get; otherwise fails with a message saying what to install.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${1:-$root/.cache/deltachat}
version=${DC_RPC_VERSION:-2.62.0}
pkg=@deltachat/stdio-rpc-server-linux-x64
bin="$dir/node_modules/$pkg/deltachat-rpc-server"

installed=
if [ -x "$bin" ]; then
  installed=$("$bin" --version 2>&1 || true) # it prints the version on stderr
fi
if [ "$installed" != "$version" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "install-deltachat: npm not found, installing nodejs and npm with apt-get" >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq >&2
      apt-get install -y -qq nodejs npm >&2
    else
      echo "install-deltachat: npm is required to install $pkg; install Node.js and npm (e.g. apt-get install nodejs npm) and retry" >&2
      exit 1
    fi
  fi
  mkdir -p "$dir"
  (
    cd "$dir"
    [ -f package.json ] || npm init -y >/dev/null
    npm install --no-audit --no-fund --save-exact "$pkg@$version" >&2
  ) || { echo "install-deltachat: npm install $pkg@$version failed" >&2; exit 1; }
fi

if ! "$bin" --version >/dev/null 2>&1; then
  echo "install-deltachat: $bin does not run" >&2
  exit 1
fi
echo "$bin"
