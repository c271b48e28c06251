"""The companion's parts in-process: the cog's lifecycle on a bot that is not
connected, slash-command accounting, the rate-limit trace against a real
aiohttp server, the active-user window, configuration from the environment,
the JSON log format, and the package pip installed."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import json
import logging
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any, List

import aiohttp
import discord
import pytest
from aiohttp import web
from discord import app_commands
from discord.ext import commands
from prometheus_client import CollectorRegistry, generate_latest

import twi_probe_companion
from twi_probe_companion import ProbeCompanion, from_environment, snowflake_seconds
from twi_probe_companion.metrics import ActiveUsers
from twi_probe_companion.ratelimit import RateLimitWatch

from harness import COMPANION, Samples

# A snowflake made at unix time 1_700_000_000.000 s (Discord's clock).
AT = 1_700_000_000.0
SNOWFLAKE = (int(AT * 1000) - 1420070400000) << 22


async def new_bot(cls: Any = commands.Bot, **options: Any) -> commands.Bot:
    """A bot that never connects, set up as `async with bot:` does (which
    gives it its event loop)."""
    bot = cls(command_prefix="!", intents=discord.Intents.none(), **options)
    await bot.__aenter__()
    return bot


def scrape(registry: CollectorRegistry) -> Samples:
    return Samples(generate_latest(registry).decode())


def test_snowflake_time_is_discords_clock() -> None:
    assert snowflake_seconds(SNOWFLAKE) == AT
    assert snowflake_seconds(175928847299117063) == 1462015105.796  # Discord's documented example


def test_the_cog_registers_serves_and_unregisters_so_the_extension_can_be_reloaded() -> None:
    async def main() -> None:
        registry = CollectorRegistry()
        for _ in range(2):  # a second load after unload must not clash
            bot = await new_bot()
            cog = ProbeCompanion(bot, allow_ids=[1], port=0, addr="127.0.0.1", registry=registry)
            await bot.add_cog(cog)
            assert cog.exporter_address is not None
            host, port = cog.exporter_address
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode())
            s = Samples(text)
            # Not connected yet: the one shard of a plain client is down.
            assert s.value("discord_gateway_connected", shard="0") == 0
            assert s.value("bot_guilds") == 0
            assert s.value("bot_active_users") == 0
            await bot.remove_cog(cog.qualified_name)
            assert cog.exporter_address is None
            assert "bot_commands_total" not in generate_latest(registry).decode()
            with pytest.raises(OSError):
                await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10))

    asyncio.run(main())


def test_a_port_in_use_is_an_error_that_names_it() -> None:
    async def main() -> None:
        registry = CollectorRegistry()
        first = await new_bot()
        cog = ProbeCompanion(first, port=0, addr="127.0.0.1", registry=registry)
        await first.add_cog(cog)
        _, port = cog.exporter_address  # type: ignore[misc]
        second = await new_bot()
        with pytest.raises(RuntimeError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            await second.add_cog(ProbeCompanion(second, port=port, addr="127.0.0.1", registry=CollectorRegistry()))
        await first.remove_cog(cog.qualified_name)

    asyncio.run(main())


def interaction(user_bot: bool = False, snowflake: int = SNOWFLAKE, command: Any = None) -> Any:
    return SimpleNamespace(id=snowflake, user=SimpleNamespace(id=42, bot=user_bot), guild_id=7, command=command)


def test_slash_commands_are_counted_and_timed_from_the_interactions_snowflake() -> None:
    """Bots cannot run slash commands, so the sandbox has no interactions:
    discord.py's events are delivered here by hand."""

    async def main() -> None:
        registry = CollectorRegistry()
        bot = await new_bot()
        handled: List[Exception] = []

        @bot.tree.error
        async def bots_own_handler(_interaction: Any, error: Exception) -> None:
            handled.append(error)

        cog = ProbeCompanion(bot, port=None, registry=registry, clock=lambda: AT + 0.25)
        await bot.add_cog(cog)
        ping = SimpleNamespace(qualified_name="ping", name="ping")
        bot.dispatch("app_command_completion", interaction(command=ping), ping)
        # A failed slash command reaches CommandTree.on_error; the bot's own
        # handler still runs after the companion counted it.
        error = app_commands.AppCommandError("boom")
        await bot.tree.on_error(interaction(command=ping, snowflake=SNOWFLAKE + 1), error)  # type: ignore[arg-type]
        assert handled == [error]
        s = scrape(registry)
        assert s.value("bot_commands_total", command="ping", success="true") == 1
        assert s.value("bot_commands_total", command="ping", success="false") == 1
        assert s.value("bot_command_latency_seconds_count", command="ping") == 2
        assert s.value("bot_command_latency_seconds_sum", command="ping") == pytest.approx(0.5)
        assert s.value("bot_command_latency_seconds_bucket", command="ping", le="0.25") == 2
        assert s.value("bot_active_users") == 1
        await bot.remove_cog(cog.qualified_name)
        assert bot.tree.on_error == bots_own_handler, "the bot's handler is back"
        assert "bot_commands_total" not in generate_latest(registry).decode()

    asyncio.run(main())


