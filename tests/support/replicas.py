"""Several `tidelog serve` processes on one store: stateless replicas, as users run them.

Each replica is `python -m tidelog serve` in a process of its own, on a free
loopback port (`--port 0`, read back from its banner), with its own data
directory and a config file carrying the test's admin key (only the key's
digest is written). They are started together, as a deployment starts them,
so the store's first-use set-up (a PostgreSQL schema, a JetStream stream)
runs concurrently in all of them. Processes are stopped by pid: SIGTERM for
a clean stop, SIGKILL for a crash. Their output goes to a log file per
replica, read for the banner and shown when a replica fails.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from support.server import ADMIN_KEY
from tidelog.security.tokens import hash_api_key

_BANNER = re.compile(r"tidelog serving .* at (http://127\.0\.0\.1:\d+)/")


class Replica:
    """One `tidelog serve` process."""

    def __init__(self, name: str, store_url: str, workdir: Path, **limits: float) -> None:
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        self.config_path = self.dir / "tidelog.toml"
        lines = [
            f'api_keys = {{ "{hash_api_key(ADMIN_KEY)}" = "admin" }}',
            "[[grants]]",
            'principal = "admin"',
            'permission = "admin"',
            'resource = "*"',
            "[limits]",
            *(f"{key} = {value!r}" for key, value in limits.items()),
        ]
        self.config_path.write_text("\n".join(lines) + "\n")
        self.log_path = self.dir / "serve.log"
        self.store_url = store_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDELOG_")}
        env.update(
            TIDELOG_STORE=self.store_url,
            TIDELOG_DATA_DIR=str(self.dir / "data"),
            TIDELOG_CONFIG=str(self.config_path),
        )
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tidelog", "serve", "--port", "0"],
                cwd=self.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, within: float = 90.0) -> None:
        """Until the banner names the port and `/readyz` answers 200 (a hang guard)."""
        assert self.proc is not None
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica {self.name} exited: {self.output()}")
            if not self.url and (m := _BANNER.search(self.output())):
                self.url = m.group(1)
            if self.url:
                try:
                    if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"replica {self.name} not ready: {self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown at all, requests in flight are cut."""
        if self.running:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.running:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


class Replicas:
    """`count` replicas of one store URL, started together; a context manager."""

    def __init__(self, store_url: str, workdir: Path, count: int = 2, **limits: float) -> None:
        self.all = [Replica(f"r{i + 1}", store_url, workdir, **limits) for i in range(count)]

    def __enter__(self) -> list[Replica]:
        try:
            for replica in self.all:
                replica.start()
            for replica in self.all:
                replica.wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self.all

    def __exit__(self, *exc: object) -> None:
        for replica in self.all:
            replica.stop()
