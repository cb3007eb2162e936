#!/usr/bin/env bash
# perch deploy's build against BuildKit's own buildctl (issue 15).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/deps.sh
need_root "$@"
install_debs
ensure_go
install_go_tools
go run ./bench/build "$@"
