#!/usr/bin/env python3
"""discord.py against the twi-probe sandbox, unmodified apart from the base URL.

Usage: discordpy_client.py DESCRIBE_JSON ACCOUNT [--compress auto|zlib-stream|zstd-stream]

DESCRIBE_JSON is the file `probe sandbox --describe` writes. The script logs in
as ACCOUNT (a bot account, normally "prober") with the intents a prober uses
(guilds, guild_messages, message_content), checks that the guild and its
#probes channel are visible, sends "!help" in #probes and waits for the
simulated Twi Bot Shard's reply (an embed titled "Interactive Help System",
replying to the probe). It then has the sandbox send op 7 RECONNECT, waits for
discord.py to RESUME, probes once more, reads ``client.latency`` after the
next HEARTBEATS heartbeat ACKs, and closes. It prints one JSON line of
results and exits 0 on success, 1 on failure (the reason in the JSON line and
on stderr), 2 on bad usage or a missing dependency. The whole run is bounded
by OVERALL_TIMEOUT.

What is patched, and why that is all:

* ``discord.http.Route.BASE`` -- every REST call is built from it
  (``https://discord.com/api/v10`` on Discord); it becomes the sandbox's
  ``api_base``.
* ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` -- a plain ``Client``
  (or ``commands.Bot``) never asks REST where the gateway is: it connects to
  this constant (``wss://gateway.discord.gg/``) first and after an op 9
  INVALID_SESSION, and to READY's ``resume_gateway_url`` to resume. The
  script sets it in ``setup_hook`` to the ``url`` of ``GET /gateway/bot``,
  fetched through discord.py's own HTTP client, so the sandbox still decides
  the address. (An ``AutoShardedClient`` without a fixed shard count reads
  ``GET /gateway/bot`` itself for its first connection, but it too falls back
  to this constant after an op 9, so it needs the same patch.)

Compression: discord.py connects with ``compress=zstd-stream`` when the
``zstandard`` module (installed by ``discord.py[speed]``) or Python 3.14's
``compression.zstd`` is importable, and with ``zlib-stream`` otherwise; it
cannot be configured. ``--compress auto`` (the default) lets discord.py
choose; ``zlib-stream`` hides the zstd modules from it before it is imported
(as on a machine without them); ``zstd-stream`` requires one of them.

Set DISCORDPY_LOG=debug to see every gateway payload on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
import traceback
from typing import Any

OVERALL_TIMEOUT = 30.0
# Heartbeat ACKs observed at the end (their latencies are in the result).
HEARTBEATS = 3
HELP_TITLE = "Interactive Help System"
BOT_ACCOUNT = "twi-bot-shard"
CHANNEL = "probes"
SETUP_HINT = "run scripts/test.sh, which installs discord.py>=2.7,<3 and zstandard with pip"


def usage_error(message: str) -> None:
    print(json.dumps({"ok": False, "error": message}), flush=True)
    print(f"discordpy_client: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("describe", help="the JSON file `probe sandbox --describe` wrote")
    parser.add_argument("account", help='the bot account to log in as, e.g. "prober"')
    parser.add_argument(
        "--compress",
        choices=["auto", "zlib-stream", "zstd-stream"],
        default="auto",
        help="gateway transport compression (default: discord.py's own choice)",
    )
    return parser.parse_args(argv)


ARGS = parse_args(sys.argv[1:])
if ARGS.compress == "zlib-stream":
    # discord.py picks zstd-stream whenever it can import a zstd decompressor;
    # a None entry makes that import fail, as if the module were not there.
    sys.modules["zstandard"] = None  # type: ignore[assignment]
    sys.modules["compression.zstd"] = None  # type: ignore[assignment]

try:
    import aiohttp
    import discord
    import discord.gateway
    import discord.http
    import discord.utils
    import yarl
except ImportError as e:  # depends on the machine
    usage_error(f"discord.py is not importable ({e}): {SETUP_HINT}")

if not discord.version_info >= (2, 7, 0):  # type: ignore[operator]
    usage_error(f"discord.py {discord.__version__} is too old, 2.7 or later is needed: {SETUP_HINT}")

CHOSEN_COMPRESSION = discord.utils._ActiveDecompressionContext.COMPRESSION_TYPE
if ARGS.compress != "auto" and CHOSEN_COMPRESSION != ARGS.compress:
    usage_error(
        f"discord.py chose compress={CHOSEN_COMPRESSION}, not {ARGS.compress} "
        f"(zstd-stream needs the zstandard module): {SETUP_HINT}"
    )


class CheckFailed(Exception):
    pass


class Complaints(logging.Handler):
    """discord.py's own warnings and errors. Against a faithful Discord a clean
    run logs none: parse failures, exceptions in handlers, rate limits and
    unexpected closes would all show up here."""

    # Said at start-up on any machine without the voice extras.
    IGNORED = ("voice will NOT be supported",)

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if not any(i in text for i in self.IGNORED):
            self.records.append(f"{record.name}: {text}")


class Prober(discord.Client):
    def __init__(self, results: dict[str, Any]):
        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_messages = True
        intents.message_content = True
        super().__init__(intents=intents)
        self.results = results
        self.ready = asyncio.Event()
        self.resumed = asyncio.Event()

    async def setup_hook(self) -> None:
        # After login (GET /users/@me, GET /oauth2/applications/@me), before
        # the first gateway connection: ask REST where the gateway is.
        shards, url, _limits = await self.http.get_bot_gateway()
        self.results["gateway_bot"] = {"url": url, "shards": shards}
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)

    async def on_ready(self) -> None:
        self.ready.set()

    async def on_resumed(self) -> None:
        self.resumed.set()


STEP = ["starting"]


async def heartbeat_latencies(client: discord.Client, runner: asyncio.Task[None], count: int) -> list[float]:
    """``client.latency`` (what ``bot.latency`` and a ``/ping`` report) after
    each of the next ``count`` HEARTBEAT_ACKs from discord.py's keep-alive
    thread. Run the sandbox with a short heartbeat interval for this."""
    keep_alive = client.ws._keep_alive  # noqa: SLF001 - read only: when the last ACK came
    seen, latencies = keep_alive._last_ack, []  # noqa: SLF001
    STEP[0] = f"waiting for {count} heartbeat ACKs"
    while len(latencies) < count:
        if runner.done():
            raise CheckFailed(f"discord.py's gateway connection ended while {STEP[0]}")
        await asyncio.sleep(0.01)  # polls a value discord.py's thread sets
        if keep_alive._last_ack != seen:  # noqa: SLF001
            seen = keep_alive._last_ack  # noqa: SLF001
            latencies.append(round(client.latency, 4))
    return latencies


async def until(runner: asyncio.Task[None], what: str, aw: Any) -> Any:
    """Awaits `aw`, failing at once if discord.py's connection ends first."""
    STEP[0] = f"waiting for {what}"
    waiter = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        exc = runner.exception() if not runner.cancelled() else None
        raise CheckFailed(f"discord.py's gateway connection ended before {what}: {exc!r}")
    return waiter.result()


