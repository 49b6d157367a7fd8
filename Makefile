# Build, test and package the Guest Proxy Agent and its VM extension.
# Every target works on a fresh Debian machine as root after `make deps`
# (which .ci/run and the demo call for you).

VERSION    := $(shell cat VERSION)
PKG        := github.com/opengpa/gpa
LDFLAGS    := -s -w -X $(PKG)/internal/version.Version=$(VERSION)
GO         ?= go
BIN        := bin
BINARIES   := azure-proxy-agent azure-host-sim ProxyAgentExt

export CGO_ENABLED := 0

.PHONY: all build test unit generate package demo bench deps clean

all: build

## build: all binaries into bin/, statically linked, version stamped
build:
	@mkdir -p $(BIN)
	@for b in $(BINARIES); do \
		if [ -d cmd/$$b ]; then $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/$$b ./cmd/$$b || exit 1; fi; \
	done
	@ls -l $(BIN)

## deps: the Debian packages and Go modules the tests and the demo need
deps:
	bash scripts/deps.sh

## test: vet, then every test including the privileged end-to-end ones (run as root).
## One package at a time (-p 1): the end-to-end and extension tests start real
## services and time their supervision, and share the kernel's cgroups and bpffs.
## Then the tests that need neither root nor the kernel again with the race
## detector (which needs cgo, so CGO_ENABLED=1 for that step only).
test: deps build
	$(GO) vet ./...
	$(GO) test -count=1 -p 1 -timeout 30m ./...
	CGO_ENABLED=1 $(GO) test -race -short -count=1 -timeout 30m ./...

## unit: the tests that need neither root nor the kernel
unit:
	$(GO) test -count=1 -short ./...

## generate: rebuild the committed eBPF objects (needs clang and llvm-strip)
generate:
	$(GO) generate ./bpf/... ./proxyagent/redirector/...

## package: the extension zips (one per architecture under dist/linux-ARCH/,
##          and one with both builds whose scripts run the one for `uname -m`)
##          and an agent .deb per architecture under dist/
ARCHES     := amd64 arm64
package: build
	@for a in $(ARCHES); do \
		mkdir -p $(BIN)/linux-$$a; \
		for b in azure-proxy-agent ProxyAgentExt; do \
			GOOS=linux GOARCH=$$a $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/linux-$$a/$$b ./cmd/$$b || exit 1; \
		done; \
	done
	bash packaging/package.sh $(VERSION) $(BIN) dist

## demo: the whole system on a simulated VM in a network namespace (root)
demo: deps build
	bash scripts/demo.sh

## bench: the benchmark suite (root): table on stdout, JSON in bench/results/latest.json;
##        pass flags with BENCH_FLAGS, e.g. make bench BENCH_FLAGS='-runs 5 -soak 1h'
bench: build
	$(GO) run ./bench/cmd/gpabench $(BENCH_FLAGS)

clean:
	rm -rf $(BIN) dist
