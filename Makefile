# keytrail developer tasks. `make` (or `make help`) lists them.
#
# Everything this Makefile builds or runs lives under .local/ (git-ignored): the pinned protobuf
# toolchain, staticcheck and our binaries in .local/bin, the pinned OpenAPI linter in
# .local/openapi-lint, the local ClickHouse in .local/clickhouse.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

GO ?= go
LOCAL_BIN := $(CURDIR)/.local/bin
CLICKHOUSE := $(CURDIR)/deploy/clickhouse/local.sh
CONSOLE_INSTALL := $(CURDIR)/deploy/console/install.sh
CONSOLE_WEB := $(CURDIR)/query/console/web

# The local ClickHouse's native port; exported so local.sh and the tests agree on it.
export KEYTRAIL_CH_TCP_PORT ?= 19000
export KEYTRAIL_TEST_CLICKHOUSE_ADDR ?= 127.0.0.1:$(KEYTRAIL_CH_TCP_PORT)

# Test knobs: `make test PKGS=./ingest/... TEST_FLAGS='-run TestFlush -v'`.
PKGS ?= ./...
TEST_TIMEOUT ?= 20m
TEST_FLAGS ?=

##@ Protobuf toolchain (pinned; `go install`ed into .local/bin)

BUF_VERSION := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GRPC_GATEWAY_VERSION := v2.32.0

# go-tool(name, package, version): .local/bin/<name>, rebuilt only when missing or when its pinned
# version changes. The version lives in a stamp file the binary depends on; changing the pin makes
# a new, newer stamp.
TOOL_BINS :=
define go-tool
$(LOCAL_BIN)/$(1): $(LOCAL_BIN)/.versions/$(1)@$(3)
	GOBIN=$(LOCAL_BIN) $(GO) install $(2)@$(3)
	@touch $$@
$(LOCAL_BIN)/.versions/$(1)@$(3):
	@mkdir -p $$(@D)
	@rm -f $$(@D)/$(1)@*
	@touch $$@
TOOL_BINS += $(LOCAL_BIN)/$(1)
endef

$(eval $(call go-tool,buf,github.com/bufbuild/buf/cmd/buf,$(BUF_VERSION)))
$(eval $(call go-tool,protoc-gen-go,google.golang.org/protobuf/cmd/protoc-gen-go,$(PROTOC_GEN_GO_VERSION)))
$(eval $(call go-tool,protoc-gen-go-grpc,google.golang.org/grpc/cmd/protoc-gen-go-grpc,$(PROTOC_GEN_GO_GRPC_VERSION)))
$(eval $(call go-tool,protoc-gen-grpc-gateway,github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway,$(GRPC_GATEWAY_VERSION)))
$(eval $(call go-tool,protoc-gen-openapiv2,github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2,$(GRPC_GATEWAY_VERSION)))
PROTO_TOOLS := $(TOOL_BINS)

# The Go linter of `make lint` (part of `make test`), pinned the same way.
STATICCHECK_VERSION := v0.8.2
$(eval $(call go-tool,staticcheck,honnef.co/go/tools/cmd/staticcheck,$(STATICCHECK_VERSION)))

.PHONY: tools
tools: $(TOOL_BINS) ## Install the pinned buf, protoc plugins and staticcheck into .local/bin

.PHONY: proto
proto: $(PROTO_TOOLS) ## Lint proto/ and regenerate gen/ with buf (local plugins, no network)
	$(LOCAL_BIN)/buf lint
	PATH="$(LOCAL_BIN):$$PATH" $(LOCAL_BIN)/buf generate

.PHONY: proto-lint
proto-lint: $(LOCAL_BIN)/buf ## Lint proto/ with buf
	$(LOCAL_BIN)/buf lint

##@ Build and run

.PHONY: build
build: ## Build the services (keytrail, simulator) into .local/bin
	@mkdir -p $(LOCAL_BIN)
	$(GO) build -o $(LOCAL_BIN)/ ./services/...

.PHONY: run
run: ## Run keytrail locally with a local ClickHouse and demo traffic
	$(CURDIR)/deploy/local/run.sh

##@ Web console (query/console/web: sources in src/, the bundle in dist/ is committed)

# node_modules follows package-lock.json exactly (npm ci), re-installed only when the lock changes.
$(CONSOLE_WEB)/node_modules/.ci-stamp: $(CONSOLE_WEB)/package-lock.json
	$(CONSOLE_INSTALL) node
	cd $(CONSOLE_WEB) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

.PHONY: console
console: $(CONSOLE_WEB)/node_modules/.ci-stamp ## Rebuild the console's bundle (query/console/web/dist) from its sources; commit the result
	cd $(CONSOLE_WEB) && node build.mjs dist

.PHONY: console-check
console-check: $(CONSOLE_WEB)/node_modules/.ci-stamp ## Fail when the committed console bundle differs from a build of its sources
	@rm -rf $(CURDIR)/.local/console-check
	@cd $(CONSOLE_WEB) && node build.mjs $(CURDIR)/.local/console-check
	@diff -r $(CONSOLE_WEB)/dist $(CURDIR)/.local/console-check >/dev/null || { \
		echo "query/console/web/dist does not match its sources: run 'make console' and commit dist/" >&2; exit 1; }
	@echo "console bundle matches its sources"

