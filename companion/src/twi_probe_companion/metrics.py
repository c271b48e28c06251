"""The monitoring guide's metric families, registered on one registry.

Counters and histograms are updated from the bot's event loop; the values
that are cheapest to read when scraped (gateway latency, rate-limit headroom,
active users, guilds) come from a collector called on the exporter's thread.
Label values come from bounded sets only: command names, Discord's event
names, shard ids, "true"/"false".
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from typing import Callable, Iterable, Iterator, List, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .ratelimit import RateLimitWatch

#: Buckets from 50 ms to 10 s with edges at the guide's thresholds (1 s
#: warning, 3 s critical), the same as the prober's latency histograms.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0)

#: bot_active_users counts users seen in this window.
ACTIVE_WINDOW_SECONDS = 300.0


class ActiveUsers:
    """Distinct users who ran a command recently. Ids stay in memory only,
    and only for the window: each sighting drops those that fell out."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        # Oldest sighting first.
        self._last_seen: "OrderedDict[int, float]" = OrderedDict()

    def _forget_old(self, now: float) -> None:
        horizon = now - ACTIVE_WINDOW_SECONDS
        while self._last_seen:
            user, seen = next(iter(self._last_seen.items()))
            if seen >= horizon:
                break
            del self._last_seen[user]

    def saw(self, user_id: int) -> None:
        with self._lock:
            now = self._clock()
            self._last_seen[user_id] = now
            self._last_seen.move_to_end(user_id)
            self._forget_old(now)

    def count(self) -> int:
        with self._lock:
            self._forget_old(self._clock())
            return len(self._last_seen)


class CompanionMetrics:
    """Every family the companion exports; ``unregister`` removes them again
    (so the extension can be reloaded without duplicate-series errors)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        gateway_latencies: Callable[[], Iterable[Tuple[str, float]]],
        guilds: Callable[[], int],
        watch: RateLimitWatch,
        active_users: ActiveUsers,
    ) -> None:
        self.registry = registry
        self.commands = Counter(
            "bot_commands_total",
            "Commands processed, prefix and slash alike, by command and success.",
            ["command", "success"],
            registry=None,
        )
        self.command_latency = Histogram(
            "bot_command_latency_seconds",
            "From the invoking message's or interaction's snowflake time (Discord's clock) "
            "to the command's completion.",
            ["command"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.gateway_connected = Gauge(
            "discord_gateway_connected",
            "1 while the shard's gateway session is connected (connect, ready, resume), 0 after a disconnect.",
            ["shard"],
            registry=None,
        )
        self.events = Counter(
            "discord_events_total",
            "Gateway dispatch events received, by Discord's event name.",
            ["event"],
            registry=None,
        )
        self._collector = _ScrapeTimeCollector(gateway_latencies, guilds, watch, active_users)
        self._registered: List[object] = []
        for collector in (
            self.commands,
            self.command_latency,
            self.gateway_connected,
            self.events,
            self._collector,
        ):
            registry.register(collector)  # type: ignore[arg-type]
            self._registered.append(collector)

    def unregister(self) -> None:
        while self._registered:
            self.registry.unregister(self._registered.pop())  # type: ignore[arg-type]


class _ScrapeTimeCollector:
    def __init__(
        self,
        gateway_latencies: Callable[[], Iterable[Tuple[str, float]]],
        guilds: Callable[[], int],
        watch: RateLimitWatch,
        active_users: ActiveUsers,
    ) -> None:
        self._gateway_latencies = gateway_latencies
        self._guilds = guilds
        self._watch = watch
        self._active_users = active_users

    def describe(self) -> List[Metric]:
        # Names only, so registering checks for clashes without collecting.
        return [
            GaugeMetricFamily("discord_gateway_latency_seconds", "", labels=["shard"]),
            GaugeMetricFamily("discord_ratelimit_remaining_ratio", ""),
            CounterMetricFamily("discord_ratelimited", ""),
            GaugeMetricFamily("bot_active_users", ""),
            GaugeMetricFamily("bot_guilds", ""),
        ]

    def collect(self) -> Iterator[Metric]:
        latency = GaugeMetricFamily(
            "discord_gateway_latency_seconds",
            "The shard's heartbeat round trip (discord.py's latency).",
            labels=["shard"],
        )
        for shard, seconds in self._gateway_latencies():
            if math.isfinite(seconds):  # inf/nan before the first heartbeat ACK
                latency.add_metric([shard], seconds)
        yield latency
        if self._watch.active:
            yield GaugeMetricFamily(
                "discord_ratelimit_remaining_ratio",
                "Lowest X-RateLimit-Remaining / X-RateLimit-Limit over Discord's REST answers "
                "in the last minute (1 when none).",
                value=self._watch.lowest_ratio(),
            )
            yield CounterMetricFamily(
                "discord_ratelimited",
                "429 answers from Discord's REST API.",
                value=self._watch.ratelimited,
            )
        yield GaugeMetricFamily(
            "bot_active_users",
            "Distinct users (not bots) who ran a command in the last 5 minutes.",
            value=self._active_users.count(),
        )
        yield GaugeMetricFamily("bot_guilds", "Guilds the bot is in.", value=self._guilds())
