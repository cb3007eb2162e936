#!/usr/bin/env bash
# Installs what Perch needs on a Debian machine, only what is missing:
# runc, iproute2, nftables, nats-server, skopeo, tcpdump (the mesh test captures the
# wire), bird2 (the anycast test's routers), and for microVMs qemu and e2fsprogs
# from Debian, with Debian's cloud kernel unpacked as the guest kernel;
# crane and staticcheck from the Go module proxy. Sourced by demo.sh,
# test.sh and bench/run.sh.
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
  command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
  command -v qemu-img >/dev/null || missing+=(qemu-utils)
  command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
  command -v tcpdump >/dev/null || missing+=(tcpdump)
  # Network isolation: each host's rules for its machines (hostnet/policy.go).
  command -v nft >/dev/null || missing+=(nftables)
  # Real images for the tests are built from Debian packages, and spoken
  # to with real clients.
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v psql >/dev/null || missing+=(postgresql-client)
  command -v redis-cli >/dev/null || missing+=(redis-tools)
  # Anycast: the test internet's routers (internal/anycast, docs/anycast.md).
  command -v bird >/dev/null || missing+=(bird2)
  # perch dev up --anycast: the fiber delay between routers, measured by ping.
  command -v ping >/dev/null || missing+=(iputils-ping)
  # perch deploy's builder test makes its base image from busybox.
  [ -x /bin/busybox ] || missing+=(busybox-static)
  # The dashboard's browser test (internal/ui) drives headless Chromium.
  command -v chromium >/dev/null || missing+=(chromium)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "perch: installing ${missing[*]} from Debian" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  install_guest_kernel
  install_criu
}

# CRIU, for suspending runc machines (docs/suspend.md). Debian 12's criu
# 3.17 fails `criu check` on 6.x kernels (vDSO layout), so when the
# installed criu does not pass it, CRIU 4.x is built from Debian trixie's
# source package (a deb-src entry in a sources file of its own), with
# scripts/patches/criu-*.patch applied, and installed to /usr/local/sbin.
# Suspend is optional: a failure here is reported, not fatal.
install_criu() {
  if command -v criu >/dev/null && criu check >/dev/null 2>&1; then
    return 0
  fi
  local patches
  patches=$(cd "$(dirname "${BASH_SOURCE[0]}")/patches" && pwd)
  echo "perch: building CRIU from Debian trixie's source (criu check fails or criu is missing)" >&2
  (
    set -e
    local src=/etc/apt/sources.list.d/perch-trixie-src.sources
    if [ ! -f "$src" ]; then
      cat >"$src" <<'SOURCES'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    fi
    apt-get update -qq
    # apt-get build-dep criu wants trixie's debhelper and python tooling;
    # these are the libraries and tools the criu binary itself needs.
    if ! DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -qq --no-install-recommends criu >/dev/null 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        make gcc pkgconf libbsd-dev libcap-dev libgnutls28-dev libnet1-dev libnftables-dev \
        libnl-3-dev libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler protobuf-compiler \
        uuid-dev python3-protobuf iptables >/dev/null
    fi
    local tmp
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    cd "$tmp"
    # The orig tarball is enough: the Debian packaging is not used.
    apt-get source -qq --download-only -o APT::Sandbox::User=root criu >/dev/null 2>&1 || true
    ls criu_*.orig.tar.* >/dev/null 2>&1 || { echo "perch: could not fetch CRIU's source from trixie" >&2; exit 1; }
    tar xf criu_*.orig.tar.*
    cd criu-*/
    for p in "$patches"/criu-*.patch; do
      patch -p1 <"$p" >/dev/null
    done
    make -j"$(nproc)" criu >/dev/null
    install -m 0755 criu/criu /usr/local/sbin/criu
  ) || { echo "perch: could not build CRIU; machines cannot be suspended (they are stopped instead)" >&2; return 0; }
  if command -v apt-get >/dev/null && dpkg -s criu >/dev/null 2>&1; then
    apt-get remove -y -qq criu >/dev/null 2>&1 || true # /usr/sbin/criu would shadow nothing, but is broken here
  fi
  /usr/local/sbin/criu check >/dev/null 2>&1 || echo "perch: the built CRIU fails criu check on this kernel; suspend will fall back to stop" >&2
}

# The microVMs' guest kernel: Debian's cloud kernel, fetched with apt-get
# download and unpacked (not installed: the host keeps its own kernel) as
# $PERCH_KERNEL_DIR/vmlinuz with its config and its modules under modules/, where the
# agent looks by default (docs/microvm.md says how to use another).
install_guest_kernel() {
  local dir=${PERCH_KERNEL_DIR:-/usr/local/lib/perch/kernel}
  [ -f "$dir/vmlinuz" ] && return 0
  [ "$(dpkg --print-architecture 2>/dev/null)" = amd64 ] || { echo "perch: not an amd64 Debian host; no guest kernel for microVMs" >&2; return 0; }
  local pkg
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
  if [ -z "$pkg" ]; then
    apt-get update -qq
    pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
  fi
  echo "perch: fetching $pkg as the microVM guest kernel into $dir" >&2
  local tmp ver=${pkg#linux-image-}
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$pkg")
  dpkg-deb -x "$tmp"/*.deb "$tmp/x"
  mkdir -p "$tmp/kernel"
  cp "$tmp/x/boot/vmlinuz-$ver" "$tmp/kernel/vmlinuz"
  cp "$tmp/x/boot/config-$ver" "$tmp/kernel/config"
  cp -a "$tmp/x/lib/modules/$ver" "$tmp/kernel/modules"
  echo "$pkg" >"$tmp/kernel/VERSION"
  mkdir -p "$(dirname "$dir")"
  rm -rf "$dir"
  mv "$tmp/kernel" "$dir"
  rm -rf "$tmp"
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

# BuildKit's buildkitd (perch deploy's builder, docs/builds.md) and buildctl
# (bench/build.sh) are not packaged in Debian 12: they are built from the
# module at the version go.mod pins into /usr/local/lib/perch/bin
# (internal/build.BinDir). `go install pkg@version` refuses the module
# (its go.mod has exclude directives), so it is built in a copy of it.
BUILDKIT_VERSION=v0.34.2
install_buildkit() {
  local bin=/usr/local/lib/perch/bin
  if [ -x "$bin/buildkitd" ] && [ -x "$bin/buildctl" ] &&
    "$bin/buildkitd" --version 2>/dev/null | grep -q " $BUILDKIT_VERSION "; then
    return 0
  fi
  echo "perch: building buildkitd and buildctl $BUILDKIT_VERSION (a few minutes, once)" >&2
  local src tmp
  src=$(cd / && go mod download -json "github.com/moby/buildkit@$BUILDKIT_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  tmp=$(mktemp -d)
  cp -r "$src/." "$tmp" && chmod -R u+w "$tmp"
  mkdir -p "$bin"
  (cd "$tmp" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-X github.com/moby/buildkit/version.Version=$BUILDKIT_VERSION" -o "$bin/" ./cmd/buildkitd ./cmd/buildctl)
  rm -rf "$tmp"
}
