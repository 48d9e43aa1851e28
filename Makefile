# svcproxy — a drop-in replacement for kube-proxy.
#
#   make demo    (root) a local demo cluster: real API server, namespaces as
#                node and pods, a Service, svcproxy, balanced traffic
#   make test    unit + kernel + e2e tests (kernel/e2e layers need root)

GO      ?= go
BIN     ?= bin
PKGS    := ./...
GOTEST  ?= $(GO) test -count=1

.PHONY: all build test unit kernel e2e e2e-run demo lint deps clean

all: build

build:
	$(GO) build -o $(BIN)/svcproxy ./cmd/svcproxy

# deps installs the Debian packages the kernel and e2e layers use (root only;
# a no-op when everything is present).
deps:
	@sh e2e/install-deps.sh

lint:
	@out=$$(gofmt -l cmd proxier syncer e2e); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

# unit: pure tests only (kernel tests skip without root anyway).
unit:
	$(GOTEST) -short $$($(GO) list ./... | grep -v /e2e)

# kernel: tests that program iptables inside throwaway network namespaces.
kernel: deps
	$(GOTEST) -run Kernel -v ./proxier/...

e2e: deps
	$(MAKE) --no-print-directory e2e-run

test: deps lint
	$(GOTEST) -timeout 30m $$($(GO) list ./... | grep -v /e2e)
	$(MAKE) --no-print-directory e2e-run

# e2e-run runs the whole suite once per proxy mode.
e2e-run:
	$(GOTEST) -timeout 30m -v ./e2e/...
	SVCPROXY_E2E_PROXY_MODE=nftables $(GOTEST) -timeout 30m -v ./e2e/

demo: deps
	$(GO) run ./e2e/cmd/demo

clean:
	rm -rf $(BIN)
