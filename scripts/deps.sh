#!/usr/bin/env bash
# Installs what Perch needs on a Debian machine, only what is missing:
# runc, iproute2, nats-server, skopeo from Debian; crane and staticcheck
# from the Go module proxy. Sourced by demo.sh and test.sh.
set -euo pipefail

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "perch: this needs root (runc, network namespaces, apt-get); re-running with sudo" >&2
    exec sudo -E env "PATH=$PATH" "$0" "$@"
  fi
}

install_debs() {
  local missing=()
  command -v runc >/dev/null || missing+=(runc)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v nats-server >/dev/null || missing+=(nats-server)
  command -v skopeo >/dev/null || missing+=(skopeo)
  command -v curl >/dev/null || missing+=(curl)
  command -v git >/dev/null || missing+=(git)
  command -v gcc >/dev/null || missing+=(gcc)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "perch: installing ${missing[*]} from Debian" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

ensure_go() {
  export PATH="$PATH:/usr/local/go/bin:$(go env GOPATH 2>/dev/null || echo /root/go)/bin"
  if ! command -v go >/dev/null; then
    echo "perch: Go is not installed; install Go 1.26 (https://go.dev/dl) and run this again" >&2
    exit 1
  fi
  export PATH="$PATH:$(go env GOPATH)/bin"
}

install_go_tools() {
  command -v crane >/dev/null || go install github.com/google/go-containerregistry/cmd/crane@v0.22.1
  command -v staticcheck >/dev/null || go install honnef.co/go/tools/cmd/staticcheck@latest
}
