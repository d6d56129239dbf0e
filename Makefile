# The front door: make run, make test (what CI runs), make build, make bench, make fuzz.
GO ?= go
DELTACHAT_DIR ?= $(CURDIR)/.cache/deltachat
export DELTACHAT_RPC_SERVER ?= $(DELTACHAT_DIR)/node_modules/@deltachat/stdio-rpc-server-linux-x64/deltachat-rpc-server

.PHONY: build run test check deltachat tools fuzz fuzz-list crashtest bench clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$$(git describe --always --dirty 2>/dev/null || echo dev)" -o bin/chatrelay ./cmd/chatrelay

# A relay on loopback high ports: no root, no domain, data in ./chatrelay-data.
run:
	$(GO) run ./cmd/chatrelay serve --dev $(if $(PORT_BASE),--port-base $(PORT_BASE))

# Delta Chat core (deltachat-rpc-server) from npm, for the end-to-end tests.
deltachat:
	scripts/install-deltachat.sh $(DELTACHAT_DIR)

# Debian packages some tests use: systemd-analyze (unit check), chromium
# (the web page as a browser shows it) and a CJK font for its Chinese
# screenshot. Installed when running as root (CI);
# otherwise those tests skip and say which package they need.
TOOLS_PKGS = systemd chromium fonts-wqy-microhei
tools:
	@missing=""; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	fc-list :lang=zh 2>/dev/null | grep -q . || missing="$$missing fonts-wqy-microhei"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null || echo "could not install$$missing; those tests will skip"; \
	  else echo "not root: tests needing$$missing will skip"; fi; \
	fi

check:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

test: deltachat tools check
	$(GO) test -race -timeout 25m ./...

FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 2s $$pkg || exit 1; \
	  done; \
	done

# Every fuzz target, as `make fuzz` runs them.
fuzz-list:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do echo "$$pkg $$f"; done; \
	done

# kill -9 under load, then restart and count (TESTING.md layer 6): every
# message answered 250 is there once, the index checks out, no orphans.
# `make test` runs a few cycles of the same test.
CRASH_CYCLES ?= 200
crashtest:
	CHATRELAY_CRASH_CYCLES=$(CRASH_CYCLES) $(GO) test -run '^TestCrashLoop$$' -count=1 -timeout 30m -v ./cmd/chatrelay

# Benchmarks against Postfix + Dovecot and maddy (docs/BENCHMARKS.md):
# QUICK=1 for a short run, SERVERS=chatrelay,maddy to pick, PROFILE=1 for
# pprof profiles of chatrelay, MICRO=1 for the Go micro benchmarks.
bench:
	QUICK="$(QUICK)" SERVERS="$(SERVERS)" ONLY="$(ONLY)" PROFILE="$(PROFILE)" MICRO="$(MICRO)" GO="$(GO)" bench/run.sh

clean:
	rm -rf bin
