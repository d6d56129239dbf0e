# The front door: make run, make test (what CI runs), make build, make bench, make fuzz.
GO ?= go
DELTACHAT_DIR ?= $(CURDIR)/.cache/deltachat
export DELTACHAT_RPC_SERVER ?= $(DELTACHAT_DIR)/node_modules/@deltachat/stdio-rpc-server-linux-x64/deltachat-rpc-server

.PHONY: build run test check deltachat fuzz bench clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$$(git describe --always --dirty 2>/dev/null || echo dev)" -o bin/chatrelay ./cmd/chatrelay

# A relay on loopback high ports: no root, no domain, data in ./chatrelay-data.
run:
	$(GO) run ./cmd/chatrelay serve --dev

# Delta Chat core (deltachat-rpc-server) from npm, for the end-to-end tests.
deltachat:
	scripts/install-deltachat.sh $(DELTACHAT_DIR)

check:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

test: deltachat check
	$(GO) test -race -timeout 25m ./...

FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

clean:
	rm -rf bin
