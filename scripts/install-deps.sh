#!/usr/bin/env bash
# Idempotently installs what lockwarden needs on Debian 12 (bookworm).
# Only packages that are missing are installed; nothing is upgraded.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for pkg in libclang-dev clang redis-server redis-tools; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
need_valkey=0
dpkg-query -W -f='${Status}' valkey-server 2>/dev/null | grep -q "install ok installed" || need_valkey=1

if [ "$need_valkey" -eq 1 ] && ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "install-deps: adding the bookworm-backports suite"
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
fi

if [ "${#missing[@]}" -gt 0 ] || [ "$need_valkey" -eq 1 ]; then
  $SUDO apt-get update -qq
  export DEBIAN_FRONTEND=noninteractive
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  if [ "$need_valkey" -eq 1 ]; then
    echo "install-deps: installing valkey-server from bookworm-backports"
    $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports valkey-server
  fi
  # The packaged services are not wanted: tests and `make run` start their own servers.
  for svc in redis-server valkey-server; do
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
    $SUDO service "$svc" stop >/dev/null 2>&1 || true
  done
fi

if ! rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown; then
  echo "install-deps: adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

if ! python3 -c 'import redis' >/dev/null 2>&1; then
  echo "install-deps: installing redis-py"
  python3 -m pip install --quiet 'redis>=5,<6'
fi
