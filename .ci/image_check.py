"""Prove a built tidelog image works: both roles, run from the image's own config.

Called by `.ci/image` after `buildah bud`. Every run goes through
`buildah run --isolation chroot --network host` (this machine has no OCI
runtime): the command is the image's ENTRYPOINT + CMD (or + `worker ...`),
with the image's user, environment and working directory, so what runs is
what a `docker run` of the image would run.

1. Server (the default command, the image's own defaults but for the loopback
   address and a free port): waits for /livez, takes the admin key it printed
   at first start, appends an event over HTTP and reads it back, checks the
   process runs as the image's non-root user and its data landed on the
   volume, runs the image's HEALTHCHECK (passes; fails once stopped), stops
   it with SIGTERM and requires exit status 0.
2. Worker (`worker ci_app:app --metrics-port N`) against PostgreSQL: events
   appended on the host are handled inside the image (their results read
   back), /livez and /readyz answer on the metrics port, SIGTERM, exit 0.

Then it writes a JSON report: the image's and its base's sizes (the root
file systems, uncompressed) and the step timings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PG_DSN = os.environ.get("TIDELOG_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
UID = 10001
"""The image's user (Containerfile)."""


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def inspect(image: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(sh("buildah", "inspect", "--type", "image", image))
    return data


def rootfs_bytes(image: str) -> int:
    """The uncompressed size of the image's file system (mounted, summed by du)."""
    ctr = sh("buildah", "from", "--pull-never", "--quiet", image).strip()
    try:
        mount = sh("buildah", "mount", ctr).strip()
        return int(sh("du", "-sb", mount).split()[0])
    finally:
        sh("buildah", "rm", ctr)


def http(method: str, url: str, key: str | None = None, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            if resp.headers.get_content_type() != "application/json":
                return resp.status, raw.decode(errors="replace")
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def wait_for(what: str, check: Any, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll `check` until true; fail at once if the process died (with its log)."""
    for _ in range(600):
        if proc.poll() is not None:
            fail(f"{what}: the process exited with {proc.returncode}", log)
        try:
            if check():
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    fail(f"{what}: not within 60 s", log)


def fail(message: str, log: Path | None = None) -> None:
    if log is not None:
        sys.stderr.write(log.read_text(errors="replace")[-6000:])
    sys.exit(f"image check FAILED: {message}")


class Run:
    """`buildah run` of the image's entrypoint in a new working container."""

    def __init__(self, image: str, config: dict[str, Any], args: list[str], **opts: Any) -> None:
        self.ctr = sh("buildah", "from", "--pull-never", "--quiet", image).strip()
        entry = config.get("Entrypoint") or []
        argv = [*entry, *(args or config.get("Cmd") or [])]
        cmd = ["buildah", "run", "--isolation", "chroot", "--network", "host"]
        for mount in opts.get("volumes", []):
            cmd += ["--volume", mount]
        for name, value in opts.get("env", {}).items():
            cmd += ["--env", f"{name}={value}"]
        cmd += [self.ctr, "--", *argv]
        self.log = Path(tempfile.mkstemp(prefix="tidelog-image-", suffix=".log")[1])
        self.out = self.log.open("wb")
        print("  $", " ".join(cmd[-len(argv) - 1 :]), flush=True)
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def descendants(self) -> list[int]:
        """The processes under this `buildah run` (its chroot-exec and the image's command)."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], [self.proc.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append(child)
                todo.append(child)
        return found

    def pid(self, marker: str) -> int:
        """The pid of the image's process (under this run; its command line has `marker`)."""
        for pid in self.descendants():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline and "buildah" not in cmdline and "/opt/tidelog/" in cmdline:
                return pid
        fail(f"no process of the image runs {marker!r}", self.log)
        raise AssertionError  # unreachable

    def stop(self, marker: str) -> int:
        """SIGTERM the image's process, as a container runtime's stop does; its exit status."""
        pid = self.pid(marker)
        os.kill(pid, signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            fail(f"{marker}: still running 60 s after SIGTERM", self.log)
        self.out.close()
        return rc

    def remove(self) -> None:
        """Stop what still runs; remove the working container and the log (`fail` printed it)."""
        if self.proc.poll() is None:
            # killing buildah alone would leave the image's process running
            for pid in self.descendants():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait()
        subprocess.run(["buildah", "rm", self.ctr], capture_output=True, check=False)
        self.log.unlink(missing_ok=True)


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def check_config(info: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = info["Docker"]["config"]
    labels = config.get("Labels") or {}
    for name in ("source", "version", "licenses", "revision"):
        if not labels.get(f"org.opencontainers.image.{name}"):
            fail(f"label org.opencontainers.image.{name} is missing")
    if config.get("User") != f"{UID}:{UID}":
        fail(f"the image's user is {config.get('User')!r}, not {UID}:{UID}")
    if config.get("Entrypoint") != ["tidelog"] or config.get("Cmd") != ["serve"]:
        fail(f"entrypoint/cmd: {config.get('Entrypoint')} {config.get('Cmd')}")
    if not (config.get("Healthcheck") or {}).get("Test"):
        fail("the image has no HEALTHCHECK")
    if "/var/lib/tidelog" not in (config.get("Volumes") or {}):
        fail("the image declares no volume /var/lib/tidelog")
    return config


def healthcheck(ctr: str, config: dict[str, Any], port: int) -> int:
    """Run the image's HEALTHCHECK command in `ctr` (as Docker would); its exit status."""
    kind, *command = config["Healthcheck"]["Test"]
    argv = ["/bin/sh", "-c", command[0]] if kind == "CMD-SHELL" else command
    run = ["buildah", "run", "--isolation", "chroot", "--network", "host"]
    done = subprocess.run(
        [*run, "--env", f"TIDELOG_PORT={port}", ctr, "--", *argv],
        capture_output=True,
        check=False,
    )
    return done.returncode


def server_role(image: str, config: dict[str, Any]) -> None:
    data = Path(tempfile.mkdtemp(prefix="tidelog-image-data-"))
    os.chown(data, UID, UID)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    run = Run(
        image,
        config,
        [],
        volumes=[f"{data}:/var/lib/tidelog:rw"],
        # A container binds every interface by default (and then needs auth
        # configured); on the host network the check binds loopback, where the
        # server makes its first-start admin key and prints it.
        env={"TIDELOG_HOST": "127.0.0.1", "TIDELOG_PORT": str(port)},
    )
    try:
        wait_for("server /livez", lambda: http("GET", f"{base}/livez")[0] == 200, run.proc, run.log)
        found = re.search(r"admin key \(shown once, keep it\): (\S+)", run.text())
        if not found:
            fail("the server printed no admin key", run.log)
        key = found.group(1)
        if uid_of(run.pid("serve")) != UID:
            fail("the server does not run as the image's user")
        stream = f"ciimage-{secrets.token_hex(4)}"
        status, body = http(
            "POST",
            f"{base}/v1/streams/{stream}/events",
            key,
            {"events": [{"type": "Pinged", "data": {"n": 1}}], "expected_version": "no_stream"},
        )
        if status != 200:
            fail(f"append: HTTP {status}: {body}", run.log)
        if http("GET", f"{base}/v1/streams/{stream}/events")[0] != 401:
            fail("a read without the key was not refused")
        status, page = http("GET", f"{base}/v1/streams/{stream}/events", key)
        events = page["events"] if status == 200 else []
        if [(e["type"], e["data"]) for e in events] != [("Pinged", {"n": 1})]:
            fail(f"read back: HTTP {status}: {page}", run.log)
        status, _ = http("GET", f"{base}/readyz")
        if status != 200:
            fail(f"/readyz: {status}", run.log)
        # the API docs work offline in the image: the document, both pages and their assets
        status, document = http("GET", f"{base}/schema/openapi.json")
        if isinstance(document, str) and status == 200:  # served as application/vnd.oai…+json
            document = json.loads(document)
        if status != 200 or "/v1/streams/{stream}/events" not in document.get("paths", {}):
            fail(f"/schema/openapi.json: HTTP {status}", run.log)
        for page, asset in (
            ("/schema", "/schema/assets/redoc/bundles/redoc.standalone.js"),
            ("/schema/swagger", "/schema/assets/swagger-ui-dist/swagger-ui-bundle.js"),
        ):
            status, html = http("GET", f"{base}{page}")
            if status != 200 or asset not in html:
                fail(f"{page}: HTTP {status}, without {asset}", run.log)
            if http("GET", f"{base}{asset}")[0] != 200:
                fail(f"{asset} is not served", run.log)
        if healthcheck(run.ctr, config, port) != 0:
            fail("the image's HEALTHCHECK fails on a running server", run.log)
        rc = run.stop("serve")
        if rc != 0:
            fail(f"the server exited with {rc} after SIGTERM", run.log)
        if healthcheck(run.ctr, config, port) == 0:
            fail("the image's HEALTHCHECK passes with the server stopped")
        if "Traceback" in run.text():
            fail("the server logged a traceback", run.log)
        db = data / "tidelog.db"
        if not db.exists() or db.stat().st_uid != UID:
            fail("the store is not on the volume, owned by the image's user")
        print(f"  server: appended, read {stream} with the printed key; HEALTHCHECK; SIGTERM -> 0")
    finally:
        run.remove()
        shutil.rmtree(data, ignore_errors=True)


async def _store(url: str, action: str, count: int = 0) -> int:
    sys.path.insert(0, str(ROOT / "src"))
    import tidelog

    async with tidelog.connect(url) as store:
        if action == "append":
            for n in range(count):
                await store.append(
                    f"ciorder-{n}", [tidelog.NewEvent(type="Ordered", data=b'{"n": %d}' % n)]
                )
            return count
        return await store.count_events(0, ["cidone"])


async def _drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def worker_role(image: str, config: dict[str, Any]) -> None:
    schema = f"ci_image_{secrets.token_hex(4)}"
    url = f"{PG_DSN}?schema={schema}"
    count = 20
    asyncio.run(_store(url, "append", count))
    port = free_port()
    run = Run(
        image,
        config,
        ["worker", "ci_app:app", "--metrics-port", str(port), "--metrics-host", "127.0.0.1"],
        volumes=[f"{ROOT / '.ci' / 'image_app'}:/app:ro"],
        env={"TIDELOG_STORE": url, "PYTHONPATH": "/app"},
    )
    try:
        metrics = f"http://127.0.0.1:{port}"
        wait_for(
            "worker /livez", lambda: http("GET", f"{metrics}/livez")[0] == 200, run.proc, run.log
        )
        wait_for(
            "worker /readyz", lambda: http("GET", f"{metrics}/readyz")[0] == 200, run.proc, run.log
        )
        wait_for(
            "the worker's results",
            lambda: asyncio.run(_store(url, "count")) == count,
            run.proc,
            run.log,
        )
        if uid_of(run.pid("worker")) != UID:
            fail("the worker does not run as the image's user")
        rc = run.stop("worker")
        if rc != 0:
            fail(f"the worker exited with {rc} after SIGTERM", run.log)
        if "worker_stopped" not in run.text() or "Traceback" in run.text():
            fail("the worker did not stop cleanly", run.log)
        print(f"  worker: handled {count} events from PostgreSQL; /livez, /readyz; SIGTERM -> 0")
    finally:
        run.remove()
        asyncio.run(_drop_schema(schema))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("--timing", action="append", default=[])
    parser.add_argument("--base-cache", default="unknown")
    args = parser.parse_args()
    started = time.monotonic()
    config = check_config(inspect(args.image))
    server_role(args.image, config)
    worker_role(args.image, config)
    image_bytes, base_bytes = rootfs_bytes(args.image), rootfs_bytes(args.base)
    timings = {k: int(v) for k, v in (t.split("=", 1) for t in args.timing)}
    timings["roles"] = round(time.monotonic() - started)
    report = {
        "image": args.image,
        "base": args.base,
        "base_cache": args.base_cache,
        "image_mb": round(image_bytes / 1e6, 1),
        "base_mb": round(base_bytes / 1e6, 1),
        "added_mb": round((image_bytes - base_bytes) / 1e6, 1),
        "added_goal_mb": 60,
        "seconds": timings,
    }
    Path(args.report).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
