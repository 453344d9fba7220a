#!/usr/bin/env bash
# Release archives into dist/: what an operator downloads.
#
#   wsus-reset-VERSION-windows-x86_64.zip    Windows 10/11, Server 2016 and later
#   wsus-reset-VERSION-windows7-x86_64.zip   Windows 7, Server 2008 R2 (a WSUS 3.0 host) and later
#   wsus-reset-VERSION-linux-x86_64.tar.gz   Linux (glibc, links the system's OpenSSL 3)
#   SHA256SUMS
#
# Each zip holds wsus-reset.exe, README.md, the examples, the PowerShell completion script and
# INSTALL.txt (which zip fits which host). The Windows 7 exe's imports are checked first
# (scripts/pe_imports.py): nothing is packaged that Windows 7 would refuse to start.
#
#   scripts/dist.sh            the release builds, all three archives
#   scripts/dist.sh --ci       the Windows zips only, from the lighter `windows-check` profile (what
#                              CI unpacks and runs under Wine: scripts/windows-check.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
linux=yes
case "${1:-}" in
  "") ;;
  --ci) profile=windows-check linux=no ;;
  *) echo "usage: scripts/dist.sh [--ci]" >&2; exit 2 ;;
esac
version=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["workspace"]["package"]["version"])')

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
scripts/windows-build.sh "$profile" > "$stage/exes"
mapfile -t exes < "$stage/exes"
# No zip for Windows 7 that would not start there; and the check must see the newer build refused.
python3 scripts/pe_imports.py "${exes[1]}"
python3 scripts/pe_imports.py --expect-newer "${exes[0]}"
if [ "$linux" = yes ]; then
  cargo build --locked --release --bin wsus-reset
  native=target/release/wsus-reset
else
  # (scripts/test.sh: cargo test has just built it)
  [ -n "${WSUS_RESET_DEBUG_FRESH:-}" ] || cargo build --locked --bin wsus-reset
  native=target/debug/wsus-reset
fi

rm -rf dist && mkdir -p dist

# What every archive holds beside the binary. The completion script comes from the native build:
# the command line is the same on every platform.
common() { # DIR
  mkdir -p "$1/examples/secrets"
  cp README.md "$1/"
  cp examples/*.yaml "$1/examples/"
  cp examples/secrets/* "$1/examples/secrets/"
  "$native" completions powershell > "$1/wsus-reset.ps1"
}

install_txt() { # BUILD_LINE
  # CRLF: Notepad before Windows 10 1809 shows a file with bare LF line ends as one line.
  sed 's/$/\r/' <<EOF
wsus-reset $version

$1

Which zip to use where:
- wsus-reset-$version-windows-x86_64.zip: Windows 10 and 11, Windows Server 2016 and later (an
  operator's workstation or a management server). Reaches every server over the network.
- wsus-reset-$version-windows7-x86_64.zip: Windows 7 and Windows Server 2008 R2, and later. Use it
  on a WSUS 3.0 host itself to reach its WID or SSEE database over the local named pipe
  (sql.pipe in the topology).
- Windows Server 2003 (and 2003 R2) and Windows Server 2008 (not R2): no build runs there (Rust's
  standard library needs Windows 7 or Server 2008 R2 at least). Reach those servers from another
  machine through their administration web service (api in the topology), or generate a reviewed
  T-SQL script with "wsus-reset export-sql" and run it there with sqlcmd.

Install: unzip anywhere, then in cmd.exe or PowerShell:
  wsus-reset.exe --version
  wsus-reset.exe rehearse examples\\contoso.yaml
PowerShell completion: . .\\wsus-reset.ps1 (or add that line to your \$PROFILE).
Checksums: SHA256SUMS beside the zips; in PowerShell: Get-FileHash wsus-reset-$version-windows7-x86_64.zip
EOF
}

package_zip() { # NAME EXE BUILD_LINE
  local dir="$stage/$1"
  mkdir -p "$dir"
  cp "$2" "$dir/wsus-reset.exe"
  common "$dir"
  install_txt "$3" > "$dir/INSTALL.txt"
  (cd "$stage" && python3 -m zipfile -c "$OLDPWD/dist/$1.zip" "$1")
}
package_zip "wsus-reset-$version-windows-x86_64" "${exes[0]}" \
  "This build: Windows 10 and 11, Windows Server 2016 and later (x86_64-pc-windows-gnu)."
package_zip "wsus-reset-$version-windows7-x86_64" "${exes[1]}" \
  "This build: Windows 7 and Windows Server 2008 R2, and later (x86_64-win7-windows-gnu)."

if [ "$linux" = yes ]; then
  name="wsus-reset-$version-linux-x86_64"
  mkdir -p "$stage/$name"
  cp "$native" "$stage/$name/"
  common "$stage/$name"
  "$native" completions bash > "$stage/$name/wsus-reset.bash"
  tar -C "$stage" -czf "dist/$name.tar.gz" "$name"
fi

(cd dist && sha256sum -- * > SHA256SUMS)
ls -l dist
