# budfleet. `make run` starts a local controller and an agent for this host;
# `make test` runs every check CI runs. Both install what they need.
SHELL   := /bin/bash
GO      ?= go
BIN     := $(CURDIR)/bin
CACHE   := $(CURDIR)/.cache
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/bud-ecosystem/budfleet/version.Version=$(VERSION)
BUF     := $(GO) tool -modfile=tools/go.mod buf
GRPCURL_VERSION := v1.9.3
GRPCURL := $(CACHE)/bin/grpcurl
# Unit packages run under the race detector; the process-level suites under
# test/ run without it (they time real daemons). test/inprocess, both daemons'
# libraries in one test process, is quick and races like a unit.
UNIT_PKGS = $(shell $(GO) list ./... | grep -v /test/) ./test/inprocess

export BUD_BIN_DIR := $(BIN)
# The tests' Kubernetes control plane (internal/kubetest reads BUD_K8S_DIR);
# `make k8s` builds it there once.
ifndef BUD_K8S_DIR
BUD_K8S_DIR := $(shell scripts/ensure-k8s.sh --dir)
endif
export BUD_K8S_DIR
# go-nvml wraps functions NVML marks deprecated; the warnings are noise.
export CGO_CFLAGS := -O2 -g -Wno-deprecated-declarations
# kubectl's drain helper (controller/kube) pulls in kustomize, whose Go-plugin
# loader links the standard library's plugin package. In a cgo binary that
# makes the linker bind every symbol at start-up (-z now), which go-nvml's
# symbols (resolved from the dlopen'd driver library) do not survive: the
# binaries of test/inprocess and test/bench, which link the agent and the
# controller, die with "symbol lookup error: undefined symbol: nvml...".
# This tag drops the loader (budfleet loads no kustomize plugins). By hand:
# go test -tags kustomize_disable_go_plugin_support ./test/inprocess
export GOFLAGS := $(strip $(shell $(GO) env GOFLAGS) -tags=kustomize_disable_go_plugin_support)
export GRPCURL

.PHONY: all build run test lint fmt-check vet imports-check buf-lint buf-breaking proto proto-check proto-baseline gpu-check \
        test-unit test-e2e test-units bench bench-fleet clean fuzz packages bundle

all: build

# The controller, budctl and the provider plugins are static; the agent
# needs cgo for NVML (it dlopens the driver's library at run time and links
# only libc).
build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/bud-controller ./cmd/budctl ./cmd/bud-provider-vsphere ./cmd/bud-provider-baremetal
	CGO_ENABLED=1 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/bud-agent ./cmd/bud-fleetsim

## gpu-check: the agent for linux/amd64 with cgo, printing this host's GPUs through NVML.
gpu-check:
	@mkdir -p $(BIN)/linux-amd64
	CGO_ENABLED=1 GOOS=linux GOARCH=amd64 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/linux-amd64/ ./cmd/bud-agent
	$(BIN)/linux-amd64/bud-agent gpus --gpu-backend nvml -o json

## packages: .deb and .rpm of every package in packaging/packages.list for $(PACKAGE_ARCHES), into dist/ (scripts/packages.sh).
PACKAGE_ARCHES ?= amd64 arm64
packages:
	VERSION=$(VERSION) scripts/packages.sh --arch "$(PACKAGE_ARCHES)" --out dist

## bundle: the packages, and a bundle of them signed with $(BUNDLE_KEY) (made when missing: a development key) in dist/.
BUNDLE_KEY ?= $(CACHE)/bundle/dev-bundle.key
bundle: packages build
	scripts/bundle.sh --budctl $(BIN)/budctl --key $(BUNDLE_KEY) --version $(VERSION) --dist dist

## run: a local controller with its embedded store and an agent for this host, until Ctrl-C.
run: build
	@scripts/run-local.sh

## test: everything CI runs.
test: lint test-unit fuzz test-e2e test-units
	@echo "make test: all checks passed"

