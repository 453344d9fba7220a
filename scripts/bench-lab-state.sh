#!/usr/bin/env bash
# The lab's state file under load (BENCHMARKS.md, "Lab state file"): `apply` of a 300-server
# broken hierarchy, 20 ms per round trip, --parallel 64, against a lab with `--state` and one
# without, interleaved, RUNS times each; prints every run and the medians.
#
#   bash scripts/bench-lab-state.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
cargo build --release --quiet --bin wsus-reset --example gen_hierarchy
bin=target/release/wsus-reset
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
target/release/examples/gen_hierarchy 300 3 > "$work/h.yaml"
export WSUS_SQL_PASSWORD=bench

one_run() { # $1: "state" or "none"; prints seconds
  local dir="$work/$1-$RANDOM" extra=()
  mkdir -p "$dir"
  [ "$1" = state ] && extra=(--state "$dir/lab.json")
  "$bin" lab "$work/h.yaml" --listen 127.0.0.1:0 --latency 20 "${extra[@]}" > "$dir/lab.out" &
  local lab=$!
  for _ in $(seq 100); do grep -q listening "$dir/lab.out" 2>/dev/null && break; sleep 0.05; done
  local addr; addr=$(awk '/listening on/ {print $3}' "$dir/lab.out")
  local start end
  start=$(date +%s.%N)
  "$bin" apply "$work/h.yaml" --yes --parallel 64 --state-dir "$dir/run" --connect-via "$addr" > /dev/null 2>&1
  end=$(date +%s.%N)
  kill -TERM "$lab"; wait "$lab" || true
  echo "$end - $start" | bc
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

: > "$work/state.txt"; : > "$work/none.txt"
for i in $(seq "$runs"); do
  s=$(one_run state); n=$(one_run none)
  echo "run $i: with --state ${s}s, without ${n}s"
  echo "$s" >> "$work/state.txt"; echo "$n" >> "$work/none.txt"
done
ms=$(median < "$work/state.txt"); mn=$(median < "$work/none.txt")
echo "median: with --state ${ms}s, without ${mn}s, ratio $(echo "scale=3; $ms / $mn" | bc)"
