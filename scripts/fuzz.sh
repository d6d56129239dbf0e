#!/usr/bin/env bash
# Runs fuzz targets for a while each: `make fuzz` (FUZZTIME, default 30s)
# and `make fuzz-short` (a few seconds each, part of `make test`).
#
# Usage: make -s fuzz-list | scripts/fuzz.sh FUZZTIME
#   (lines "package FuzzName", a package's targets together)
#
# Each package's test binary is built once, instrumented for fuzzing, and
# run once per target in the package's folder, with go test's corpus
# cache, so a finding lands in testdata/fuzz as with go test -fuzz.
#
# A target fails when the run fails, except for one known fault of Go's
# fuzzing coordinator before Go 1.27 (go.dev/issue/75804): when the time
# runs out while a worker is busy, it may report "context deadline
# exceeded" and nothing else. That is said and passed over; a real finding
# reports more and writes its input.
set -uo pipefail

fuzztime=${1:?usage: make -s fuzz-list | scripts/fuzz.sh FUZZTIME}
go=${GO:-go}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cache=$("$go" env GOCACHE)/fuzz
built= n=0
while read -r pkg target; do
  [ -n "$pkg" ] || continue
  bin=$tmp/$(echo "$pkg" | tr / _).test
  if [ "$built" != "$pkg" ]; then
    echo "fuzz: build $pkg"
    "$go" test -c -fuzz=. -o "$bin" "$pkg" || exit 1
    dir=$("$go" list -f '{{.Dir}}' "$pkg") || exit 1
    built=$pkg
  fi
  n=$((n + 1))
  echo "fuzz $pkg $target"
  if (cd "$dir" && "$bin" -test.run='^$' -test.fuzz="^${target}\$" -test.fuzztime="$fuzztime" \
      -test.fuzzminimizetime=2s -test.fuzzcachedir="$cache/$pkg" </dev/null >"$tmp/out" 2>&1); then
    grep '^fuzz: elapsed' "$tmp/out" | tail -n 1
    continue
  fi
  cat "$tmp/out"
  # The fault's whole report is that one indented line.
  if [ "$(grep -c '^    ' "$tmp/out")" = 1 ] && grep -qx '    context deadline exceeded' "$tmp/out"; then
    echo "fuzz $pkg $target: the fuzzing engine's end-of-time fault (go.dev/issue/75804), no finding: passed over"
    continue
  fi
  echo "fuzz $pkg $target: FAILED (a failing input is under $dir/testdata/fuzz/$target)"
  exit 1
done
echo "fuzz: $n targets, $fuzztime each"