async def probe_help(
    client: Prober, runner: asyncio.Task[None], channel: discord.TextChannel, target_id: int
) -> dict[str, Any]:
    """Sends !help and checks the simulated bot's answer."""
    sent_at = time.monotonic()
    STEP[0] = "sending !help"
    sent = await channel.send("!help")

    def is_answer(m: discord.Message) -> bool:
        return (
            m.channel.id == channel.id
            and m.author.id == target_id
            and m.reference is not None
            and m.reference.message_id == sent.id
        )

    reply: discord.Message = await until(runner, f"the reply to !help ({sent.id})", client.wait_for("message", check=is_answer))
    result = {
        "seconds": round(time.monotonic() - sent_at, 3),
        # Discord's own clock: the difference between the two snowflakes.
        "snowflake_ms": round((reply.created_at - sent.created_at).total_seconds() * 1000.0, 3),
        "probe_id": str(sent.id),
        "reply_id": str(reply.id),
        "author": reply.author.name,
        "author_bot": reply.author.bot,
        "type": reply.type.name,
        "embed_title": reply.embeds[0].title if reply.embeds else None,
        "mentions_prober": client.user in reply.mentions,
    }
    if result["embed_title"] != HELP_TITLE:
        raise CheckFailed(f"reply {reply.id}: embed title {result['embed_title']!r}, expected {HELP_TITLE!r}")
    resolved = reply.reference.resolved if reply.reference else None
    if not isinstance(resolved, discord.Message) or resolved.id != sent.id:
        raise CheckFailed(f"reply {reply.id}: referenced_message is {resolved!r}, expected the probe {sent.id}")
    return result


