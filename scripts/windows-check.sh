#!/usr/bin/env bash
# Both Windows builds, packaged as an operator downloads them and run under Wine (scripts/test.sh
# calls this; it needs what test.sh installs: the Windows targets, rust-src, mingw-w64, Wine):
#
# 1. scripts/dist.sh --ci builds the Windows zips, once the Windows 7 / Server 2008 R2 exe's
#    import table holds only what Windows 7 has (scripts/pe_imports.py) and the Windows 10 exe's
#    does not (so that check is not blind); each zip is unpacked and its exe is what runs.
# 2. Each exe under Wine: --version, validate, and rehearse examples/contoso.yaml (SUSDB and web
#    service servers, TLS on both, certificates validated; then the client scan, its probe record
#    on D:). The Windows 7 exe runs as shipped; the
#    Windows 10 one needs bcryptprimitives.dll!ProcessPrng, which Wine 8 lacks (Windows 10 has
#    it), so it gets a stand-in that forwards to RtlGenRandom.
# 3. The named-pipe repair with the Windows 7 exe (scripts/wine-pipe-check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
WINE=${WINE:-/usr/lib/wine/wine64}

scripts/dist.sh --ci
echo "[windows-check] the builds done after $SECONDS s" >&2
work=$(mktemp -d)
export WINEPREFIX="$work/prefix" WINEDEBUG=-all
cleanup() {
  "$(dirname "$WINE")/wineserver" -k 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for zip in dist/*.zip; do python3 -m zipfile -e "$zip" "$work/"; done
win10=$(ls -d "$work"/wsus-reset-*-windows-x86_64)
win7=$(ls -d "$work"/wsus-reset-*-windows7-x86_64)

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
x86_64-w64-mingw32-gcc -shared -o "$win10/bcryptprimitives.dll" "$work/bcp.c" -ladvapi32

# Windows habits: D: is a folder of ours, and a WSUS server's log folder sits on its
# administrative share (Wine maps \\server\share to dosdevices/unc/server/share). Wine makes its
# prefix first (wineboot), then the two are added to it.
timeout 300 "$WINE" wineboot --init > /dev/null 2>&1
mkdir -p "$WINEPREFIX/dosdevices/unc" "$work/d-drive"
ln -s "$work/d-drive" "$WINEPREFIX/dosdevices/d:"
share_logs="$WINEPREFIX/dosdevices/unc/wsus-emea/c\$/Program Files/Update Services/LogFiles"
mkdir -p "$share_logs"
cp tests/fixtures/logs/servers/wsus-emea/SoftwareDistribution.log "$share_logs/"

version=$(target/debug/wsus-reset --version)
for dir in "$win7" "$win10"; do
  name=$(basename "$dir")
  rm -rf "$work/d-drive/wsus-reset"
  # The examples as unpacked from the zip, run from the unpacked folder as an operator would.
  (
    cd "$dir"
    got=$(timeout 120 "$WINE" wsus-reset.exe --version | tr -d '\r')
    [ "$got" = "$version" ] || { echo "$name: --version printed '$got', expected '$version'"; exit 1; }
    timeout 120 "$WINE" wsus-reset.exe validate 'examples\contoso.yaml'
    # On WSUS 3.0 SP1, so that the client scan after the repair registers and deletes a computer
    # on each web-service server, its probe record kept on D:.
    timeout 600 "$WINE" wsus-reset.exe rehearse 'examples\contoso.yaml' --state-dir 'D:\wsus-reset' \
      --wsus-version 3.0sp1 > rehearse.out 2>&1 ||
      { cat rehearse.out; echo "$name: rehearse failed"; exit 1; }
    grep -Eq "^([0-9]+) of \1 servers verified; clients of \1 of \1 servers can sync" rehearse.out ||
      { cat rehearse.out; echo "$name: not every server repaired"; exit 1; }
    ls "$work"/d-drive/wsus-reset/runs/*.journal > /dev/null ||
      { echo "$name: no journal under --state-dir D:\wsus-reset"; exit 1; }
    [ "$(grep -c 'clients can scan (5 round trips; Office 2003 claimed.*; computer .* removed' rehearse.out)" = 4 ] &&
      [ "$(tr -d ' \r\n' < "$work"/d-drive/wsus-reset/client-probes.json)" = "[]" ] ||
      { cat rehearse.out; echo "$name: the client scan did not pass and clean up on every web-service server"; exit 1; }
    # Output read by cmd.exe or PowerShell: the tree drawn in ASCII (see topology/src/render.rs).
    timeout 120 "$WINE" wsus-reset.exe graph 'examples\contoso.yaml' > graph.out
    timeout 120 "$WINE" wsus-reset.exe diagnose --format json \
      --server-log '\\wsus-emea\c$\Program Files\Update Services\LogFiles' > diagnose.json || true
    python3 - <<'EOF'
import json
graph = open("graph.out", "rb").read()
assert graph.isascii() and b"|-- wsus-amer" in graph and b"`-- wsus-emea" in graph, graph
servers = json.load(open("diagnose.json"))["logs"]["servers"]
emea = [s for s in servers if s["server"] == "wsus-emea"]
assert emea and emea[0]["verdict"] == "broken" and emea[0]["logs"] == ["wsus-emea"], servers
EOF
    echo "$name: --version, validate, rehearse with the client scan (state on D:), ASCII graph, diagnose over a UNC share under Wine: ok"
  )
done

echo "[windows-check] both exes run under Wine after $SECONDS s" >&2
bash scripts/wine-pipe-check.sh "$win7/wsus-reset.exe" target/debug/wsus-reset
