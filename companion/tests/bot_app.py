#!/usr/bin/env python3
"""A real discord.py bot with the companion, for the tests (the way Twi Bot
Shard would add it), run against `probe sandbox`.

Usage: bot_app.py DESCRIBE_JSON [--override-on-message]

It logs in as the sandbox's "twi-bot-shard" account, loads the companion as
an extension (configured from TWI_PROBE_* in the environment), and prints one
JSON line on stdout once READY: {"user_id", "exporter_url"}. Its companion
log lines go to stderr in the guide's JSON format. SIGTERM closes it.

Commands (prefix "!" or a mention): help (an embed titled "Interactive Help
System", as Twi Bot Shard's), ping, fail (raises; the bot answers with an
embed titled "Error"), typing (types, then answers).

With --override-on-message the bot has its own on_message, which calls the
companion's process_commands: the one line such a bot needs.

Only the base URL is patched, as in tests/compat/discordpy_client.py:
``discord.http.Route.BASE`` before login, and the gateway address that
``GET /gateway/bot`` answers in ``DiscordWebSocket.DEFAULT_GATEWAY``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

import discord
import discord.gateway
import discord.http
import yarl
from discord.ext import commands

import twi_probe_companion

BOT_ACCOUNT = "twi-bot-shard"
HELP_TITLE = "Interactive Help System"


class TestBot(commands.Bot):
    def __init__(self) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_messages = True
        intents.message_content = True
        super().__init__(
            command_prefix=commands.when_mentioned_or("!"),
            intents=intents,
            help_command=None,
            # The companion's rate-limit metrics see Discord's headers through this.
            http_trace=twi_probe_companion.http_trace(),
        )
        self.announced = False

    async def setup_hook(self) -> None:
        _shards, url, _limits = await self.http.get_bot_gateway()
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)
        await self.load_extension("twi_probe_companion")
        self.add_command(help_command)
        self.add_command(ping)
        self.add_command(fail)
        self.add_command(typing)

    async def on_ready(self) -> None:
        if self.announced:
            return
        self.announced = True
        cog = self.get_cog("ProbeCompanion")
        assert isinstance(cog, twi_probe_companion.ProbeCompanion)
        host, port = cog.exporter_address or ("", 0)
        print(json.dumps({"user_id": str(self.user.id), "exporter_url": f"http://{host}:{port}/metrics"}), flush=True)

    async def on_command_error(self, ctx: commands.Context, error: Exception) -> None:  # type: ignore[override]
        if isinstance(error, commands.CommandNotFound):
            return
        await ctx.reply(embed=discord.Embed(title="Error", description="Something went wrong."))


class OverridingBot(TestBot):
    async def on_message(self, message: discord.Message) -> None:
        # A bot's own on_message, with the one line the companion asks for.
        await twi_probe_companion.process_commands(self, message)


@commands.command(name="help")
async def help_command(ctx: commands.Context) -> None:
    await ctx.reply(embed=discord.Embed(title=HELP_TITLE, description="Commands: help, ping"))


@commands.command()
async def ping(ctx: commands.Context) -> None:
    await ctx.reply("pong")


@commands.command()
async def fail(ctx: commands.Context) -> None:
    raise commands.CommandError("a deliberate failure")


@commands.command()
async def typing(ctx: commands.Context) -> None:
    async with ctx.typing():
        await ctx.reply("typed")


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("describe")
    parser.add_argument("--override-on-message", action="store_true")
    args = parser.parse_args()
    with open(args.describe, encoding="utf-8") as f:
        describe = json.load(f)
    token = next(a["token"] for a in describe["accounts"] if a["name"] == BOT_ACCOUNT)
    discord.http.Route.BASE = describe["api_base"].rstrip("/")

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(twi_probe_companion.JsonFormatter())
    for name, level in (("twi_probe_companion", logging.INFO), ("discord", logging.WARNING)):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.addHandler(handler)

    bot = OverridingBot() if args.override_on_message else TestBot()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(bot.close()))
    async with bot:
        await bot.start(token)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