.PHONY: console-screenshots
console-screenshots: ## Run the browser test and keep its screenshots in docs/console
	$(CLICKHOUSE) start
	$(CONSOLE_INSTALL) chromium
	KEYTRAIL_CONSOLE_SCREENSHOTS=$(CURDIR)/docs/console $(GO) test -count=1 -run TestConsoleInBrowser ./query/console/

##@ Local ClickHouse (18.16, project-local process; see deploy/clickhouse/local.sh)

.PHONY: clickhouse-start
clickhouse-start: ## Install if needed and start the local ClickHouse (tcp 127.0.0.1:19000 by default)
	$(CLICKHOUSE) start

.PHONY: clickhouse-stop
clickhouse-stop: ## Stop the local ClickHouse started from this repo
	$(CLICKHOUSE) stop

##@ Checks

.PHONY: test
test: ## What CI runs: every static check (make check), go test everything against the local ClickHouse, then the cluster tests (make test-cluster)
	$(MAKE) check
	$(MAKE) test-go
	$(MAKE) test-cluster

.PHONY: test-go
test-go: ## Start the local ClickHouse (and install Chromium), then go test PKGS, without the static checks (the quick loop)
	$(CLICKHOUSE) start
	$(CONSOLE_INSTALL) chromium
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(TEST_FLAGS) $(PKGS)

.PHONY: check
check: lint proto-check openapi-lint console-check ## The static checks: gofmt, go vet, staticcheck, buf lint, gen/ matches proto/, buf breaking, OpenAPI lint, console bundle

.PHONY: lint
lint: $(LOCAL_BIN)/staticcheck ## gofmt (every Go file, generated code included), go vet and the pinned staticcheck over PKGS
	@unformatted=$$("$$($(GO) env GOROOT)/bin/gofmt" -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "not gofmt'd (run gofmt -w):"; echo "$$unformatted"; exit 1; fi
	$(GO) vet $(PKGS)
	$(LOCAL_BIN)/staticcheck $(PKGS)

.PHONY: proto-check
proto-check: $(PROTO_TOOLS) ## buf lint; gen/ is what make proto makes of proto/; buf breaking against the baseline commit
	$(LOCAL_BIN)/buf lint
	$(CURDIR)/tools/check-gen.sh
	$(CURDIR)/tools/buf-breaking.sh

.PHONY: openapi-lint
openapi-lint: ## Lint the OpenAPI document with the pinned Redocly CLI (tools/openapi-lint)
	$(CURDIR)/tools/openapi-lint/run.sh
.PHONY: test-cluster
test-cluster: $(LOCAL_BIN)/staticcheck ## Start a loopback cluster (ZooKeeper, 2x2 ClickHouse, 3 NATS; deploy/cluster/local.sh) and run the cluster tests against it
	$(CLICKHOUSE) install
	$(GO) vet -tags cluster ./internal/clustertest/
	$(LOCAL_BIN)/staticcheck -tags cluster ./internal/clustertest/
	$(GO) test -tags cluster -count=1 -v -timeout $(TEST_TIMEOUT) $(TEST_FLAGS) ./internal/clustertest/

# Benchmark knobs: `BENCH_SCALE=0.05 make bench` (1 = full scale, about an hour here; 0.01 a few
# minutes), BENCH_PHASES=drain,query to run some phases only. See docs/benchmarks.md.
BENCH_SCALE ?= 1
BENCH_PHASES ?=

.PHONY: bench
bench: ## Start the local ClickHouse, run the benchmark harness (BENCH_SCALE=0.05 for a short run); table on stdout, bench-results.json
	$(CLICKHOUSE) start
	@mkdir -p $(LOCAL_BIN)
	$(GO) build -o $(LOCAL_BIN)/keytrail-bench ./bench/cmd/keytrail-bench
	$(LOCAL_BIN)/keytrail-bench -scale $(BENCH_SCALE) -phases '$(BENCH_PHASES)' -out $(CURDIR)/bench-results.json

# The load test alone: `make loadtest` (BENCH_SCALE=0.01 by default: a 1M-event history).
LOAD_SCALE ?= 0.01

.PHONY: loadtest
loadtest: ## Load phase only: open-loop load on a `keytrail -role query` process; sustainable rate and 3x it (LOAD_SCALE=0.01); bench-load.json
	$(CLICKHOUSE) start
	@mkdir -p $(LOCAL_BIN)
	$(GO) build -o $(LOCAL_BIN)/keytrail-bench ./bench/cmd/keytrail-bench
	$(LOCAL_BIN)/keytrail-bench -scale $(LOAD_SCALE) -phases load -out $(CURDIR)/bench-load.json

##@ Housekeeping

.PHONY: clean
clean: ## Stop the local ClickHouse and remove .local (tools, binaries, ClickHouse data)
	$(CLICKHOUSE) stop
	rm -rf $(CURDIR)/.local

.PHONY: help
help: ## List the targets
	@awk 'BEGIN { FS = ":.*## "; print "Usage: make <target>" } \
		/^##@ / { printf "\n%s\n", substr($$0, 5) } \
		/^[a-zA-Z0-9_.-]+:.*## / { printf "  %-18s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
