#!/usr/bin/env bash
# The Windows-only connection path (a WID/SSEE server reached over its local named pipe) run for
# real, under Wine, with the Windows 7 / Server 2008 R2 build (the one a WSUS 3.0 host runs): its
# `wsus-reset lab` serves the pipe, the Linux build serves the top server over TCP, and its
# `wsus-reset` plans, applies and verifies the hierarchy. CI runs it from scripts/windows-check.sh
# with the packaged exe; after changing workflows/src/reach/sql/connect.rs or the lab's pipe
# listener (lab/src/sql/mod.rs), run it by hand:
#
#   bash scripts/wine-pipe-check.sh [WINDOWS_EXE LINUX_EXE]
#
# Without arguments it builds both (scripts/windows-build.sh: the targets, rust-src, mingw-w64;
# and Wine: apt-get install wine64).
set -euo pipefail
cd "$(dirname "$0")/.."

WINE=${WINE:-/usr/lib/wine/wine64}
PIPE='\\.\pipe\MICROSOFT##WID\tsql\query'
if [ $# -eq 2 ]; then
  exe=$(realpath "$1") linux=$(realpath "$2")
else
  exe=$PWD/$(scripts/windows-build.sh release | tail -1)
  cargo build --release --locked --bin wsus-reset
  linux=$PWD/target/release/wsus-reset
fi
work=$(mktemp -d)
export WINEPREFIX="$work/prefix" WINEDEBUG=-all WSUS_PW=wine-check-pw
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  "$(dirname "$WINE")/wineserver" -k 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cp "$exe" "$work/wsus-reset.exe"

# Saved as Windows tools save them: the password by PowerShell 5 (`'...' > C:\secrets\wsus.pw`),
# the topology by `Out-File` (both UTF-16LE with a byte order mark, CRLF line ends).
powershell_save() { printf '\xff\xfe'; sed 's/$/\r/' | iconv -f UTF-8 -t UTF-16LE; }
timeout 300 "$WINE" wineboot --init > /dev/null 2>&1
mkdir -p "$WINEPREFIX/drive_c/secrets"
printf '%s\n' "$WSUS_PW" | powershell_save > "$WINEPREFIX/drive_c/secrets/wsus.pw"
powershell_save > "$work/wid.yaml" <<EOF
version: 1
defaults:
  sql:
    auth: { method: sql, user: wsus_repair, password_file: C:\secrets\wsus.pw }
servers:
  - name: wsus-hq
    sql: { host: 127.0.0.1, port: 14339, encrypt: danger-plaintext }
  - name: wsus-branch
    upstream: wsus-hq
    mode: replica
    sql: { pipe: '$PIPE' }
EOF
cd "$work"
"$linux" lab wid.yaml --listen 127.0.0.1:14339 --state tcp.json \
  --user wsus_repair --password-env WSUS_PW > tcp-lab.out 2>&1 &
pids+=($!)
timeout 300 "$WINE" wsus-reset.exe lab wid.yaml --listen-pipe "$PIPE" --state pipe.json \
  --user wsus_repair --password-env WSUS_PW > pipe-lab.out 2>&1 &
pids+=($!)
for _ in $(seq 60); do grep -q listening pipe-lab.out 2>/dev/null && break; sleep 1; done
grep -q listening pipe-lab.out || { echo "the pipe lab did not start"; cat pipe-lab.out; exit 1; }

timeout 120 "$WINE" wsus-reset.exe plan wid.yaml --online | tee plan.out
# The file as the operator named it, relative to the working directory as on Linux; before
# topology::plain_path, canonicalize's \\?\Z:\... matched no working directory and was shown.
grep -q '^Plan for wid.yaml ' plan.out || { echo "the plan names its file oddly"; exit 1; }
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
