#!/usr/bin/env bash
# Runs Perch's benchmarks on this machine and prints the results that
# bench/README.md records. Needs root. Usage: ./bench/run.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_root "$@"
install_debs
ensure_go
go build -o bin/perch ./cmd/perch
CGO_ENABLED=0 go build -trimpath -o bin/perch-init ./internal/runtime/microvm/guestinit/perchinit
go run ./bench/foundation -perch bin/perch -n "${1:-10}"
go run ./bench/microvm -perch bin/perch -n "${1:-10}"
go run ./bench/idle -perch bin/perch
go run ./bench/suspend -perch bin/perch -n 7
go run ./bench/suspend -perch bin/perch -n 5 -runtime microvm
go run ./bench/autostart -perch bin/perch -n 7
go run ./bench/autoscale
go run ./bench/autoscale -window 5m
go run ./bench/metering
go run ./bench/agentkill -perch bin/perch -n 5
go run ./bench/anycast -n 5
go run ./bench/volume -perch bin/perch -n 9 -vm-rounds 3
