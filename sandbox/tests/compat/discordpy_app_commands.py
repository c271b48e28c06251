#!/usr/bin/env python3
"""discord.py's app_commands against the twi-probe sandbox, unmodified apart
from the base URL and gateway (patched as in discordpy_client.py).

Usage: discordpy_app_commands.py DESCRIBE_JSON ACCOUNT USER

Logs in as the bot account ACCOUNT with a CommandTree of three commands,
syncs them to the sandbox's guild (``tree.sync(guild=...)``, a bulk PUT),
then has the human account USER run each through the sandbox's control API
(``POST {control_url}/interactions``):

* ``/ping`` answers directly (``response.send_message`` with an embed);
* ``/slow`` defers (``response.defer(thinking=True)``) and then edits the
  original response (``edit_original_response``);
* ``/help`` answers and sends a follow-up (``followup.send``).

It prints one JSON line (the interaction ids and the handlers' results) and
exits 0 on success, 1 on failure, 2 on a missing dependency.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import traceback
from typing import Any

SETUP_HINT = "run scripts/test.sh, which installs discord.py with pip"
OVERALL_TIMEOUT = 30.0

try:
    import aiohttp
    import discord
    import discord.gateway
    import discord.http
    import yarl
    from discord import app_commands
except ImportError as e:
    print(f"discord.py is not importable ({e}): {SETUP_HINT}", file=sys.stderr)
    sys.exit(2)

if len(sys.argv) != 4:
    print(__doc__, file=sys.stderr)
    sys.exit(2)
DESCRIBE, ACCOUNT, USER = sys.argv[1:]
with open(DESCRIBE) as f:
    D = json.load(f)
discord.http.Route.BASE = D["api_base"]
TOKEN = next(a["token"] for a in D["accounts"] if a["name"] == ACCOUNT)
GUILD = discord.Object(id=int(D["guilds"][0]["id"]))

complaints: list[str] = []


class Complaints(logging.Handler):
    """discord.py's own warnings and errors: a faithful Discord causes none."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "voice will NOT be supported" not in text:
            complaints.append(f"{record.name}: {text}")


class Bot(discord.Client):
    def __init__(self) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(intents=intents)
        self.tree = app_commands.CommandTree(self)
        self.done: dict[str, asyncio.Future[Any]] = {}
        self.synced: list[str] = []

    def finished(self, name: str, value: Any) -> None:
        fut = self.done.setdefault(name, asyncio.get_running_loop().create_future())
        if not fut.done():
            fut.set_result(value)

    async def setup_hook(self) -> None:
        _shards, url, _limits = await self.http.get_bot_gateway()
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)
        synced = await self.tree.sync(guild=GUILD)
        self.synced = sorted(c.name for c in synced)


bot = Bot()


@bot.tree.command(name="ping", description="Bot latency", guild=GUILD)
async def ping(interaction: discord.Interaction) -> None:
    embed = discord.Embed(title="🏓 Bot Latency Information")
    await interaction.response.send_message(embed=embed)
    message = await interaction.original_response()
    bot.finished("ping", {"message_id": str(message.id), "title": message.embeds[0].title})


@bot.tree.command(name="slow", description="A deferred answer", guild=GUILD)
async def slow(interaction: discord.Interaction) -> None:
    await interaction.response.defer(thinking=True)
    message = await interaction.edit_original_response(content="done thinking")
    bot.finished("slow", {"message_id": str(message.id), "content": message.content,
                          "edited": message.edited_at is not None})


@bot.tree.command(name="help", description="Help", guild=GUILD)
async def help_(interaction: discord.Interaction, topic: str = "all") -> None:
    await interaction.response.send_message(f"help on {topic}")
    follow = await interaction.followup.send("and more", wait=True)
    bot.finished("help", {"followup_id": str(follow.id), "topic": topic})


async def run_command(session: aiohttp.ClientSession, command: str, options: dict[str, Any]) -> str:
    body = {"user": USER, "channel": "probes", "command": command, "options": options}
    async with session.post(D["control_url"] + "/interactions", json=body) as r:
        v = await r.json()
        if not v.get("ok"):
            raise RuntimeError(f"control API refused /{command}: {v}")
        return v["result"]["id"]


async def main() -> dict[str, Any]:
    results: dict[str, Any] = {}
    ready = asyncio.Event()
    bot.event(_on_ready(ready))
    task = asyncio.create_task(bot.start(TOKEN))
    try:
        await asyncio.wait_for(ready.wait(), OVERALL_TIMEOUT)
        results["synced"] = bot.synced
        async with aiohttp.ClientSession() as session:
            for command, options in [("ping", {}), ("slow", {}), ("help", {"topic": "ranks"})]:
                bot.done.setdefault(command, asyncio.get_running_loop().create_future())
                results[command] = {"id": await run_command(session, command, options)}
                results[command].update(await asyncio.wait_for(bot.done[command], 10))
    finally:
        await bot.close()
        await asyncio.gather(task, return_exceptions=True)
    return results


def _on_ready(ready: asyncio.Event):
    async def on_ready() -> None:
        ready.set()

    return on_ready


if __name__ == "__main__":
    logging.getLogger("discord").addHandler(Complaints(level=logging.WARNING))
    logging.getLogger("discord").setLevel(logging.INFO)
    try:
        out = asyncio.run(asyncio.wait_for(main(), OVERALL_TIMEOUT))
    except Exception as e:  # the reason goes to the JSON line and stderr
        traceback.print_exc()
        print(json.dumps({"ok": False, "error": repr(e), "complaints": complaints}))
        sys.exit(1)
    out["complaints"] = complaints
    out["ok"] = not complaints
    print(json.dumps(out))
    sys.exit(0 if out["ok"] else 1)
