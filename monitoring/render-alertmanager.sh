#!/bin/sh
# Renders monitoring/alertmanager.yml for an Alertmanager that does not know
# `webhook_url_file` in discord_configs (0.25, Debian 12's version, does not):
# each `webhook_url_file: PATH` line becomes `webhook_url: '<URL in PATH>'`.
# Everything else is copied unchanged. The output holds the secret: write it
# where only Alertmanager can read it, e.g.
#
#   umask 027
#   monitoring/render-alertmanager.sh monitoring/alertmanager.yml > /etc/prometheus/alertmanager.yml
#   chgrp prometheus /etc/prometheus/alertmanager.yml
#
# Exits 1, writing nothing, when a webhook file is missing, empty, or
# does not hold one http(s) URL.
set -eu
in="${1:--}"
# Captured first, so a failure leaves no half-written config behind.
out=$(awk '
/^[[:space:]-]*webhook_url_file:/ {
  prefix = $0; sub(/webhook_url_file:.*$/, "", prefix)
  path = $0; sub(/^[^:]*:[[:space:]]*/, "", path); sub(/[[:space:]]+#.*$/, "", path)
  gsub(/^["\047]|["\047]$/, "", path)
  url = ""
  if ((getline url < path) <= 0) { printf "render-alertmanager: cannot read %s\n", path > "/dev/stderr"; exit 1 }
  close(path)
  gsub(/^[[:space:]]+|[[:space:]]+$/, "", url)
  if (url !~ /^https?:\/\/[^[:space:]\047"]+$/) {
    printf "render-alertmanager: %s does not hold one http(s) URL\n", path > "/dev/stderr"; exit 1
  }
  print prefix "webhook_url: \047" url "\047"
  next
}
{ print }
' "$in") || exit 1
printf '%s\n' "$out"
