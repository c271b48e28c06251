#!/usr/bin/env bash
# Runs every test, after installing what the tests need on a fresh Debian
# machine: promtool (Debian package `prometheus`), which checks that our
# metrics output is valid Prometheus text format.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi

cargo test --locked --all-targets
