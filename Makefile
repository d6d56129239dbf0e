# The front door: make run, make test (what CI runs), make build, make bench, make fuzz.
GO ?= go
DELTACHAT_DIR ?= $(CURDIR)/.cache/deltachat
export DELTACHAT_RPC_SERVER ?= $(DELTACHAT_DIR)/node_modules/@deltachat/stdio-rpc-server-linux-x64/deltachat-rpc-server

.PHONY: build run test check deltachat tools fuzz fuzz-short fuzz-list crashtest bench soak clean release release-check hosttest conformance

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$$(git describe --always --dirty 2>/dev/null || echo dev) -X github.com/chatrelay/chatrelay/release.compiledKey=$(RELEASE_PUB)" -o bin/chatrelay ./cmd/chatrelay

# A relay on loopback high ports: no root, no domain, data in ./chatrelay-data.
run:
	$(GO) run ./cmd/chatrelay serve --dev $(if $(PORT_BASE),--port-base $(PORT_BASE))

# Delta Chat core (deltachat-rpc-server) from npm, for the end-to-end tests.
deltachat:
	scripts/install-deltachat.sh $(DELTACHAT_DIR)

# Debian packages some tests use: systemd-analyze (unit check), chromium
# (the web page as a browser shows it), a CJK font for its Chinese
# screenshot and strace (safeio's fsyncs). Installed when running as root (CI);
# otherwise those tests skip and say which package they need.
TOOLS_PKGS = systemd chromium fonts-wqy-microhei strace
tools:
	@missing=""; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	fc-list :lang=zh 2>/dev/null | grep -q . || missing="$$missing fonts-wqy-microhei"; \
	command -v strace >/dev/null || missing="$$missing strace"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null || echo "could not install$$missing; those tests will skip"; \
	  else echo "not root: tests needing$$missing will skip"; fi; \
	fi

# gofmt, go vet, and go.mod/go.sum as `go mod tidy` would leave them
# (-diff changes nothing; it prints what tidy would change and fails).
check:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }

test: deltachat tools check
	$(GO) test -race -timeout 25m ./...
	@$(MAKE) --no-print-directory fuzz-short
	GO="$(GO)" scripts/hosttest.sh --optional

# Real Debian hosts (TESTING.md layer 8): install, reboot, upgrade,
# uninstall and the no-outside-world drill in systemd-nspawn guests. Needs
# root; installs debootstrap, systemd-container and nftables with apt-get.
# CHATRELAY_HOSTTEST_CACHE keeps the guest image (default .cache/hosttest).
hosttest: deltachat
	GO="$(GO)" scripts/hosttest.sh

# Delta Chat core's own Python suite against the relay (docs/CONFORMANCE.md):
# CORE_SRC is a copy of the chatmail/core repository at the version of the
# deltachat-rpc-server we test with. Needs root (a network namespace);
# installs pytest and imap-tools from Debian packages.
# DC_RPC_VERSION picks the deltachat-rpc-server from npm to match CORE_SRC
# (default: the one the e2e tests use).
conformance:
	@test -n "$(CORE_SRC)" || { echo "usage: make conformance CORE_SRC=DIR [DC_RPC_VERSION=X.Y.Z] (a copy of github.com/chatmail/core at vX.Y.Z)"; exit 1; }
	rpc=$$(DC_RPC_VERSION=$(or $(DC_RPC_VERSION),2.62.0) scripts/install-deltachat.sh $(CURDIR)/.cache/deltachat-$(or $(DC_RPC_VERSION),2.62.0) | tail -n 1) && \
	DELTACHAT_RPC_SERVER=$$rpc GO="$(GO)" scripts/conformance.sh "$(CORE_SRC)" $(PYTEST_ARGS)

FUZZTIME ?= 30s
fuzz:
	@$(MAKE) --no-print-directory -s fuzz-list | GO="$(GO)" scripts/fuzz.sh $(FUZZTIME)

