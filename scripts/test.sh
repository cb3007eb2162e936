#!/usr/bin/env bash
# Runs every check and test: gofmt, go vet, staticcheck, the unit tests and
# the end-to-end tests with real NATS, runc, the registry and agents.
# Installs what is missing first. Usage: ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_root "$@"
install_debs
ensure_go
install_go_tools
install_buildkit # perch deploy's builder (docs/builds.md); the demo deploys an image and needs none

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt would change: $unformatted"; exit 1; fi
echo "== go vet"
go vet ./...
echo "== staticcheck"
staticcheck ./...
echo "== go test"
go test -race -count=1 -timeout 30m ./...
echo "== fuzz (bounded)"
go test -run '^$' -fuzz FuzzUnpack -fuzztime 15s ./internal/image
go test -run '^$' -fuzz FuzzParse -fuzztime 15s ./internal/config
go test -run '^$' -fuzz '^FuzzClientHello$' -fuzztime 10s ./internal/edge
go test -run '^$' -fuzz '^FuzzHostRouting$' -fuzztime 10s ./internal/edge
go test -run '^$' -fuzz '^FuzzParseReplay$' -fuzztime 5s ./internal/edge
go test -run '^$' -fuzz '^FuzzRead$' -fuzztime 10s ./internal/proxyproto
go test -run '^$' -fuzz '^FuzzWrite$' -fuzztime 10s ./internal/proxyproto
go test -run '^$' -fuzz FuzzCheckHostname -fuzztime 10s ./internal/certs
