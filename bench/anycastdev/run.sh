#!/usr/bin/env bash
# perch dev up --anycast: the round trip from each city's client to an
# app's dedicated address, without and with the fiber delay between the
# lab's routers (--latency=false, then the default x1.5), and the region
# that answers each city. Needs root, bird2, crane, ping and curl
# (scripts/deps.sh). Usage: ./bench/anycastdev/run.sh (bench/README.md
# records its output)
set -euo pipefail
cd "$(dirname "$0")/../.."
regions=${REGIONS:-iad,ams,sin}
clients=${CLIENTS:-syd,gru,jnb}
work=$(mktemp -d)
trap 'for d in "$work"/w-*; do [ -f "$d/world.json" ] && bin/perch dev down --dir "$d" >/dev/null 2>&1; done; rm -rf "$work"' EXIT
mkdir -p bin
go build -o bin/perch ./cmd/perch
mkdir -p "$work/rootfs"
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$work/rootfs/app" ./examples/hello
tar -C "$work/rootfs" -cf "$work/layer.tar" app
for latency in false true; do
  dir="$work/w-$latency"
  bin/perch dev up --anycast --latency="$latency" --regions "$regions" --anycast-clients "$clients" --dir "$dir" --api 127.0.0.1:0 >"$work/up-$latency.log" 2>&1 &
  for _ in $(seq 1 900); do [ -f "$dir/world.json" ] && break; sleep 0.1; done
  [ -f "$dir/world.json" ] || { cat "$work/up-$latency.log"; exit 1; }
  registry=$(sed -n 's/.*"registry": "\(.*\)".*/\1/p' "$dir/world.json")
  token=$(sed -n 's/.*"token": "\([^"]*\)".*/\1/p' "$dir/world.json" | head -1)
  api=$(sed -n 's/.*"api_url": "\(.*\)".*/\1/p' "$dir/world.json")
  export DOCKER_CONFIG="$work/docker" PERCH_API_URL="$api" PERCH_API_TOKEN="$token"
  crane auth login "$registry" -u perch -p "$token" --insecure >/dev/null 2>&1
  crane append --insecure -f "$work/layer.tar" -t "$registry/hello:v1" >/dev/null 2>&1
  image=$(crane mutate --insecure "$registry/hello:v1" --entrypoint /app 2>/dev/null)
  mkdir -p "$work/app-$latency" && cd "$work/app-$latency"
  "$OLDPWD/bin/perch" launch --image "$image" --regions "$regions" --name hello >/dev/null
  addr=$("$OLDPWD/bin/perch" ips allocate-v4 | grep -oE '192\.0\.2\.[0-9]+' | head -1)
  "$OLDPWD/bin/perch" deploy --smoke-window 0 >/dev/null
  cd "$OLDPWD"
  grep '^link ' "$work/up-$latency.log" | tr '\n' ';'; echo
  for city in ${regions//,/ } ${clients//,/ }; do
    answer=""
    for _ in $(seq 1 100); do
      answer=$(bin/perch dev exec --dir "$dir" --from "$city" -- curl -sS --max-time 5 -H 'Host: hello.perch.local' "http://$addr/" 2>/dev/null || true)
      [ -n "$answer" ] && break
      sleep 0.2
    done
    rtt=$(bin/perch dev exec --dir "$dir" --from "$city" -- ping -n -q -c 5 -i 0.2 "$addr" | sed -n 's/.*= \([0-9.]*\)\/\([0-9.]*\)\/.*/min \1 ms, avg \2 ms/p')
    printf 'latency=%-5s from %-4s ping %s: %s; answered: %s\n' "$latency" "$city" "$addr" "$rtt" "${answer:-none}"
  done
  bin/perch dev down --dir "$dir" >/dev/null
done
