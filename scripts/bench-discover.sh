#!/bin/bash
# `discover` from the top server alone, against `wsus-reset lab` with 20 ms per round trip:
# three runs per hierarchy. Usage (release build first: cargo build --release --examples):
#   SPECS="100 2,100 3,100 5,1000 3" PAR=64 bash scripts/bench-discover.sh
set -e
root=$(cd "$(dirname "$0")/.." && pwd)
W=$root/target/release/wsus-reset
G=$root/target/release/examples/gen_hierarchy
export WSUS_SQL_PASSWORD=bench
IFS=, read -ra specs <<< "${SPECS:-100 2,100 3,100 5}"
for spec in "${specs[@]}"; do
  set -- $spec
  d=$(mktemp -d); cd $d
  $G $1 $2 > full.yaml
  awk '/^  - name: wsus-000001/{exit} {print}' full.yaml > seed.yaml
  $W lab full.yaml --listen 127.0.0.1:0 --latency 20 > lab.out 2>/dev/null &
  lab=$!; sleep 0.5
  addr=$(head -1 lab.out | awk '{print $3}')
  for run in 1 2 3; do
    rm -f found.yaml
    s=$(date +%s.%N); $W discover seed.yaml --out found.yaml --connect-via $addr --probe-parallel ${PAR:-64} > out.txt 2>/dev/null || true; e=$(date +%s.%N)
    echo "$1 servers, $2 levels: $(tail -1 out.txt | cut -d';' -f1), $(echo "$e - $s" | bc) s"
  done
  kill $lab; cd /; rm -rf $d
done
