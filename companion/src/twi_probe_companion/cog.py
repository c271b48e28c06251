"""The companion cog: lets the prober's bot account in, exports the metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable, List, Optional, Tuple

import discord
from discord import app_commands
from discord.ext import commands
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from .metrics import ActiveUsers, CompanionMetrics
from .ratelimit import WATCH, RateLimitWatch

log = logging.getLogger("twi_probe_companion")

#: Discord's epoch (2015-01-01) in unix milliseconds.
DISCORD_EPOCH_MS = 1420070400000
#: Request ids (message or interaction ids) remembered so that one command
#: is never counted twice (a hybrid command run as a slash command is
#: reported by both discord.py's command and app-command events).
REMEMBERED_REQUESTS = 1024


def snowflake_seconds(snowflake: int) -> float:
    """The unix time, by Discord's clock, at which `snowflake` was made."""
    return ((snowflake >> 22) + DISCORD_EPOCH_MS) / 1000.0


def _on_message_is_default(bot: commands.Bot) -> bool:
    handler = getattr(bot, "on_message", None)
    return getattr(handler, "__func__", None) is commands.Bot.on_message


class ProbeCompanion(commands.Cog):
    """``await bot.add_cog(ProbeCompanion(bot, allow_ids=[PROBER_ID], port=8000))``

    * Messages from the bot accounts in ``allow_ids`` are processed as
      commands, as if a person sent them; every other bot is still ignored.
      With discord.py's own ``on_message`` this needs nothing else. A bot that
      overrides ``on_message`` calls ``await
      twi_probe_companion.process_commands(self, message)`` there instead of
      ``await self.process_commands(message)``.
    * The exporter serves ``registry`` (prometheus_client's default, with its
      process metrics and anything else the bot registers there) on
      ``addr:port``; ``port=None`` starts none (serve ``registry`` yourself).
    """

    def __init__(
        self,
        bot: commands.Bot,
        *,
        allow_ids: Iterable[int] = (),
        port: Optional[int] = 8000,
        addr: str = "0.0.0.0",
        registry: CollectorRegistry = REGISTRY,
        watch: RateLimitWatch = WATCH,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bot = bot
        self.allow_ids = frozenset(int(i) for i in allow_ids)
        self.port = port
        self.addr = addr
        self.registry = registry
        self.watch = watch
        self._clock = clock
        self.active_users = ActiveUsers()
        self.metrics: Optional[CompanionMetrics] = None
        self._httpd: Any = None
        self._counted: "OrderedDict[int, None]" = OrderedDict()
        self._previous_tree_error: Any = None
        self._sharded = isinstance(bot, discord.AutoShardedClient)
        self._guilds = 0
        self._hooks: List["asyncio.Future[Any]"] = []

    # ------------------------------------------------------------ lifecycle

    async def cog_load(self) -> None:
        self.metrics = CompanionMetrics(
            self.registry,
            gateway_latencies=self._gateway_latencies,
            guilds=self._guild_count,
            watch=self.watch,
            active_users=self.active_users,
        )
        try:
            if self.port is not None:
                self._httpd, _thread = start_http_server(self.port, addr=self.addr, registry=self.registry)
        except OSError as e:
            self.metrics.unregister()
            raise RuntimeError(f"twi_probe_companion: cannot serve metrics on {self.addr}:{self.port}: {e}") from e
        connected = 1 if self.bot.is_ready() and not self.bot.is_closed() else 0
        for shard in self._shard_ids():
            self.metrics.gateway_connected.labels(shard=shard).set(connected)
        # Commands are counted the moment discord.py dispatches their end,
        # not a loop turn later in a listener (by then the CPU may have
        # done other work for milliseconds, which would count as latency):
        # wait_for calls its check inside dispatch. The checks never accept,
        # so they stay registered until cog_unload cancels them.
        for event, handler in (
            ("command_completion", lambda ctx: self._record_ctx(ctx, True)),
            ("command_error", lambda ctx, _error: self._record_ctx(ctx, False)),
            ("app_command_completion", lambda interaction, command: self._record_interaction(interaction, command, True)),
        ):
            self._hooks.append(asyncio.ensure_future(self.bot.wait_for(event, check=_never_accepts(handler))))
        tree = getattr(self.bot, "tree", None)
        if isinstance(tree, app_commands.CommandTree):
            self._previous_tree_error = tree.on_error
            tree.error(self._on_tree_error)
        if self.allow_ids and not _on_message_is_default(self.bot):
            log.warning(
                "the bot overrides on_message: call `await twi_probe_companion.process_commands(self, message)` "
                "there instead of `await self.process_commands(message)`, or the prober's commands are ignored"
            )
        if not self.watch.active:
            log.warning(
                "no REST answer went through twi_probe_companion.http_trace(): construct the bot with "
                "`http_trace=twi_probe_companion.http_trace()` to export discord_ratelimit_remaining_ratio "
                "and discord_ratelimited_total"
            )
        where = self.exporter_address
        log.info(
            "twi_probe_companion: exporter on %s, prober ids allowed: %d",
            f"http://{where[0]}:{where[1]}/metrics" if where else "(none)",
            len(self.allow_ids),
        )

    async def cog_unload(self) -> None:
        while self._hooks:
            self._hooks.pop().cancel()
        tree = getattr(self.bot, "tree", None)
        if isinstance(tree, app_commands.CommandTree) and tree.on_error == self._on_tree_error:
            tree.on_error = self._previous_tree_error  # type: ignore[method-assign]
        if self._httpd is not None:
            httpd, self._httpd = self._httpd, None
            await asyncio.to_thread(httpd.shutdown)
            httpd.server_close()
        if self.metrics is not None:
            self.metrics.unregister()
            self.metrics = None

    @property
    def exporter_address(self) -> Optional[Tuple[str, int]]:
        """(host, port) the exporter listens on (the real port when 0 was asked)."""
        if self._httpd is None:
            return None
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    # ------------------------------------------------- letting the prober in

    def is_allowed_bot(self, message: discord.Message) -> bool:
        """A message from one of the allowed bot accounts (never a webhook,
        never this bot itself)."""
        author = message.author
        me = self.bot.user
        return (
            author.bot
            and message.webhook_id is None
            and author.id in self.allow_ids
            and (me is None or author.id != me.id)
        )

    async def process_commands(self, message: discord.Message) -> None:
        """``bot.process_commands`` that also lets the allowed bots in."""
        if self.is_allowed_bot(message):
            ctx = await self.bot.get_context(message)
            await self.bot.invoke(ctx)
        else:
            await self.bot.process_commands(message)

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        # discord.py's own on_message calls process_commands, which drops
        # every bot's message: those of the allowed bots are run here, once.
        # A bot with its own on_message calls process_commands (above) itself.
        if self.is_allowed_bot(message) and _on_message_is_default(self.bot):
            ctx = await self.bot.get_context(message)
            await self.bot.invoke(ctx)

    # ------------------------------------------------------------ commands

    def _record(self, name: str, ok: bool, request_id: int, user: Any, guild_id: Optional[int]) -> None:
        if self.metrics is None or request_id in self._counted:
            return
        self._counted[request_id] = None
        while len(self._counted) > REMEMBERED_REQUESTS:
            self._counted.popitem(last=False)
        latency = max(0.0, self._clock() - snowflake_seconds(request_id))
        self.metrics.commands.labels(command=name, success="true" if ok else "false").inc()
        self.metrics.command_latency.labels(command=name).observe(latency)
        if not getattr(user, "bot", False):
            self.active_users.saw(user.id)
        log.info(
            "Command executed successfully" if ok else "Command failed",
            extra={
                "request_id": request_id,
                "user_id": user.id,
                "guild_id": guild_id,
                "command": name,
                "execution_time_ms": round(latency * 1000.0),
            },
        )

    def _record_ctx(self, ctx: commands.Context[Any], ok: bool) -> None:
        if ctx.command is None:  # not a command (CommandNotFound)
            return
        request = ctx.interaction.id if ctx.interaction is not None else ctx.message.id
        self._record(ctx.command.qualified_name, ok, request, ctx.author, ctx.guild.id if ctx.guild else None)

    def _record_interaction(self, interaction: discord.Interaction[Any], command: Any, ok: bool) -> None:
        if command is None:
            return
        name = getattr(command, "qualified_name", None) or command.name
        self._record(name, ok, interaction.id, interaction.user, interaction.guild_id)

    async def _on_tree_error(self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError) -> None:
        # CommandTree.on_error is the one place every failed slash command
        # reaches; the bot's own handler (or discord.py's default) still runs.
        self._record_interaction(interaction, interaction.command, False)
        if self._previous_tree_error is not None:
            await self._previous_tree_error(interaction, error)

    # ------------------------------------------------------------- gateway

    def _shard_ids(self) -> List[str]:
        if self._sharded:
            return [str(s) for s in getattr(self.bot, "shards", {})]
        return [str(self.bot.shard_id or 0)]

    def _gateway_latencies(self) -> List[Tuple[str, float]]:
        try:
            if self._sharded:
                return [(str(s), float(l)) for s, l in self.bot.latencies]
            return [(str(self.bot.shard_id or 0), float(self.bot.latency))]
        except RuntimeError:  # the shard map changed while being read
            return []

    def _guild_count(self) -> int:
        # Read on the exporter's thread while the loop may add a guild.
        try:
            self._guilds = len(self.bot.guilds)
        except RuntimeError:
            pass
        return self._guilds

    def _set_connected(self, shard: Optional[int], value: int) -> None:
        if self.metrics is not None:
            label = str(shard if shard is not None else (self.bot.shard_id or 0))
            self.metrics.gateway_connected.labels(shard=label).set(value)

    # An AutoShardedClient reports per shard; a plain client has one session.
    @commands.Cog.listener()
    async def on_connect(self) -> None:
        if not self._sharded:
            self._set_connected(None, 1)

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        if not self._sharded:
            self._set_connected(None, 1)

    @commands.Cog.listener()
    async def on_resumed(self) -> None:
        if not self._sharded:
            self._set_connected(None, 1)

    @commands.Cog.listener()
    async def on_disconnect(self) -> None:
        if not self._sharded:
            self._set_connected(None, 0)

    @commands.Cog.listener()
    async def on_shard_connect(self, shard_id: int) -> None:
        self._set_connected(shard_id, 1)

    @commands.Cog.listener()
    async def on_shard_ready(self, shard_id: int) -> None:
        self._set_connected(shard_id, 1)

    @commands.Cog.listener()
    async def on_shard_resumed(self, shard_id: int) -> None:
        self._set_connected(shard_id, 1)

    @commands.Cog.listener()
    async def on_shard_disconnect(self, shard_id: int) -> None:
        self._set_connected(shard_id, 0)

    @commands.Cog.listener()
    async def on_socket_event_type(self, event_type: str) -> None:
        # Every dispatch Discord sends (MESSAGE_CREATE, GUILD_CREATE, ...).
        if self.metrics is not None:
            self.metrics.events.labels(event=event_type).inc()


def _never_accepts(handler: Callable[..., None]) -> Callable[..., bool]:
    """A wait_for check that runs `handler` and never ends the wait. An
    exception would end it (discord.py hands it to the waiting future), so
    none escapes."""

    def check(*args: Any) -> bool:
        try:
            handler(*args)
        except Exception:  # noqa: BLE001 - a metrics bug must not stop the counting
            log.exception("twi_probe_companion: recording a command failed")
        return False

    return check


async def process_commands(bot: commands.Bot, message: discord.Message) -> None:
    """For a bot that overrides ``on_message``: use this instead of
    ``bot.process_commands(message)`` so the allowed bots get in too."""
    cog = bot.get_cog(ProbeCompanion.__cog_name__)
    if isinstance(cog, ProbeCompanion):
        await cog.process_commands(message)
    else:
        await bot.process_commands(message)
