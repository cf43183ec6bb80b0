#!/usr/bin/env bash
# Cold first run: a fresh clone of this repository, empty package caches, `make run`, until
# GET /health/db answers 200. Prints the seconds taken and the size of the environment.
set -euo pipefail
src=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
port=${COLD_RUN_PORT:-8765}
tmp=$(mktemp -d)
trap 'kill -- -$pid 2>/dev/null || true; sleep 1; rm -rf "$tmp"' EXIT
git clone -q "$src" "$tmp/repo"
export PIP_CACHE_DIR="$tmp/pip-cache" UV_CACHE_DIR="$tmp/uv-cache" PORT=$port
cd "$tmp/repo"
start=$(date +%s.%N)
setsid make run >"$tmp/run.log" 2>&1 &
pid=$!
until curl -fsS "http://127.0.0.1:$port/health/db" >/dev/null 2>&1; do
  kill -0 $pid 2>/dev/null || { cat "$tmp/run.log"; exit 1; }
  sleep 0.2
done
end=$(date +%s.%N)
printf 'cold make run to first 200 from /health/db: %.1f s\n' "$(echo "$end - $start" | bc)"
printf 'environment (.venv): %s\n' "$(du -sh .venv | cut -f1)"
