#!/usr/bin/env bash
# Run the docker-compose stack for real and check it serves: `up -d` (builds the images and the demo
# world on first use), wait for the server, then the health check, the viewer, a basemap tile, a
# heatmap tile, a registered query and the Redis cache; `down` at the end (the data stays in ./data).
# Needs a container engine: docker-compose or `docker compose` (DOCKER_HOST may point at Podman's
# socket). Extra arguments go to `up` (e.g. --build). Usage: scripts/compose_check.sh [--build]
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v docker-compose >/dev/null; then compose=(docker-compose); else compose=(docker compose); fi
base=http://127.0.0.1:8000

fail() { echo "compose_check: $*" >&2; "${compose[@]}" ps >&2 || true; exit 1; }
check() {  # check URL EXPECTED-CONTENT-TYPE [curl args...]
  local url=$1 type=$2; shift 2
  local got; got=$(curl -s -o /dev/null -m 120 -w '%{http_code} %{content_type}' "$@" "$base$url") || true
  [[ $got == "200 $type"* || $got == "201 $type"* ]] || fail "$url answered '$got', expected 200/201 $type"
  echo "ok  $url  ($got)"
}

trap '"${compose[@]}" down >/dev/null 2>&1 || true' EXIT
start=$(date +%s)
"${compose[@]}" up -d "$@"
for _ in $(seq 1 120); do curl -sf -m 5 "$base/healthz" >/dev/null && break; sleep 5; done
echo "up after $(( $(date +%s) - start )) s"
check /healthz application/json
check / text/html
check /basemap/2/2/1.webp image/webp
check "/tiles/2/2/1.png?q=waves%20on%20the%20open%20ocean" image/png
check /queries application/json -X POST -H 'content-type: application/json' -d '{"text": "birds singing at dawn"}'
keys=$("${compose[@]}" exec -T redis redis-cli dbsize | tr -d '\r')
[ "${keys:-0}" -gt 0 ] || fail "Redis holds no keys: the server does not cache in it"
echo "ok  Redis holds $keys keys"
"${compose[@]}" logs server 2>&1 | grep -q "no basemap" && fail "the server found no basemap imagery"
echo "compose_check: all good"
