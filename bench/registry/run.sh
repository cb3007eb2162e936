#!/bin/sh
# Push and pull of a ~50 MiB image (one incompressible layer) with crane
# against one `perch server`, three rounds each, a new image each round
# (crane's tarball made before the clock starts).
# Usage: bench/registry/run.sh PERCH_BINARY [ROUNDS]
set -eu
bin=$1
rounds=${2:-3}
tmp=$(mktemp -d)
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$tmp"' EXIT
port=$((20000 + $$ % 10000))
"$bin" server --data-dir "$tmp/data" --listen 127.0.0.1:$port --nats-listen 127.0.0.1:$((port + 1)) --no-mesh >"$tmp/server.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
	[ -s "$tmp/data/admin-token" ] && curl -fs -o /dev/null -H "Authorization: Bearer $(cat "$tmp/data/admin-token")" http://127.0.0.1:$port/v1/apps && break
	sleep 0.2
done
export PERCH_TOKEN
PERCH_TOKEN=$(cat "$tmp/data/admin-token")
crane auth login -u x -p "$PERCH_TOKEN" 127.0.0.1:$port >/dev/null 2>&1
ms() { date +%s%3N; }
for i in $(seq "$rounds"); do
	# A new layer each round: the registry has none of its blobs.
	head -c $((50 << 20)) /dev/urandom >"$tmp/blob"
	tar -C "$tmp" -cf "$tmp/layer.tar" blob
	crane append --oci-empty-base -f "$tmp/layer.tar" -t bench/app:v1 -o "$tmp/image.tar" >/dev/null 2>&1
	t0=$(ms)
	crane push --insecure "$tmp/image.tar" 127.0.0.1:$port/app$i:v1 >/dev/null 2>&1
	t1=$(ms)
	crane pull --insecure 127.0.0.1:$port/app$i:v1 "$tmp/pulled.tar" >/dev/null 2>&1
	t2=$(ms)
	rm -f "$tmp/pulled.tar"
	echo "round $i: push $((t1 - t0)) ms, pull $((t2 - t1)) ms"
done
