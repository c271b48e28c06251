"""monitoring/ against the real thing: a real Prometheus scrapes the test
bot's exporter (job twi_bot_shard, as monitoring/prometheus.yml names it),
evaluates the companion's alert rules, and answers every query of the
Discord API dashboard with data. (The Rust monitoring tests check the other
dashboard against the sandbox's simulated bot, which exports none of these
families.)"""

from __future__ import annotations

import json
import shutil
import socket
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

from harness import REPO, BotProcess, Process, Prober, wait_until

RULES = REPO / "monitoring" / "rules" / "twi_bot_shard_discord.yml"
DASHBOARD = REPO / "monitoring" / "dashboards" / "bot_discord_api.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read().decode())
    except OSError:
        return None


def dashboard_queries() -> List[Dict[str, str]]:
    """As tests/integration/monitoring.rs reads them: Grafana's interval
    variables replaced by concrete values."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$__interval", "1m")
            assert "$" not in expr, expr
            out.append({"title": panel["title"], "expr": expr})
    assert len(out) >= 5
    return out


def test_prometheus_loads_the_rules_and_every_dashboard_query_finds_the_companions_data(
    tmp_path: Path, bot: BotProcess, prober: Prober
) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is not on PATH (Debian package `prometheus`): run scripts/test.sh"
    # Something for rate() to see.
    prober.wait_reply(prober.send("probes", "!ping").id, bot.user_id)
    exporter = urllib.parse.urlsplit(bot.exporter_url).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: ['{RULES}']
scrape_configs:
  - job_name: twi_bot_shard
    static_configs: [{{targets: ['{exporter}']}}]
""",
        encoding="utf-8",
    )
    listen = f"127.0.0.1:{free_port()}"
    prom = Process(
        "prometheus",
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address={listen}"],
    )
    base = f"http://{listen}"
    try:
        wait_until("Prometheus ready", lambda: get_json(f"{base}/api/v1/status/buildinfo"), log=prom.log)

        def rules_evaluated() -> Any:
            body = get_json(f"{base}/api/v1/rules") or {}
            groups = body.get("data", {}).get("groups", [])
            rules = [r for g in groups if g["name"] == "twi_bot_shard.discord_api" for r in g["rules"]]
            return rules if len(rules) == 4 and all(r["health"] == "ok" for r in rules) else None

        rules = wait_until("the companion's rules evaluated without errors", rules_evaluated, log=prom.log)
        assert {r["name"] for r in rules} == {"BotRateLimitHeadroomLow", "BotEventRateHigh"}

        queries = dashboard_queries()

        def missing() -> List[str]:
            out = []
            for q in queries:
                url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": q["expr"]})
                body = get_json(url) or {}
                if body.get("status") != "success" or not body["data"]["result"]:
                    out.append(f"{q['title']}: {q['expr']}: {body}")
            return out

        wait_until("every dashboard query to return data", lambda: not missing(), log=lambda: "\n".join(missing()) + prom.log())
    finally:
        assert prom.stop() == 0, prom.log()
