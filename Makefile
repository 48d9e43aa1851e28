# svcproxy — a drop-in replacement for kube-proxy.
#
#   make demo    (root) a local demo cluster: real API server, namespaces as
#                node and pods, a Service, svcproxy, balanced traffic;
#                MODE=nftables for nftables mode
#   make test    unit + kernel + e2e tests (kernel/e2e layers need root)
#   make image   the container image (deploy/Dockerfile), with docker or podman

GO      ?= go
BIN     ?= bin
PKGS    := ./...
GOTEST  ?= $(GO) test -count=1

.PHONY: all build test unit kernel e2e e2e-run demo lint deps image clean

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

# image builds deploy/Dockerfile as $(IMAGE) with the first of docker and
# podman that answers (ENGINE=... picks one). Where none does, it says so
# and builds nothing, without failing.
IMAGE   ?= svcproxy:dev
ENGINE  ?=
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null)

image:
	@engine="$(ENGINE)"; \
	if [ -z "$$engine" ]; then \
		for e in docker podman; do \
			command -v $$e >/dev/null 2>&1 || continue; \
			if $$e info >/dev/null 2>&1; then engine=$$e; break; fi; \
			echo "make image: $$e is on PATH but does not answer ($$e info fails)"; \
		done; \
	fi; \
	if [ -z "$$engine" ]; then \
		echo "make image: no container engine (docker or podman) runs on this machine: image $(IMAGE) NOT built."; \
		echo "  Build it where one runs: docker build -f deploy/Dockerfile -t $(IMAGE) ."; \
		exit 0; \
	fi; \
	echo "make image: building $(IMAGE) with $$engine"; \
	$$engine build -f deploy/Dockerfile --build-arg VERSION=$(VERSION) -t $(IMAGE) .

# MODE=nftables runs the demo in nftables mode.
MODE    ?= iptables

demo: deps
	$(GO) run ./e2e/cmd/demo -mode=$(MODE)

clean:
	rm -rf $(BIN)
