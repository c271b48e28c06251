#!/usr/bin/env bash
# Cost of `probe serve` beside Prometheus' blackbox_exporter: part
# "blackbox" of examples/bench_serve.rs (see its header for the method).
#
#   scripts/bench-blackbox.sh [more bench_serve options, e.g. --blackbox-probes 200]
#
# Installs Debian's prometheus-blackbox-exporter when it is missing (with
# sudo when not root) without letting the package start it as a system
# service: the benchmark starts the binary itself, on a free 127.0.0.1 port,
# with its own config, and kills it at the end. Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

bin="$(command -v prometheus-blackbox-exporter || true)"
if [ -z "$bin" ]; then
  echo "installing: prometheus-blackbox-exporter" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Keep maintainer scripts from starting the service (invoke-rc.d and
  # deb-systemd-invoke honour policy-rc.d; exit 101 = action forbidden).
  # An existing policy-rc.d is left alone.
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  cleanup_policy() { [ -z "$made_policy" ] || $SUDO rm -f /usr/sbin/policy-rc.d; }
  trap cleanup_policy EXIT
  if ! apt-cache show prometheus-blackbox-exporter >/dev/null 2>&1; then
    $SUDO apt-get update -q
  fi
  $SUDO apt-get install -y -q --no-install-recommends prometheus-blackbox-exporter
  cleanup_policy
  trap - EXIT
  # Under systemd the unit was enabled at install: stop and disable it.
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now prometheus-blackbox-exporter.service || true
  fi
  bin="$(command -v prometheus-blackbox-exporter)"
fi

exec cargo run --release --locked --example bench_serve -- \
  --part blackbox --blackbox-bin "$bin" "$@"
