"""The pieces the tests drive: `probe sandbox` and the test bot as processes,
the prober's discord.py session in a thread, REST calls as other accounts,
scrapes of the bot's exporter, and the sandbox's ground truth."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from prometheus_client.parser import text_string_to_metric_families

COMPANION = Path(__file__).resolve().parent.parent
REPO = COMPANION.parent
SETUP_HINT = "run scripts/test.sh, which builds `probe` and installs what these tests need"
#: Upper bound on waiting for anything the tests await (never a pacing sleep).
DEADLINE = 30.0


def probe_binary() -> Path:
    """`probe`, as `cargo build` leaves it (PROBE_BIN overrides)."""
    if os.environ.get("PROBE_BIN"):
        path = Path(os.environ["PROBE_BIN"])
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
        if not target.is_absolute():
            target = REPO / target
        path = target / "debug" / "probe"
    if not path.is_file():
        raise RuntimeError(f"{path}: no probe binary; {SETUP_HINT} (or set PROBE_BIN)")
    return path


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        raise RuntimeError(f"promtool is not on PATH (Debian package `prometheus`): {SETUP_HINT}")
    return path


def wait_until(what: str, check: Callable[[], Any], deadline: float = DEADLINE, log: Callable[[], str] = lambda: "") -> Any:
    """Polls `check` until it returns something truthy (for state that is
    only visible by asking, such as a scrape); fails naming `what`."""
    end = time.monotonic() + deadline
    last: Any = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"timed out after {deadline:.0f} s waiting for {what} (last: {last!r})\n{log()}")


class Process:
    """A child process whose stderr is drained into `lines` (for failure messages)."""

    def __init__(self, name: str, args: List[str], env: Optional[Dict[str, str]] = None) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: List[str] = []
        self._stderr_lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._stderr_lines.put(line)
        self._stderr_lines.put(None)

    def wait_stderr(self, predicate: Callable[[str], bool], what: str) -> str:
        end = time.monotonic() + DEADLINE
        while True:
            try:
                line = self._stderr_lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{self.name}: no {what} within {DEADLINE:.0f} s\n{self.log()}") from None
            if line is None:
                raise AssertionError(f"{self.name} exited before {what}\n{self.log()}")
            if predicate(line):
                return line

    def stdout_line(self, what: str) -> str:
        """The next stdout line (read on a thread, so the wait is bounded)."""
        out: "queue.Queue[str]" = queue.Queue()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        threading.Thread(target=lambda: out.put(stdout.readline()), daemon=True).start()
        try:
            line = out.get(timeout=DEADLINE)
        except queue.Empty:
            raise AssertionError(f"{self.name}: no {what} within {DEADLINE:.0f} s\n{self.log()}") from None
        if not line:
            raise AssertionError(f"{self.name} exited before {what}\n{self.log()}")
        return line

    def log(self) -> str:
        return f"--- {self.name} stderr\n" + "\n".join(self.lines[-200:])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} did not stop within {DEADLINE:.0f} s of SIGTERM\n{self.log()}")


# The sandbox's world for these tests: its simulated bot is off, so the
# "twi-bot-shard" account is free for the real discord.py bot; "otherbot" is
# a bot that is not allowed in; "erin" a person. Heartbeats every second, so
# discord.py has a gateway latency soon after READY.
SANDBOX_CONFIG = """
accounts:
  - {name: prober, privileged_intents: [GUILD_PRESENCES, MESSAGE_CONTENT]}
  - {name: twi-bot-shard, privileged_intents: [GUILD_MEMBERS, GUILD_PRESENCES, MESSAGE_CONTENT]}
  - {name: otherbot, privileged_intents: [MESSAGE_CONTENT]}
  - {name: erin, bot: false}
guilds:
  - name: The Wandering Inn
    channels: [{name: probes}, {name: general}, {name: latency}]
gateway:
  heartbeat_interval: 1s
bot:
  enabled: false
