#!/usr/bin/env bash
# The edge benchmark: wrk against the app, the Perch edge, nginx and Caddy in
# one run. Installs wrk and nginx (Debian) and Caddy (go install) if missing.
# Usage: ./bench/edge/run.sh [seconds per run [more bench/edge flags: -cpuprofile-fast F, -base-bin B, -only, -modes]]
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/deps.sh
need_root "$@"
install_debs
ensure_go
command -v wrk >/dev/null || { apt-get update -qq; apt-get install -y -qq wrk >/dev/null; }
command -v nginx >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; systemctl stop nginx 2>/dev/null || pkill nginx || true; }
command -v caddy >/dev/null || go install github.com/caddyserver/caddy/v2/cmd/caddy@v2.11.9
mkdir -p bin
CGO_ENABLED=0 go build -o bin/hello ./examples/hello
go run ./bench/edge -app bin/hello -caddy "$(command -v caddy)" -d "${1:-10}s" "${@:2}"