lint: fmt-check vet imports-check buf-lint buf-breaking proto-check

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# The house's import rules (scripts/check-imports.sh says which).
imports-check:
	@scripts/check-imports.sh

buf-lint:
	$(BUF) lint

# FILE-level breaking changes against the committed baseline image; refresh
# the baseline with `make proto-baseline` when a release is cut.
buf-breaking:
	$(BUF) breaking --against buf/baseline.binpb

proto:
	$(BUF) generate

proto-check:
	@scripts/check-proto.sh

proto-baseline:
	$(BUF) build -o buf/baseline.binpb

$(GRPCURL):
	@mkdir -p $(CACHE)/bin
	GOBIN=$(CACHE)/bin $(GO) install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

## k8s: etcd, kube-apiserver, kube-controller-manager, kubelet and kwok for the tests, built once and cached (quiet when present).
.PHONY: k8s
k8s:
	@scripts/ensure-k8s.sh >/dev/null

## kubelet-deps: Debian containerd, runc, CNI plugins and busybox-static for the real-kubelet tests (quiet when present).
.PHONY: kubelet-deps
kubelet-deps:
	@scripts/ensure-kubelet-deps.sh

## baremetal-peers: sshd, ipmi_sim and ipmitool for the bare-metal provider's tests (quiet when present).
.PHONY: baremetal-peers
baremetal-peers:
	@scripts/ensure-baremetal.sh

test-unit: k8s kubelet-deps baremetal-peers
	$(GO) test -race -count=1 $(UNIT_PKGS)

## fuzz: each fuzz target for FUZZTIME executions (default 10000x) over its committed corpus (testdata/fuzz/).
## A count, not a duration: a duration races the fuzz coordinator's deadline on Go 1.26 (golang/go#75804)
## and fails with "context deadline exceeded" on a loaded machine.
FUZZTIME ?= 10000x
FUZZ_TARGETS = ./agent:FuzzLoadConfig ./siem:FuzzPushedConfig ./controller:FuzzCheckNodeText ./agent/gpu:FuzzMockEventsFile ./siem/output/hec:FuzzResponse ./siem/tail:FuzzCheckpoint
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$name ($$pkg, $(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

test-e2e: build $(GRPCURL) k8s kubelet-deps baremetal-peers
	$(GO) test -count=1 ./test/...

test-units: build
	BIN_DIR=$(BIN) scripts/verify-units.sh --self-test

## bench-fleet: the fleet benchmark (issue 12 P1-P3, P1 on etcd): BUD_FLEET_AGENTS virtual agents (default 10000) on one controller beside the bare-gRPC floor, ~20 min here.
.PHONY: bench-fleet
bench-fleet: build k8s
	$(GO) test ./test/fleetbench/ -run '^$$' -bench Fleet -benchtime=1x -count=1 -timeout 45m -v

## bench: every figure in the README's performance section.
bench: build $(GRPCURL) k8s
	$(GO) test ./test/bench/ -run '^$$' -bench 'Memory|AgentIdle' -benchtime=1x -count=1
	$(GO) test ./test/bench/ -run '^$$' -bench Enroll -benchtime=200x -count=1
	$(GO) test ./agent/gpu/ -run '^$$' -bench Sweep -benchmem -count=1
	$(GO) test ./siem/spool/ -run '^$$' -bench Append -count=1
	$(GO) test ./test/siembench/ -run '^$$' -bench ForwardVsRsyslog -benchtime=1x -count=1 -timeout 30m
	$(GO) test ./test/e2e/ -run '^$$' -bench Campaign -benchtime=1x -count=1
	$(GO) test ./test/e2e/ -run '^$$' -bench ArtifactTransfer -benchtime=1x -count=1
	$(GO) test ./agent/artifact/ -run '^$$' -bench Fetch -benchtime=4x -count=1

clean:
	rm -rf $(BIN) .run dist
