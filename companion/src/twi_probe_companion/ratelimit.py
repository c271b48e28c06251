"""Rate-limit headroom from Discord's REST answers, through aiohttp's tracing.

discord.py takes an ``aiohttp.TraceConfig`` as ``http_trace=`` (a documented
``Client`` option) and gives it to the session it makes at login. That is the
one documented way to see every REST answer's headers: the library's own
rate-limit state lives in private attributes that a minor release may rename.
So the bot passes ``http_trace=twi_probe_companion.http_trace()`` when it is
constructed; without it the companion cannot see the headers and exports
neither ``discord_ratelimit_remaining_ratio`` nor ``discord_ratelimited_total``
(absent, rather than a reassuring 1).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Mapping, Optional, Tuple

import aiohttp

#: The guide's "percentage of rate limit remaining" is the lowest seen in this window.
WINDOW_SECONDS = 60.0
#: Bound on remembered answers (Discord allows about 50 requests/s per bot).
MAX_SAMPLES = 10_000


class RateLimitWatch:
    """What the bot's REST answers said about its rate limits.

    Written from the bot's event loop, read from the exporter's thread.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._ratios: Deque[Tuple[float, float]] = deque()
        self._requests = 0
        self._ratelimited = 0
        self._trace: Optional[aiohttp.TraceConfig] = None

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """One REST answer: its status and headers."""
        ratio = _ratio(headers)
        with self._lock:
            self._requests += 1
            if status == 429:
                self._ratelimited += 1
            if ratio is not None:
                self._ratios.append((self._clock(), ratio))
                while len(self._ratios) > MAX_SAMPLES:
                    self._ratios.popleft()

    @property
    def active(self) -> bool:
        """True once a REST answer went through the trace (so it is installed)."""
        with self._lock:
            return self._requests > 0

    @property
    def ratelimited(self) -> int:
        """429 answers seen since the process started."""
        with self._lock:
            return self._ratelimited

    def lowest_ratio(self) -> float:
        """The lowest remaining/limit of the last minute; 1.0 when no answer
        in that minute carried rate-limit headers (nothing was used up)."""
        with self._lock:
            horizon = self._clock() - WINDOW_SECONDS
            while self._ratios and self._ratios[0][0] < horizon:
                self._ratios.popleft()
            return min((r for _, r in self._ratios), default=1.0)

    def trace_config(self) -> aiohttp.TraceConfig:
        """The TraceConfig to give discord.py as ``http_trace=`` (one per watch)."""
        with self._lock:
            if self._trace is None:
                trace = aiohttp.TraceConfig()
                trace.on_request_end.append(self._on_request_end)
                self._trace = trace
            return self._trace

    async def _on_request_end(self, _session: Any, _ctx: Any, params: aiohttp.TraceRequestEndParams) -> None:
        self.observe(params.response.status, params.response.headers)


def _ratio(headers: Mapping[str, str]) -> Optional[float]:
    """remaining/limit from Discord's X-RateLimit-* headers, if both are there."""
    try:
        limit = int(headers["X-RateLimit-Limit"])
        remaining = int(headers["X-RateLimit-Remaining"])
    except (KeyError, ValueError):
        return None
    if limit <= 0:
        return None
    return min(1.0, max(0.0, remaining / limit))


#: The process's watch: rate limits are per bot token, so one per process.
WATCH = RateLimitWatch()


def http_trace() -> aiohttp.TraceConfig:
    """Pass as ``commands.Bot(..., http_trace=twi_probe_companion.http_trace())``."""
    return WATCH.trace_config()
