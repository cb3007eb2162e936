#!/usr/bin/env bash
# The main job on one machine: installs what is missing, starts a dev world
# with three regions, builds the sample app image, pushes it with crane,
# deploys it with the three perch commands and shows each region's edge
# answering from its own region. Ctrl-C stops the world (DEMO_EXIT=1 stops
# it right after the demo). ANYCAST=1 builds the world in an anycast lab
# (perch dev up --anycast: a bird2 router and a client per city), gives
# the app a dedicated IPv4 and curls it from every city's client.
# Usage: ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_root "$@"
install_debs
ensure_go
install_go_tools

regions=${REGIONS:-iad,ams,sin}
dir=${PERCH_DEV_DIR:-$HOME/.local/state/perch/dev}
work=$(mktemp -d)
mkdir -p bin
echo "== building perch"
go build -o bin/perch ./cmd/perch
# The slim guest init microVMs boot with when it is beside perch (the whole
# perch binary otherwise: larger, slower to boot).
CGO_ENABLED=0 go build -trimpath -o bin/perch-init ./internal/runtime/microvm/guestinit/perchinit
perch="$PWD/bin/perch"

if [ -f "$dir/world.json" ]; then "$perch" dev down --dir "$dir" || true; fi
anycast=()
[ "${ANYCAST:-0}" = 1 ] && anycast=(--anycast)
echo "== perch dev up --regions $regions ${anycast[*]}"
"$perch" dev up --regions "$regions" --dir "$dir" "${anycast[@]}" >"$work/dev.log" 2>&1 &
devpid=$!
stop_world() { kill -TERM "$devpid" 2>/dev/null && wait "$devpid" 2>/dev/null; rm -rf "$work"; }
trap stop_world EXIT
trap 'exit 130' INT TERM
for _ in $(seq 1 600); do
  [ -f "$dir/world.json" ] && break
  kill -0 "$devpid" 2>/dev/null || { cat "$work/dev.log"; exit 1; }
  sleep 0.1
done
[ -f "$dir/world.json" ] || { echo "the dev world did not come up; see $work/dev.log"; cat "$work/dev.log"; exit 1; }
grep -E '^(control plane|region)' "$work/dev.log" || true

"$perch" auth login --dev "$dir"
registry=$(sed -n 's/.*"registry": "\(.*\)".*/\1/p' "$dir/world.json")
token=$(sed -n 's/.*"token": "\(.*\)".*/\1/p' "$dir/world.json")
# world.json's token is the world organisation's; hosts are the operator's.
admin=$(cat "$dir/server/admin-token")

echo "== building the sample app image (examples/hello) and pushing it with crane"
mkdir -p "$work/rootfs"
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$work/rootfs/app" ./examples/hello
tar -C "$work/rootfs" -cf "$work/layer.tar" app
export DOCKER_CONFIG="$work/docker"
crane auth login "$registry" -u perch -p "$token" >/dev/null 2>&1
crane append -f "$work/layer.tar" -t "$registry/hello:v1" >/dev/null 2>&1
image=$(crane mutate "$registry/hello:v1" --entrypoint /app 2>/dev/null)
echo "pushed $image"

echo "== perch launch && perch deploy"
mkdir -p "$work/app" && cd "$work/app"
# A world started before in this directory keeps its apps: start afresh.
"$perch" apps destroy hello --yes >/dev/null 2>&1 || true
"$perch" launch --image "$registry/hello:v1" --regions "$regions" --name hello
if [ ${#anycast[@]} -gt 0 ]; then
  addr=$("$perch" ips allocate-v4 | grep -oE '192\.0\.2\.[0-9]+' | head -1)
  echo "dedicated IPv4 $addr (announced over BGP by every region's host)"
fi
"$perch" deploy
"$perch" status

echo "== each region's edge answers from its own region"
for r in ${regions//,/ }; do
  edge=$(grep -A1 "\"code\": \"$r\"" "$dir/world.json" | sed -n 's/.*"edge_addr": "\(.*\)".*/\1/p')
  printf '%s edge %-10s -> ' "$r" "$edge"
  curl -sS --max-time 5 -H "Host: hello.perch.local" "http://$edge/"
done

if [ ${#anycast[@]} -gt 0 ]; then
  echo "== from each city's client, the app's own address $addr: the nearest region answers"
  for r in ${regions//,/ }; do
    printf '%s client -> ' "$r"
    for _ in $(seq 50); do
      "$perch" dev exec --dir "$dir" --from "$r" -- curl -sS --max-time 5 -H "Host: hello.perch.local" "http://$addr/" 2>/dev/null && break
      sleep 0.2
    done
  done
fi

echo "== and over https, with the dev world's own CA ($dir/ca.pem)"
first=$(sed -n 's/.*"edge_addr": "\(.*\)".*/\1/p' "$dir/world.json" | head -1)
curl -sS --max-time 5 --cacert "$dir/ca.pem" --resolve "hello.perch.local:443:$first" https://hello.perch.local/

echo "== the hosts and their round trips over the WireGuard mesh (simulated fiber latency)"
# Wait until every host has measured every other (a few probes each).
matrix_done() {
  PERCH_API_TOKEN="$admin" "$perch" hosts | awk '/^Round-trip/ {m=1; getline; next} m && NF {n=0; for (i=1; i<=NF; i++) if ($i == "-") n++; if (n != 1) bad=1; rows++} END {exit !(rows > 0 && !bad)}'
}
for _ in $(seq 40); do matrix_done && break; sleep 1; done
sleep 5 # the median of the first probes includes the handshakes
PERCH_API_TOKEN="$admin" "$perch" hosts

if [ "${DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
echo
echo "The world keeps running: try $perch status -a hello, or curl -H 'Host: hello.perch.local' http://127.0.1.2/"
echo "Press Ctrl-C to stop it (nothing is left behind)."
wait "$devpid"
