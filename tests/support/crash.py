"""Crash tests: a child process SIGKILLed at a random moment, and what it acknowledged.

`test_sqlite_crash` (appends) and `test_retention_crash` (the scavenger) run
the same round over and over: start the child, let it work, kill it, read
the acknowledgements it wrote (one JSON line each) and check the store.
"""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable


def kill_after(args: list[str], wait: Callable[[], None]) -> None:
    """Run `python *args`, call `wait`, then SIGKILL the child.

    The child must have been killed, not have crashed (or ended) on its own: its
    stderr is the assertion's message.
    """
    child = subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait()
    finally:
        child.send_signal(signal.SIGKILL)
        _, err = child.communicate()
    assert child.returncode == -signal.SIGKILL, err.decode()


def ack_lines(path: pathlib.Path) -> list[str]:
    """The acknowledgement lines written whole: a line cut by the kill was never acknowledged."""
    if not path.exists():
        return []
    text = path.read_text()
    return text[: text.rfind("\n") + 1].splitlines()


def wait_for_growth(path: pathlib.Path, deadline: float, then: float) -> None:
    """Return `then` seconds after `path` grew by an acknowledgement (or at the deadline).

    Kill while the child writes, not while it starts: on a loaded machine its
    imports alone can outlast a fixed sleep, and a kill before its first
    acknowledgement tests nothing. A child that reopens the file may first
    write one newline (to close a line the last kill cut): that is no growth.
    """
    start = path.stat().st_size if path.exists() else 0
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > start + 1:
            break
        time.sleep(0.01)
    time.sleep(then)
