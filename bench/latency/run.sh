#!/usr/bin/env bash
# The latency demo (issue 4): a dev world with every region of regions.tsv
# and simulated fiber latency between them; the sample app first in iad
# only, then in every region; for a client in each city, time to first byte
# through that city's edge before and after, and the memory of each idle
# host. Writes bench/latency/results.md. The world lives in a temporary
# directory and is torn down on exit, however the script ends.
# Usage: ./bench/latency/run.sh [requests per city]
#   env: REGIONS=all  ACCESS=1ms (client to its edge, one way)
#        INFLATION=1.5 (fiber route inflation)  LATENCY=on (off: hosts 0 ms apart)
#        EDGE_BASE=127.0.9.1; REGIONS must include iad, where the app starts
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/deps.sh
need_root "$@"
install_debs
ensure_go
install_go_tools

n=${1:-20}
regions=${REGIONS:-all}
access=${ACCESS:-1ms}
inflation=${INFLATION:-1.5}
latency_sim=${LATENCY:-on}
# Not the default 127.0.1.1, so a world started by demo.sh may keep running.
edge_base=${EDGE_BASE:-127.0.9.1}

echo "== building perch and the benchmark"
mkdir -p bin
go build -o bin/perch ./cmd/perch
go build -o bin/latency ./bench/latency
perch=$PWD/bin/perch
latency=$PWD/bin/latency
results=$PWD/bench/latency/results.md

work=$(mktemp -d /tmp/perch-latency.XXXXXX)
dir=$work/world
devpid=
teardown() {
  local rc=$?
  if [ -n "$devpid" ] && kill -0 "$devpid" 2>/dev/null; then
    echo "== stopping the world"
    kill -TERM "$devpid" 2>/dev/null || true
    wait "$devpid" 2>/dev/null || true
  fi
  # perch dev up died without cleaning up: do it for it.
  if [ -f "$dir/world.json" ]; then "$perch" dev down --dir "$dir" || true; fi
  if [ "$rc" = 0 ]; then rm -rf "$work"; else echo "failed; logs kept in $dir/logs and $work/dev.log" >&2; fi
}
trap teardown EXIT
trap 'exit 130' INT TERM

world_flags=()
if ! "$perch" dev up --help | grep -q -- '--latency'; then
  world_note="NO simulated latency: this perch has no \`dev up --latency\` flag, so hosts are 0 ms apart"
  echo "warning: $world_note" >&2
elif [ "$latency_sim" = off ]; then
  world_flags=(--latency=false)
  world_note="simulated latency off (LATENCY=off): hosts are 0 ms apart"
else
  world_flags=(--latency=true --route-inflation "$inflation")
  world_note="simulated fiber latency between hosts on (route inflation $inflation)"
fi

echo "== perch dev up --regions $regions${world_flags[*]:+ ${world_flags[*]}}"
"$perch" dev up --regions "$regions" --dir "$dir" --api 127.0.0.1:0 --edge-base "$edge_base" "${world_flags[@]}" >"$work/dev.log" 2>&1 &
devpid=$!
for _ in $(seq 1 3000); do
  [ -f "$dir/world.json" ] && break
  kill -0 "$devpid" 2>/dev/null || { cat "$work/dev.log"; exit 1; }
  sleep 0.1
done
[ -f "$dir/world.json" ] || { echo "the dev world did not come up in 5 minutes; see $work/dev.log" >&2; exit 1; }
eval "$("$latency" env -world "$dir")"
export PERCH_API_URL PERCH_API_TOKEN
count=$(tr ',' '\n' <<<"$WORLD_REGIONS" | wc -l)
echo "world up: $count regions ($WORLD_REGIONS)"
grep -qx iad <(tr ',' '\n' <<<"$WORLD_REGIONS") || { echo "the app starts in iad: REGIONS must include iad" >&2; exit 1; }

echo "== waiting for the mesh to measure every pair, then the idle hosts' memory"
"$latency" settle -world "$dir"
"$latency" memory -world "$dir" -out "$work/memory.json"

echo "== pushing the sample app (examples/hello) with crane"
mkdir -p "$work/rootfs" "$work/app"
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$work/rootfs/app" ./examples/hello
tar -C "$work/rootfs" -cf "$work/layer.tar" app
export DOCKER_CONFIG="$work/docker"
crane auth login "$REGISTRY" -u perch -p "$PERCH_API_TOKEN" >/dev/null 2>&1
crane append -f "$work/layer.tar" -t "$REGISTRY/hello:v1" >/dev/null 2>&1
image=$(crane mutate "$REGISTRY/hello:v1" --entrypoint /app 2>/dev/null)

echo "== the app in iad only"
cd "$work/app"
"$perch" launch --image "$image" --regions iad --name hello >/dev/null
"$perch" deploy
"$latency" wait -world "$dir" -from iad
"$latency" measure -world "$dir" -phase before -n "$n" -access "$access" -out "$work/before.json"

echo "== the app in every region, one machine each"
others=$(tr ',' '\n' <<<"$WORLD_REGIONS" | grep -vx iad | paste -sd, -)
t0=$(date +%s.%N)
"$perch" scale count 1 --region "$others" --yes
"$latency" wait -world "$dir" -from own
scaled=$(awk "BEGIN {print $(date +%s.%N) - $t0}")
"$latency" measure -world "$dir" -phase after -n "$n" -access "$access" -out "$work/after.json"
PERCH_API_TOKEN="$(cat "$dir/server/admin-token")" "$perch" hosts >"$work/hosts.txt"
cd - >/dev/null

{
  echo "# Latency demo: the app in iad, then in every region (issue 4)"
  echo
  echo "Command: \`./bench/latency/run.sh $n\` (REGIONS=$regions ACCESS=$access INFLATION=$inflation LATENCY=$latency_sim), $(date -u +%F)."
  echo "Machine: $(nproc) CPUs, $(free -g | awk '/^Mem:/ {print $2}') GiB, $(uname -r)."
  echo "World: \`perch dev up --regions $regions${world_flags[*]:+ ${world_flags[*]}}\`, $count regions, $world_note."
  echo "App: examples/hello, 1 machine in iad; then \`perch scale count 1\` in the other $((count - 1)) regions,"
  printf "every edge had its own region's machine in its route table %.1f s after the command started.\n\n" "$scaled"
  "$latency" report -before "$work/before.json" -after "$work/after.json" -memory "$work/memory.json"
  echo
  echo "The hosts and their round-trip times over the mesh at the end of the run (\`perch hosts\`):"
  echo
  echo '```'
  cat "$work/hosts.txt"
  echo '```'
} >"$work/results.md"
cp "$work/results.md" "$results"
cat "$results"
echo "== written to bench/latency/results.md"
