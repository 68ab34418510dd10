"""Issue #18 item 6: store URLs carry credentials, and nothing a person reads may show them.

Start-up banners, log lines, metric labels and errors all show store URLs; each
goes through `tidelog._redact.redact_url`. These cases belong to the attack
catalogue: a secret that reaches a terminal or a log store is leaked.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import tidelog
from tidelog._redact import redact_url

SECRET = "S3cretPw"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql://postgres:{SECRET}@db:5432/x", "postgresql://postgres:***@db:5432/x"),
        (
            f"postgresql://u:{SECRET}@h/db?sslmode=require",
            "postgresql://u:***@h/db?sslmode=require",
        ),
        (f"postgresql://u@h/db?password={SECRET}", "postgresql://u@h/db?password=***"),
        (f"http://h:7070/?token={SECRET}&page=5", "http://h:7070/?token=***&page=5"),
        (f"https://h/?access_token={SECRET}", "https://h/?access_token=***"),
        (f"nats://u:{SECRET}@a:4222,b:4222/?store=x", "nats://u:***@a:4222,b:4222/?store=x"),
        ("sqlite:///tidelog-data/tidelog.db", "sqlite:///tidelog-data/tidelog.db"),
        ("memory://", "memory://"),
        (f"http://[::1:7070/?token={SECRET}", "***"),  # unparsable: masked whole
    ],
)
def test_redact_url_masks_passwords_and_tokens(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        f"http://127.0.0.1:9/?token={SECRET}",
        f"http://127.0.0.1:9/?api_key={SECRET}",
        f"memory://?password={SECRET}",
        f"sqlite:///x.db?secret={SECRET}",
        f"postgresql://postgres:{SECRET}@127.0.0.1:9/db?partitions=0",
        f"mysql://root:{SECRET}@h/db",
    ],
)
async def test_invalid_url_errors_do_not_echo_secrets(url: str) -> None:
    """The remote client's `?token=` error printed the key back, as did every
    engine's "unknown option" error for a password URL."""
    with pytest.raises(tidelog.InvalidURL) as info:
        await tidelog.connect(url)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    assert SECRET not in info.value.url
    if "token" in url:
        assert "connect(url, token=...)" in str(info.value)


def test_serve_never_prints_the_store_password(tmp_path: Path) -> None:
    """`tidelog serve` printed `tidelog serving postgresql://postgres:S3cretPw@…`.

    The memory engine ignores the URL's userinfo, so a served store can carry a
    password without a database; the banner, the logs (JSON lines on a pipe),
    the metrics and the API's answers must all keep it out.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidelog", "serve", "--port", "0"],
        cwd=tmp_path,
        env={
            **_env(),
            "TIDELOG_STORE": f"memory://postgres:{SECRET}@db/",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        while not any("tidelog serving" in line for line in lines):
            line = proc.stdout.readline()
            assert line, f"server exited: {lines}"
            lines.append(line)
        banner = next(line for line in lines if "tidelog serving" in line)
        assert "memory://postgres:***@db/" in banner
        port = banner.split("127.0.0.1:", 1)[1].split("/", 1)[0]
        key = next(line for line in lines if "shown once" in line).rsplit(" ", 1)[1].strip()
        auth = {"Authorization": f"Bearer {key}"}
        for path in ("/metrics", "/v1/info", "/v1/nope"):
            answer = httpx.get(f"http://127.0.0.1:{port}{path}", headers=auth)
            assert SECRET not in answer.text, path
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    output = "".join(lines) + rest
    assert SECRET not in output, output


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("TIDELOG_")}


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://postgres:{SECRET}@127.0.0.1:9/db?partitions=0",
        f"postgresql://postgres:{SECRET}@127.0.0.1:9/db",  # unreachable
        f"http://127.0.0.1:9/?token={SECRET}",
    ],
)
def test_serve_failing_to_open_the_store_does_not_print_the_secret(
    tmp_path: Path, url: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tidelog", "serve", "--port", "0"],
        cwd=tmp_path,
        env={**_env(), "TIDELOG_STORE": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert SECRET not in done.stdout + done.stderr, done.stderr
