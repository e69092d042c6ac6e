#!/usr/bin/env bash
# Idempotently installs what lockwarden needs on Debian 12 (bookworm).
# Only packages that are missing are installed; nothing is upgraded.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "install-deps: run as root, or install sudo" >&2
    exit 1
  fi
  SUDO="sudo"
fi

is_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# gcc builds the fault suite's clock shim; clang/libclang-dev serve bindgen.
missing=()
for pkg in libclang-dev clang gcc redis-server redis-tools; do
  is_installed "$pkg" || missing+=("$pkg")
done
# A Python 3 with pip for the redis-py test (any python3 on PATH will do).
if ! command -v python3 >/dev/null 2>&1; then
  missing+=(python3 python3-pip)
elif ! python3 -m pip --version >/dev/null 2>&1; then
  missing+=(python3-pip)
fi
need_valkey=0
is_installed valkey-server || need_valkey=1

if [ "$need_valkey" -eq 1 ] && ! grep -rqsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "install-deps: adding the bookworm-backports suite"
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
fi

apt_install() {
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

if [ "${#missing[@]}" -gt 0 ] || [ "$need_valkey" -eq 1 ]; then
  $SUDO apt-get update -qq
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    apt_install "${missing[@]}"
  fi
  if [ "$need_valkey" -eq 1 ]; then
    echo "install-deps: installing valkey-server from bookworm-backports"
    apt_install -t bookworm-backports valkey-server
  fi
  # The packaged services are not wanted: tests and `make run` start their own servers.
  for svc in redis-server valkey-server; do
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
    $SUDO service "$svc" stop >/dev/null 2>&1 || true
  done
fi

# The Rust pieces: the Wasm target for the policies, rustfmt and clippy for
# `make lint`. rustup downloads them if they are missing (from
# static.rust-lang.org); say so clearly if that is not possible.
rust_need() {
  echo "install-deps: $1 is missing and could not be installed; install it with: $2" >&2
  exit 1
}
# The workspace's `rust-version`: an older toolchain fails with less clear errors.
need_rust=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' "$(dirname "$0")/../Cargo.toml")
have_rust=$(rustc --version 2>/dev/null | awk '{print $2}' || true)
if [ -z "$have_rust" ] || [ "$(printf '%s\n%s\n' "$need_rust" "$have_rust" | sort -V | head -n1)" != "$need_rust" ]; then
  rust_need "Rust $need_rust or later (found: ${have_rust:-none})" "rustup update stable (or https://rustup.rs)"
fi
if ! rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown; then
  echo "install-deps: adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown || rust_need "the wasm32-unknown-unknown target" "rustup target add wasm32-unknown-unknown"
fi
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    echo "install-deps: adding $component"
    rustup component add "$component" || rust_need "$component" "rustup component add $component"
  fi
done

# redis-py 5 or later (the test speaks RESP3). Debian's system Python refuses
# plain `pip install` (externally managed): then install for this user.
if ! python3 -c 'import redis, sys; sys.exit(int(redis.__version__.split(".")[0]) < 5)' >/dev/null 2>&1; then
  echo "install-deps: installing redis-py"
  python3 -m pip install --quiet 'redis>=5,<6' 2>/dev/null \
    || python3 -m pip install --quiet --user --break-system-packages 'redis>=5,<6'
fi
