"""twi-probe's companion for a discord.py bot.

Two ways to add it, as discord.py users expect::

    await bot.load_extension("twi_probe_companion")   # configured from the environment
    await bot.add_cog(ProbeCompanion(bot, allow_ids=[PROBER_ID], port=8000))

and, for the rate-limit metrics, ``http_trace=twi_probe_companion.http_trace()``
when the bot is constructed. Environment of the extension form:

``TWI_PROBE_ALLOW_IDS``
    Comma-separated user ids of the bot accounts (the prober) whose commands
    are processed. Empty or unset: no bot gets in.
``TWI_PROBE_EXPORTER_PORT``
    Port of the Prometheus exporter, default 8000 (0: any free port).
``TWI_PROBE_EXPORTER_ADDR``
    Address it listens on, default 0.0.0.0.
"""

from __future__ import annotations

import os
from typing import List, Mapping, Optional

from discord.ext import commands

from .cog import ProbeCompanion, process_commands, snowflake_seconds
from .jsonlog import JsonFormatter
from .metrics import LATENCY_BUCKETS
from .ratelimit import http_trace

__all__ = [
    "LATENCY_BUCKETS",
    "JsonFormatter",
    "ProbeCompanion",
    "from_environment",
    "http_trace",
    "process_commands",
    "setup",
    "snowflake_seconds",
]

__version__ = "0.1.0"

DEFAULT_PORT = 8000
DEFAULT_ADDR = "0.0.0.0"


class ConfigError(ValueError):
    """A bad TWI_PROBE_* variable; the message names it."""


def _allow_ids(text: str) -> List[int]:
    ids = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or not 0 < int(part) < 2**64:
            raise ConfigError(f"TWI_PROBE_ALLOW_IDS: {part!r} is not a Discord user id (a number)")
        ids.append(int(part))
    return ids


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"TWI_PROBE_EXPORTER_PORT: {text!r} is not a port number (0-65535)")
    return port


def from_environment(bot: commands.Bot, env: Optional[Mapping[str, str]] = None) -> ProbeCompanion:
    """The cog as the extension form configures it from ``env`` (``os.environ``)."""
    env = os.environ if env is None else env
    return ProbeCompanion(
        bot,
        allow_ids=_allow_ids(env.get("TWI_PROBE_ALLOW_IDS", "")),
        port=_port(env.get("TWI_PROBE_EXPORTER_PORT", "").strip() or str(DEFAULT_PORT)),
        addr=env.get("TWI_PROBE_EXPORTER_ADDR", "").strip() or DEFAULT_ADDR,
    )


async def setup(bot: commands.Bot) -> None:
    """``await bot.load_extension("twi_probe_companion")``"""
    await bot.add_cog(from_environment(bot))