"""


class Sandbox:
    def __init__(self, workdir: Path) -> None:
        config = workdir / "sandbox.yaml"
        config.write_text(SANDBOX_CONFIG, encoding="utf-8")
        self.describe_path = workdir / "sandbox.json"
        self.process = Process(
            "probe sandbox",
            [str(probe_binary()), "sandbox", "--config", str(config), "--listen", "127.0.0.1:0", "--describe", str(self.describe_path)],
        )
        # The banner comes after the description is written.
        self.process.wait_stderr(lambda l: l.startswith("sandbox: REST "), "banner")
        self.describe: Dict[str, Any] = json.loads(self.describe_path.read_text(encoding="utf-8"))
        self.accounts = {a["name"]: a for a in self.describe["accounts"]}
        guild = self.describe["guilds"][0]
        self.guild_id = guild["id"]
        self.channels = {c["name"]: c["id"] for c in guild["channels"]}

    def account_id(self, name: str) -> int:
        return int(self.accounts[name]["id"])

    def control(self, method: str, path: str, body: Any = None) -> Any:
        return http_json(method, self.describe["control_url"] + path, body)

    def truth(self, message_id: int) -> Dict[str, Any]:
        return self.control("GET", f"/truth/messages/{message_id}")

    def rest(self, account: str, method: str, path: str, body: Any = None) -> Any:
        """A REST call as `account` (bots send "Bot TOKEN", people the bare token)."""
        a = self.accounts[account]
        auth = f"Bot {a['token']}" if a["bot"] else a["token"]
        return http_json(method, self.describe["api_base"] + path, body, {"Authorization": auth})

    def send(self, account: str, channel: str, content: str) -> Dict[str, Any]:
        return self.rest(account, "POST", f"/channels/{self.channels[channel]}/messages", {"content": content})


def http_json(method: str, url: str, body: Any = None, headers: Optional[Dict[str, str]] = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=DEADLINE) as r:
            text = r.read().decode()
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{method} {url}: HTTP {e.code}: {e.read().decode(errors='replace')}") from None
    return json.loads(text) if text else None


class BotProcess:
    """tests/bot_app.py: the real discord.py bot with the companion."""

    def __init__(self, sandbox: Sandbox, *, override_on_message: bool = False) -> None:
        env = dict(os.environ)
        env.update(
            {
                "TWI_PROBE_ALLOW_IDS": str(sandbox.account_id("prober")),
                "TWI_PROBE_EXPORTER_PORT": "0",
                "TWI_PROBE_EXPORTER_ADDR": "127.0.0.1",
                # The companion under test is this tree's, whatever is installed.
                "PYTHONPATH": os.pathsep.join([str(COMPANION / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        args = [sys.executable, str(COMPANION / "tests" / "bot_app.py"), str(sandbox.describe_path)]
        if override_on_message:
            args.append("--override-on-message")
        self.process = Process("bot_app.py", args, env)
        ready = json.loads(self.process.stdout_line("READY line"))
        self.user_id = int(ready["user_id"])
        self.exporter_url: str = ready["exporter_url"]

    def scrape_text(self) -> str:
        with urllib.request.urlopen(self.exporter_url, timeout=DEADLINE) as r:
            return r.read().decode()

    def scrape(self) -> "Samples":
        return Samples(self.scrape_text())

    def log_lines(self) -> List[Dict[str, Any]]:
        """The bot's JSON log lines so far."""
        out = []
        for line in self.process.lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def stop(self) -> int:
        return self.process.stop()


class Samples:
    """One scrape: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.values: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.values[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def get(self, name: str, default: Optional[float] = None, **labels: str) -> Optional[float]:
        return self.values.get((name, tuple(sorted(labels.items()))), default)

    def value(self, name: str, **labels: str) -> float:
        v = self.get(name, **labels)
        if v is None:
            raise AssertionError(f"no sample {name}{labels} in the scrape:\n{self.text}")
        return v

    def names(self) -> set:
        return {name for name, _ in self.values}


class Prober:
    """The prober's account as a discord.py client on its own thread: sends
    messages and sees every message the gateway delivers."""

    def __init__(self, sandbox: Sandbox) -> None:
        import discord
        import discord.gateway
        import discord.http
        import yarl

        discord.http.Route.BASE = sandbox.describe["api_base"].rstrip("/")
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(sandbox.describe["gateway_url"])
        self.sandbox = sandbox
        self.seen: List[Any] = []
        self._cond = threading.Condition()
        self.loop = asyncio.new_event_loop()
        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_messages = True
        intents.message_content = True
        self.client = discord.Client(intents=intents)
        self._ready = threading.Event()

        @self.client.event
        async def on_ready() -> None:
            self._ready.set()

        @self.client.event
        async def on_message(message: Any) -> None:
            with self._cond:
                self.seen.append(message)
                self._cond.notify_all()

        token = sandbox.accounts["prober"]["token"]
        self._thread = threading.Thread(target=self._run, args=(token,), daemon=True)
        self._thread.start()
        if not self._ready.wait(DEADLINE):
            raise AssertionError("the prober's discord.py session did not get READY")

    def _run(self, token: str) -> None:
        asyncio.set_event_loop(self.loop)

        async def session() -> None:
            async with self.client:  # closes the HTTP session on the way out
                await self.client.start(token)

        self.loop.run_until_complete(session())

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(DEADLINE)

    def send(self, channel: str, content: str) -> Any:
        ch = self.client.get_channel(int(self.sandbox.channels[channel]))
        assert ch is not None, f"the prober cannot see #{channel}"
        return self.call(ch.send(content))

    def wait_for(self, what: str, predicate: Callable[[Any], bool]) -> Any:
        end = time.monotonic() + DEADLINE
        with self._cond:
            while True:
                found = next((m for m in self.seen if predicate(m)), None)
                if found is not None:
                    return found
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} within {DEADLINE:.0f} s")
                self._cond.wait(left)

    def replies_to(self, message_id: int, author_id: int) -> List[Any]:
        with self._cond:
            return [
                m
                for m in self.seen
                if m.author.id == author_id and m.reference is not None and m.reference.message_id == message_id
            ]

    def wait_reply(self, message_id: int, author_id: int) -> Any:
        return self.wait_for(
            f"reply to {message_id}",
            lambda m: m.author.id == author_id and m.reference is not None and m.reference.message_id == message_id,
        )

    def close(self) -> None:
        # start() returns once closed, and the thread's loop ends with it.
        asyncio.run_coroutine_threadsafe(self.client.close(), self.loop)
        self._thread.join(DEADLINE)
        assert not self._thread.is_alive(), "the prober's session did not close"
