"""Fixtures: one `probe sandbox` (its simulated bot off), one real discord.py
bot with the companion loaded as an extension, and the prober's session, for
the whole run. Tests compare scrapes before and after what they do, so they
do not depend on each other's order."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

# The tests import this tree's companion, whatever version pip installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BotProcess, Prober, Sandbox  # noqa: E402


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path_factory.mktemp("sandbox"))
    yield sb
    assert sb.process.stop() == 0, sb.process.log()


@pytest.fixture(scope="session")
def bot(sandbox: Sandbox) -> Iterator[BotProcess]:
    b = BotProcess(sandbox)
    yield b
    code = b.stop()
    assert code == 0, f"the bot exited with {code}\n{b.process.log()}"


@pytest.fixture(scope="session")
def prober(sandbox: Sandbox, bot: BotProcess) -> Iterator[Prober]:
    p = Prober(sandbox)
    yield p
    p.close()
