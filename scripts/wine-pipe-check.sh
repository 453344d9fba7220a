#!/usr/bin/env bash
# The Windows-only connection path (a WID/SSEE server reached over its local named pipe) run for
# real, under Wine: the Windows build of `wsus-reset lab` serves the pipe, the Linux build serves
# the top server over TCP, and the Windows build of `wsus-reset` plans, applies and verifies the
# hierarchy. Not part of CI (it needs the x86_64-pc-windows-gnu target, mingw-w64 and Wine);
# run it by hand after changing workflows/src/reach/sql/connect.rs or the lab's pipe listener (lab/src/sql/mod.rs).
#
#   rustup target add x86_64-pc-windows-gnu && apt-get install gcc-mingw-w64-x86-64 wine64
#   bash scripts/wine-pipe-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

WINE=${WINE:-/usr/lib/wine/wine64}
PIPE='\\.\pipe\MICROSOFT##WID\tsql\query'
work=$(mktemp -d)
export WINEPREFIX="$work/prefix" WINEDEBUG=-all WSUS_PW=wine-check-pw
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  "$(dirname "$WINE")/wineserver" -k 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --bin wsus-reset
cargo build --release --target x86_64-pc-windows-gnu --bin wsus-reset
cp target/x86_64-pc-windows-gnu/release/wsus-reset.exe "$work/"
# Rust's std takes random bytes from bcryptprimitives.dll!ProcessPrng, which Wine 8 lacks; this
# stand-in forwards to RtlGenRandom. Real Windows (10 and later) has the DLL.
cat > "$work/bcp.c" <<'EOF'
#include <windows.h>
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG chunk = length > 0x7fffffff ? 0x7fffffff : (ULONG)length;
        if (!SystemFunction036(data, chunk)) return FALSE;
        data += chunk; length -= chunk;
    }
    return TRUE;
}
EOF
x86_64-w64-mingw32-gcc -shared -o "$work/bcryptprimitives.dll" "$work/bcp.c" -ladvapi32

cat > "$work/wid.yaml" <<EOF
version: 1
defaults:
  sql:
    auth: { method: sql, user: wsus_repair, password_env: WSUS_PW }
servers:
  - name: wsus-hq
    sql: { host: 127.0.0.1, port: 14339, encrypt: danger-plaintext }
  - name: wsus-branch
    upstream: wsus-hq
    mode: replica
    sql: { pipe: '$PIPE' }
EOF
cd "$work"
"$OLDPWD/target/release/wsus-reset" lab wid.yaml --listen 127.0.0.1:14339 --state tcp.json \
  --user wsus_repair --password-env WSUS_PW > tcp-lab.out 2>&1 &
pids+=($!)
timeout 300 "$WINE" wsus-reset.exe lab wid.yaml --listen-pipe "$PIPE" --state pipe.json \
  --user wsus_repair --password-env WSUS_PW > pipe-lab.out 2>&1 &
pids+=($!)
for _ in $(seq 60); do grep -q listening pipe-lab.out 2>/dev/null && break; sleep 1; done
grep -q listening pipe-lab.out || { echo "the pipe lab did not start"; cat pipe-lab.out; exit 1; }

timeout 120 "$WINE" wsus-reset.exe plan wid.yaml --online
timeout 120 "$WINE" wsus-reset.exe apply wid.yaml --yes --state-dir state
timeout 120 "$WINE" wsus-reset.exe verify wid.yaml
python3 - <<'EOF'
import json
calls = [c["procedure"] for c in json.load(open("pipe.json"))["servers"]["wsus-branch"]["calls"]]
expected = ["set-replica-mode", "spDeclineUpdate", "spDeployUpdate", "spDeclineUpdate", "set-replica-mode"]
assert calls == expected, calls
print("over the named pipe:", " -> ".join(calls))
EOF
echo "wine pipe check: ok"
