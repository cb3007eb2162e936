# Perch's make targets; `make help` lists them.
.DEFAULT_GOAL := help
GO ?= go

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

build: ## build bin/perch, and bin/perch-init, the slim microVM guest init it uses when beside it
	$(GO) build -o bin/perch ./cmd/perch
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/perch-init ./internal/runtime/microvm/guestinit/perchinit

check: ## gofmt, go vet, staticcheck and all tests (what CI runs)
	./scripts/test.sh

test: ## the Go tests only (root runs the end-to-end ones too)
	$(GO) test -count=1 ./...

demo: ## a dev world with three regions and the sample app deployed
	./scripts/demo.sh

bench: ## deploy, machine-start and microVM boot benchmarks, results in bench/README.md
	./bench/run.sh

bench-edge: ## the edge against nginx and Caddy (wrk), results in bench/README.md
	./bench/edge/run.sh

.PHONY: help build check test demo bench bench-edge bench-edge
