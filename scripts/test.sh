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
# Races with nats-server's sampler by design, so skipped under -race.
go test -count=1 -run '^TestQuietNATSSampler$' ./internal/store
echo "== fuzz (bounded)"
# Bounded by executions, not seconds: with -fuzztime as a duration, Go 1.26's
# fuzz coordinator can fail a target with a bare "context deadline exceeded"
# at the deadline though it found nothing (go.dev/issue/75804, fixed in 1.27;
# it failed FuzzClientHello on CI). The counts take about 5-15 s each here.
fuzz() { go test -run '^$' -fuzz "$1" -fuzztime "$2" -fuzzminimizetime 200x "$3"; }
fuzz FuzzUnpack 5000x ./internal/image
fuzz FuzzParse 60000x ./internal/config
fuzz '^FuzzClientHello$' 5000x ./internal/edge
fuzz '^FuzzHostRouting$' 25000x ./internal/edge
fuzz '^FuzzParseReplay$' 10000x ./internal/edge
fuzz '^FuzzGuardPieces$' 20000x ./internal/edge
fuzz '^FuzzHeadAgainstNetHTTP$' 30000x ./internal/edge
fuzz '^FuzzRead$' 300000x ./internal/proxyproto
fuzz '^FuzzWrite$' 400000x ./internal/proxyproto
fuzz FuzzCheckHostname 15000x ./internal/certs