async def run(describe: dict[str, Any], account_name: str, results: dict[str, Any]) -> None:
    accounts = {a["name"]: a for a in describe["accounts"]}
    if account_name not in accounts:
        raise CheckFailed(f"no account named {account_name!r} in the description (have {sorted(accounts)})")
    if BOT_ACCOUNT not in accounts:
        raise CheckFailed(f"no account named {BOT_ACCOUNT!r} in the description")
    account, target_id = accounts[account_name], int(accounts[BOT_ACCOUNT]["id"])

    # The one REST patch: every Route's URL starts with this.
    discord.http.Route.BASE = describe["api_base"].rstrip("/")

    client = Prober(results)
    runner: asyncio.Task[None] | None = None
    started = time.monotonic()
    try:
        STEP[0] = "logging in over REST"
        await client.login(account["token"])
        me = client.user
        results["logged_in_as"] = {"id": str(me.id), "name": me.name, "bot": me.bot}
        if str(me.id) != account["id"] or not me.bot:
            raise CheckFailed(f"logged in as {me!r} ({me.id}), expected bot {account['id']}")
        runner = asyncio.create_task(client.connect(reconnect=False), name="discord.py gateway")
        await until(runner, "READY", client.ready.wait())
        results["ready_seconds"] = round(time.monotonic() - started, 3)

        want_guild = describe["guilds"][0]
        guild = client.get_guild(int(want_guild["id"]))
        if guild is None or guild.name != want_guild["name"]:
            raise CheckFailed(f"guild {want_guild['name']!r} ({want_guild['id']}) not in the cache after READY: {guild!r}")
        want_channel = next((c for c in want_guild["channels"] if c["name"] == CHANNEL), None)
        if want_channel is None:
            raise CheckFailed(f"no #{CHANNEL} channel in the description")
        channel = guild.get_channel(int(want_channel["id"]))
        if not isinstance(channel, discord.TextChannel) or channel.name != CHANNEL:
            raise CheckFailed(f"#{CHANNEL} ({want_channel['id']}) is not a visible text channel: {channel!r}")
        perms = channel.permissions_for(guild.me)
        if not (perms.view_channel and perms.send_messages and perms.embed_links):
            raise CheckFailed(f"#{CHANNEL}: missing permissions, have {perms!r}")
        results["guild"] = {"id": str(guild.id), "name": guild.name, "channels": sorted(c.name for c in guild.channels)}
        results["gateway_latency_seconds"] = round(client.latency, 4)

        results["help"] = await probe_help(client, runner, channel, target_id)

        # Op 7 RECONNECT: discord.py must RESUME at READY's resume_gateway_url
        # on a new connection (a new compression stream) and go on working.
        session_before = client.ws.session_id
        async with aiohttp.ClientSession() as http:
            url = f"{describe['control_url']}/gateway/{account_name}/reconnect"
            STEP[0] = f"asking the sandbox for op 7 ({url})"
            async with http.post(url) as r:
                if r.status != 200:
                    raise CheckFailed(f"POST {url}: HTTP {r.status}: {await r.text()}")
        await until(runner, "RESUMED", client.resumed.wait())
        if client.ws.session_id != session_before:
            raise CheckFailed(f"session {session_before} was replaced by {client.ws.session_id}, not resumed")
        results["resumed"] = True
        results["help_after_resume"] = await probe_help(client, runner, channel, target_id)
        results["heartbeat_latencies"] = await heartbeat_latencies(client, runner, HEARTBEATS)
    finally:
        await client.close()
        if runner is not None:
            try:
                await asyncio.wait_for(runner, timeout=5.0)
            except asyncio.TimeoutError:
                results["close_error"] = "discord.py did not stop within 5 s of close()"
            except Exception as e:  # noqa: BLE001 - reported below
                results["close_error"] = f"{type(e).__name__}: {e}"
    if "close_error" in results:
        raise CheckFailed(f"closing: {results['close_error']}")
    results["closed_cleanly"] = client.is_closed()


def main() -> int:
    try:
        with open(ARGS.describe, encoding="utf-8") as f:
            describe = json.load(f)
    except (OSError, ValueError) as e:
        usage_error(f"cannot read the description {ARGS.describe}: {e}")
    results: dict[str, Any] = {
        "ok": False,
        "account": ARGS.account,
        "discord_py": discord.__version__,
        "aiohttp": aiohttp.__version__,
        "python": ".".join(map(str, sys.version_info[:3])),
        "compress": CHOSEN_COMPRESSION,
        "api_base": describe.get("api_base"),
    }
    complaints = Complaints()
    discord_log = logging.getLogger("discord")
    discord_log.addHandler(complaints)
    level = os.environ.get("DISCORDPY_LOG", "")
    if level:
        discord.utils.setup_logging(level=getattr(logging, level.upper(), logging.DEBUG))
    else:
        discord_log.setLevel(logging.WARNING)

    error = None
    try:
        asyncio.run(asyncio.wait_for(run(describe, ARGS.account, results), timeout=OVERALL_TIMEOUT))
    except asyncio.TimeoutError:
        error = f"timed out after {OVERALL_TIMEOUT:.0f} s {STEP[0]}"
    except CheckFailed as e:
        error = str(e)
    except Exception as e:  # noqa: BLE001 - any library error is the result
        error = f"{type(e).__name__}: {e}"
        traceback.print_exc(file=sys.stderr)
    results["library_warnings"] = complaints.records
    if error is None and complaints.records:
        error = f"discord.py logged {len(complaints.records)} warning(s): {complaints.records[0]}"
    results["ok"] = error is None
    if error is not None:
        results["error"] = error
        print(f"discordpy_client: FAILED: {error}", file=sys.stderr, flush=True)
    print(json.dumps(results, sort_keys=True), flush=True)
    return 0 if error is None else 1


if __name__ == "__main__":
    sys.exit(main())