# make test runs every fuzz target briefly: new inputs for a few seconds
# each, on top of its seed corpus.
FUZZTIME_SHORT ?= 3s
fuzz-short:
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(FUZZTIME_SHORT)

# Every fuzz target, as `make fuzz` runs them: "package FuzzName" a line,
# read from the test files (go test -list would build every package).
fuzz-list:
	@$(GO) list -f '{{.ImportPath}} {{.Dir}}' ./... | while read pkg dir; do \
	  cat "$$dir"/*_test.go 2>/dev/null | sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' | sort | sed "s|^|$$pkg |"; \
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
	QUICK="$(QUICK)" SERVERS="$(SERVERS)" ONLY="$(ONLY)" P1_MESSAGES="$(P1_MESSAGES)" PROFILE="$(PROFILE)" MICRO="$(MICRO)" GO="$(GO)" bench/run.sh

# The soak (docs/BENCHMARKS.md): SOAK_IDLE connections in IDLE and
# SOAK_RATE messages a second to them for SOAK (default 10 minutes);
# every message must reach its IDLE client, memory must stay flat.
SOAK ?= 10m
soak:
	SOAK="$(SOAK)" SOAK_IDLE="$(or $(SOAK_IDLE),15000)" SOAK_RATE="$(or $(SOAK_RATE),200)" GO="$(GO)" bench/run.sh

# Release files in $(DIST): static binaries for linux/amd64 and linux/arm64,
# SHA256SUMS and, with RELEASE_KEY (a minisign secret key file, kept out
# of the repository), a .minisig signature beside each. The release public
# key compiled in comes from RELEASE_PUB (the one-line key) or release.pub.
# Two builds of one commit give the same bytes: make release-check.
VERSION ?=
RELEASE_KEY ?=
RELEASE_PUB ?= $(shell test -f release.pub && tail -n 1 release.pub)
DIST ?= dist
RELEASE_TARGETS ?= linux/amd64 linux/arm64
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
RELEASE_LDFLAGS = -s -w -buildid= -X main.version=$(VERSION) -X github.com/chatrelay/chatrelay/release.compiledKey=$(RELEASE_PUB)
release:
	@test -n "$(VERSION)" || { echo "usage: make release VERSION=x.y.z [RELEASE_KEY=FILE]"; exit 1; }
	rm -rf $(DIST) && mkdir -p $(DIST)
	@for t in $(RELEASE_TARGETS); do \
	  os=$${t%/*}; arch=$${t#*/}; echo "build $$t"; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch GOAMD64=v1 GOARM64=v8.0 GOFLAGS= \
	    $(GO) build -trimpath -buildvcs=false -ldflags "$(RELEASE_LDFLAGS)" \
	    -o $(DIST)/chatrelay-$(VERSION)-$$os-$$arch ./cmd/chatrelay || exit 1; \
	done
	$(GO) run ./cmd/mkrelease finish --dir $(DIST) --version $(VERSION) --time $(SOURCE_DATE_EPOCH) \
	  --targets "$$(echo $(RELEASE_TARGETS) | tr ' ' ,)" $(if $(RELEASE_KEY),--key $(RELEASE_KEY))
	@cat $(DIST)/SHA256SUMS

# Build the release twice, each with a build cache of its own, and compare
# every byte.
release-check:
	@tmp=$$(mktemp -d) && trap 'chmod -R u+w $$tmp; rm -rf $$tmp' EXIT && \
	$(MAKE) --no-print-directory release VERSION=$(or $(VERSION),0.0.0-check) DIST=$$tmp/a GOCACHE=$$tmp/cache-a >/dev/null && \
	$(MAKE) --no-print-directory release VERSION=$(or $(VERSION),0.0.0-check) DIST=$$tmp/b GOCACHE=$$tmp/cache-b >/dev/null && \
	diff -r $$tmp/a $$tmp/b && cat $$tmp/a/SHA256SUMS && echo "release-check: two builds are identical"

clean:
	rm -rf bin dist
