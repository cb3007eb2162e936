#!/usr/bin/env bash
# Measures the agent's metering overhead (issue 12); needs nats-server on PATH.
set -euo pipefail
cd "$(dirname "$0")/../.."
go run ./bench/metering "$@"