def test_a_hybrid_command_run_as_a_slash_command_counts_once() -> None:
    """discord.py reports it both as a command and as an app command."""

    async def main() -> None:
        registry = CollectorRegistry()
        bot = await new_bot()
        cog = ProbeCompanion(bot, port=None, registry=registry, clock=lambda: AT + 0.1)
        await bot.add_cog(cog)
        inter = interaction(command=SimpleNamespace(qualified_name="help", name="help"))
        ctx = SimpleNamespace(
            command=SimpleNamespace(qualified_name="help"), interaction=inter, message=SimpleNamespace(id=SNOWFLAKE), author=inter.user, guild=None
        )
        bot.dispatch("command_completion", ctx)
        bot.dispatch("app_command_completion", inter, inter.command)
        # And an unknown command (CommandNotFound) is no command at all.
        bot.dispatch("command_error", SimpleNamespace(command=None), commands.CommandNotFound())
        s = scrape(registry)
        assert s.value("bot_commands_total", command="help", success="true") == 1
        assert s.get("bot_commands_total", command="help", success="false") is None
        await bot.remove_cog(cog.qualified_name)

    asyncio.run(main())


def test_bots_are_not_active_users() -> None:
    async def main() -> None:
        registry = CollectorRegistry()
        bot = await new_bot()
        cog = ProbeCompanion(bot, port=None, registry=registry, clock=lambda: AT)
        await bot.add_cog(cog)
        cmd = SimpleNamespace(qualified_name="help", name="help")
        bot.dispatch("app_command_completion", interaction(user_bot=True, command=cmd), cmd)
        s = scrape(registry)
        assert s.value("bot_commands_total", command="help", success="true") == 1
        assert s.value("bot_active_users") == 0
        await bot.remove_cog(cog.qualified_name)

    asyncio.run(main())


def test_a_sharded_bot_reports_each_shard_and_ignores_the_unsharded_events() -> None:
    async def main() -> None:
        registry = CollectorRegistry()
        bot = await new_bot(commands.AutoShardedBot, shard_count=2)
        cog = ProbeCompanion(bot, port=None, registry=registry)
        await bot.add_cog(cog)
        await cog.on_shard_connect(0)
        await cog.on_shard_ready(1)
        await cog.on_disconnect()  # also dispatched per shard, without its id
        await cog.on_shard_disconnect(1)
        s = scrape(registry)
        assert s.value("discord_gateway_connected", shard="0") == 1
        assert s.value("discord_gateway_connected", shard="1") == 0
        await cog.on_shard_resumed(1)
        assert scrape(registry).value("discord_gateway_connected", shard="1") == 1
        await bot.remove_cog(cog.qualified_name)

    asyncio.run(main())


def test_active_users_are_distinct_and_forgotten_after_5_minutes() -> None:
    now = [1000.0]
    users = ActiveUsers(clock=lambda: now[0])
    users.saw(1)
    users.saw(2)
    users.saw(1)
    assert users.count() == 2
    now[0] += 200
    users.saw(3)
    now[0] += 101  # users 1 and 2 were last seen 301 s ago
    assert users.count() == 1
    now[0] += 300
    assert users.count() == 0
    # Sightings alone (no scrape) forget old ids too.
    users.saw(4)
    now[0] += 301
    users.saw(5)
    assert list(users._last_seen) == [5]


