#!/usr/bin/env bash
# Builds wsus-reset.exe for both kinds of Windows machine, with MinGW-w64, and prints their paths:
#
#   x86_64-pc-windows-gnu    Windows 10/11 and Server 2016 or later: the operator's workstation
#                            or a modern management server (Rust's tier-1 target).
#   x86_64-win7-windows-gnu  Windows 7 and Server 2008 R2: a WSUS 3.0 host itself, for its WID or
#                            SSEE database's named pipe. Rust's tier-3 target: its standard library
#                            is built from source (-Zbuild-std, which the stable toolchain allows
#                            with RUSTC_BOOTSTRAP=1; needs `rustup component add rust-src`).
#
#   scripts/windows-build.sh [release|windows-check]     (default: release)
#
# windows-check is CI's: unoptimized but for windows-core (see Cargo.toml: an unoptimized
# windows-core keeps an import of combase.dll, which Windows 7 lacks).
#
# Needs the x86_64-pc-windows-gnu target, rust-src and gcc-mingw-w64-x86-64 (scripts/test.sh
# installs them). .cargo/config.toml holds the Windows 7 target's linker, C compiler and cfg.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-release}"
case "$profile" in
  release | windows-check) dir=$profile ;;
  *) echo "usage: scripts/windows-build.sh [release|windows-check]" >&2; exit 2 ;;
esac

# OpenSSL (the TLS 1.0 path) is built from source by openssl-src, which takes minutes and does not
# know the win7 triple. It is built once, for x86_64-pc-windows-gnu in this profile (or, for
# windows-check, by an earlier `cargo clippy --target x86_64-pc-windows-gnu`), and both builds
# link that static library: the two targets share the MinGW-w64 C ABI.
openssl_install() {
  local dirs=("target/x86_64-pc-windows-gnu/$dir")
  # windows-check may link the lint's (dev) OpenSSL: it differs only in optimization.
  [ "$dir" = release ] || dirs+=(target/x86_64-pc-windows-gnu/debug)
  for d in "${dirs[@]}"; do ls -dt "$d"/build/openssl-sys-*/out/openssl-build/install 2>/dev/null; done |
    while read -r d; do [ -f "$d/lib/libcrypto.a" ] && { echo "$PWD/$d"; break; }; done
}
use_openssl() { # TARGET_PREFIX INSTALL
  export "$1_OPENSSL_NO_VENDOR=1" "$1_OPENSSL_DIR=$2" "$1_OPENSSL_STATIC=1"
}

openssl=$(openssl_install)
[ -n "$openssl" ] && use_openssl X86_64_PC_WINDOWS_GNU "$openssl"
cargo build --locked --profile "$profile" --target x86_64-pc-windows-gnu --bin wsus-reset >&2
[ -n "$openssl" ] || openssl=$(openssl_install)
[ -n "$openssl" ] || { echo "no OpenSSL built for x86_64-pc-windows-gnu under target/" >&2; exit 1; }

use_openssl X86_64_WIN7_WINDOWS_GNU "$openssl"
RUSTC_BOOTSTRAP=1 cargo build --locked --profile "$profile" -Zbuild-std=std,panic_abort \
  --target x86_64-win7-windows-gnu --bin wsus-reset >&2

echo "target/x86_64-pc-windows-gnu/$dir/wsus-reset.exe"
echo "target/x86_64-win7-windows-gnu/$dir/wsus-reset.exe"
