#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs formatting,
# lints and every test. This is the README's test command, and what CI (.ci/run) calls.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages the tests use: Graphviz checks that `graph --format dot` is valid DOT; FreeTDS
# `tsql` is an independent TDS client for the lab; Node.js and npm run tedious, another one.
missing=()
command -v dot >/dev/null || missing+=(graphviz)
command -v tsql >/dev/null || missing+=(freetds-bin)
command -v npm >/dev/null || missing+=(nodejs npm)
# man-db: the generated manual page must render with `man -l`.
command -v man >/dev/null || missing+=(man-db)
# curl: an independent HTTPS + NTLM client for the lab's web service.
command -v curl >/dev/null || missing+=(curl)
# OpenSSL: the library the TLS 1.0 path links (openssl-sys finds it with pkg-config), and
# `openssl s_client`, an independent TLS peer for the lab.
command -v openssl >/dev/null || missing+=(openssl)
{ command -v pkg-config >/dev/null && pkg-config --exists openssl; } || missing+=(pkg-config libssl-dev)
# MinGW-w64: the C compiler the Windows build's C dependencies (OpenSSL, built from source there)
# need, for the Windows lint below.
command -v x86_64-w64-mingw32-gcc >/dev/null || missing+=(gcc-mingw-w64-x86-64)
# Wine runs the Windows builds (scripts/windows-check.sh); without its recommended packages it
# installs in seconds and is all a console program needs.
[ -x /usr/lib/wine/wine64 ] || missing_wine=yes
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ -n "${missing_wine:-}" ]; then
  echo "installing wine64"
  [ ${#missing[@]} -gt 0 ] || as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends wine64 >/dev/null
fi
# python-tds (PyPI) is the second independent TDS client for the lab; zeep with requests-ntlm
# drives the lab's administration web service as an independent SOAP client.
pip_install() {
  python3 -m pip install -q "$@" 2>/dev/null || python3 -m pip install -q --break-system-packages "$@"
}
if ! python3 -c 'import pytds' 2>/dev/null; then
  echo "installing python-tds"
  pip_install python-tds
fi
# pyOpenSSL is python-tds's TLS; pinned because python-tds 1.17 calls X509.get_extension, which
# later pyOpenSSL releases removed.
if ! python3 -c 'import OpenSSL.crypto as c; c.X509.get_extension' 2>/dev/null; then
  echo "installing pyOpenSSL"
  pip_install 'pyopenssl==24.2.1'
fi
if ! python3 -c 'import zeep, requests_ntlm' 2>/dev/null; then
  echo "installing zeep and requests-ntlm"
  pip_install zeep requests-ntlm
fi
# tedious (npm) is the third, asking for TDS 7.2 as a SQL Server 2005 client does; kept under
# target/ (version pinned: tedious 19 and later need Node.js 22).
export WSUS_RESET_NODE_PATH="$PWD/target/node-peers/node_modules"
if ! NODE_PATH="$WSUS_RESET_NODE_PATH" node -e "require('tedious')" 2>/dev/null; then
  echo "installing tedious"
  npm install --silent --no-audit --no-fund --prefix target/node-peers tedious@18.6.2 >/dev/null
fi
# Those tests fail, rather than skip, when a client is missing here.
export WSUS_RESET_THIRD_PARTY=required

# Rust's Windows target, and the standard library's source for the Windows 7 build
# (-Zbuild-std), for the Windows lint and builds below (the toolchain server is reachable here).
if ! rustup target list --installed | grep -qx x86_64-pc-windows-gnu; then
  echo "installing the x86_64-pc-windows-gnu target"
  rustup target add x86_64-pc-windows-gnu
fi
if ! rustup component list --installed | grep -q '^rust-src'; then
  echo "installing rust-src"
  rustup component add rust-src
fi

# Each step's time goes to stderr, so that the suite's time is known step by step.
step() {
  local start=$SECONDS
  "$@"
  echo "[test.sh] $(( SECONDS - start )) s: $*" >&2
}

# C in the Windows builds below (OpenSSL from source, ring, mimalloc) unoptimized and without
# debug information: OpenSSL alone builds in 191 s so, 259 s with cc's -O2 -g (measured here);
# nothing below measures their speed. scripts/dist.sh's release archives keep cc's flags.
export CFLAGS_x86_64_pc_windows_gnu="-O0 -g0" CFLAGS_x86_64_win7_windows_gnu="-O0 -g0"

step cargo fmt --all --check
step cargo clippy --workspace --all-targets --locked -- -D warnings
# The Windows-only code (the WID named pipe, SSPI logins, the TLS 1.0 path's OpenSSL built from
# source) is compiled and linted on every change: a Windows-only break fails here.
step cargo clippy --target x86_64-pc-windows-gnu --workspace --all-targets --locked -- -D warnings
# The fuzz target is not run here (see fuzz/README.md), but it must keep compiling.
step cargo check --manifest-path fuzz/Cargo.toml --locked --quiet
step cargo test --workspace --locked
# That built target/debug/wsus-reset from this tree, with the tests' features: the scripts below
# take it as it is rather than build it again with the binary's own features (41 s).
export WSUS_RESET_DEBUG_FRESH=1
# Both Windows builds, zipped as shipped, their imports checked against Windows 7, run under
# Wine: --version, validate, rehearse, and the named-pipe repair (after the tests: it runs the
# debug build as its Linux peer).
step scripts/windows-check.sh
# A slice of the soak (scripts/soak.sh): 50 interrupted applies on a mixed hierarchy, each
# resumed and verified, seeded by the commit so that a failure replays with the same seed.
step scripts/soak.sh 50 "$((16#$(git rev-parse --short=7 HEAD 2>/dev/null || echo 5eed)))"
