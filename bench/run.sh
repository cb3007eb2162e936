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
go run ./bench/foundation -perch bin/perch -n "${1:-10}"