def test_the_rate_limit_trace_reads_discords_headers_from_a_real_session() -> None:
    answers = [
        (200, {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "4"}),
        (200, {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "10"}),
        (200, {}),  # no headers: not counted in the ratio
        (429, {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0", "Via": "1.1 google"}),
    ]

    async def main() -> RateLimitWatch:
        now = [0.0]
        watch = RateLimitWatch(clock=lambda: now[0])
        calls = iter(answers)

        async def handler(_request: web.Request) -> web.Response:
            status, headers = next(calls)
            return web.json_response({}, status=status, headers=headers)

        app = web.Application()
        app.router.add_get("/", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            assert not watch.active
            async with aiohttp.ClientSession(trace_configs=[watch.trace_config()]) as session:
                for i in range(3):
                    async with session.get(f"http://127.0.0.1:{port}/") as r:
                        await r.read()
                assert watch.active
                assert watch.lowest_ratio() == pytest.approx(0.2)
                assert watch.ratelimited == 0
                async with session.get(f"http://127.0.0.1:{port}/") as r:
                    assert r.status == 429
                assert watch.ratelimited == 1
                assert watch.lowest_ratio() == 0.0
                now[0] += 61  # the window is one minute; the count stays
                assert watch.lowest_ratio() == 1.0
                assert watch.ratelimited == 1
        finally:
            await runner.cleanup()
        return watch

    asyncio.run(main())
    assert twi_probe_companion.http_trace() is twi_probe_companion.http_trace(), "one trace per process"


def test_without_the_trace_the_rate_limit_families_are_absent_not_reassuring(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        registry = CollectorRegistry()
        bot = await new_bot()
        cog = ProbeCompanion(bot, port=None, registry=registry, watch=RateLimitWatch())
        await bot.add_cog(cog)
        names = scrape(registry).names()
        assert "discord_ratelimit_remaining_ratio" not in names
        assert "discord_ratelimited_total" not in names
        assert any("http_trace=twi_probe_companion.http_trace()" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        await bot.remove_cog(cog.qualified_name)

    asyncio.run(main())


def test_the_extension_is_configured_from_the_environment() -> None:
    bot = commands.Bot(command_prefix="!", intents=discord.Intents.none())
    cog = from_environment(
        bot, {"TWI_PROBE_ALLOW_IDS": " 1020304050607080901, 42 ,", "TWI_PROBE_EXPORTER_PORT": "9100", "TWI_PROBE_EXPORTER_ADDR": "127.0.0.1"}
    )
    assert cog.allow_ids == {1020304050607080901, 42}
    assert (cog.port, cog.addr) == (9100, "127.0.0.1")
    default = from_environment(bot, {})
    assert (default.allow_ids, default.port, default.addr) == (frozenset(), 8000, "0.0.0.0")
    for env, message in [
        ({"TWI_PROBE_ALLOW_IDS": "prober"}, "TWI_PROBE_ALLOW_IDS: 'prober' is not a Discord user id"),
        ({"TWI_PROBE_ALLOW_IDS": "-5"}, "TWI_PROBE_ALLOW_IDS: '-5'"),
        ({"TWI_PROBE_EXPORTER_PORT": "80000"}, "TWI_PROBE_EXPORTER_PORT: '80000' is not a port number"),
        ({"TWI_PROBE_EXPORTER_PORT": "http"}, "TWI_PROBE_EXPORTER_PORT: 'http'"),
    ]:
        with pytest.raises(ValueError, match=message):
            from_environment(bot, env)


def test_the_json_formatter_writes_the_guides_log_format() -> None:
    formatter = twi_probe_companion.JsonFormatter()
    record = logging.LogRecord("cog_name", logging.INFO, __file__, 1, "Command executed %s", ("successfully",), None)
    record.created = 1686832496.789
    for key, value in {"request_id": "abc123", "user_id": 123456789012345678, "guild_id": 876543210987654321, "command": "help", "execution_time_ms": 45}.items():
        setattr(record, key, value)
    assert json.loads(formatter.format(record)) == {
        "timestamp": "2023-06-15T12:34:56.789Z",
        "level": "INFO",
        "logger": "cog_name",
        "message": "Command executed successfully",
        "request_id": "abc123",
        "user_id": "123456789012345678",
        "guild_id": "876543210987654321",
        "command": "help",
        "execution_time_ms": 45,
    }
    try:
        raise ValueError("bad")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "oops", (), sys.exc_info())
    line = json.loads(formatter.format(failed))
    assert line["level"] == "ERROR" and "ValueError: bad" in line["exception"]
    assert "request_id" not in line


def test_pip_installed_this_tree() -> None:
    """scripts/test.sh runs `pip install ./companion`: the installed package
    must be importable by name and hold exactly this tree's modules."""
    # Not the egg-info that building left in src/ (which conftest puts on sys.path).
    paths = [p for p in sys.path if Path(p or ".").resolve() != (COMPANION / "src").resolve()]
    dist = next(iter(importlib.metadata.distributions(name="twi-probe-companion", path=paths)), None)
    assert dist is not None, "twi-probe-companion is not installed: run scripts/test.sh (pip install ./companion)"
    requires = {r.split(">")[0].split("<")[0]: r for r in dist.requires or [] if "extra ==" not in r}
    assert ">=2.4" in requires["discord.py"] and ">=0.20" in requires["prometheus_client"], requires
    installed = {
        Path(str(f)).name: hashlib.sha256(Path(str(dist.locate_file(f))).read_bytes()).hexdigest()
        for f in dist.files or []
        if str(f).startswith("twi_probe_companion/") and str(f).endswith(".py")
    }
    source = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (COMPANION / "src" / "twi_probe_companion").glob("*.py")}
    assert installed == source, "the installed companion is not this tree's: run scripts/test.sh (pip install ./companion)"
