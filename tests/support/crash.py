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
