#!/usr/bin/env bash
# The exactly-once promise as a repeatable test: N random trials (default 100) of `apply`
# interrupted at a random moment (kill -9, SIGINT, SIGINT twice, SIGINT then kill -9) on a lab
# hierarchy mixing SUSDB and web-service servers, each followed by `resume` and `verify`, each
# checked from the lab's state file (scripts/soak.py says what). SEED (default: the time) makes a
# run repeatable; a failed trial is kept under soak-failures/ with what replays it.
#
#   scripts/soak.sh [N] [SEED]
#
# SOAK_LATENCY_MS (default 10) is added to every round trip; SOAK_PROFILE=release soaks the
# release build (default: the debug build the test suite has already built).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-100}"
seed="${2:-$(date +%s)}"
profile="${SOAK_PROFILE:-debug}"
if [ "$profile" = release ]; then
  cargo build --release --quiet --locked --bin wsus-reset
elif [ -z "${WSUS_RESET_DEBUG_FRESH:-}" ]; then # (scripts/test.sh: cargo test has just built it)
  cargo build --quiet --locked --bin wsus-reset
fi
exec python3 scripts/soak.py "target/$profile/wsus-reset" "$n" "$seed"
