"""The engine's NATS connection: nats-py's client with a cheaper header parser.

Private to `tidelog.engines.nats`. Every event the engine reads arrives as one
direct-get reply carrying about ten headers (the server's `Nats-Subject`,
`Nats-Sequence` and friends, plus those stored with the event), and nats-py
parses them in Python, testing each header name for whitespace one character
at a time in a generator: half the parse, and in a profile of group workers
the largest single cost of delivering an event. `Client` does the same
parse with one regular-expression search per name instead. Its result is the
library's, line for line (tests/test_nats.py compares the two on odd input);
a nats-py without `_parse_header_lines` never calls it, which leaves the
library's own parse in place.
"""

from __future__ import annotations

import re
from typing import Final

from nats.aio.client import Client as NatsClient

__all__ = ["Client"]

_CRLF: Final = b"\r\n"
_WHITESPACE: Final = re.compile(r"\s")
"""What `str.isspace` tells apart in an ASCII name (`\\s` on `str` is Unicode whitespace)."""


class Client(NatsClient):
    """nats-py's client; only the header parse differs (see the module's docstring)."""

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        """`Name: Value` lines to a dict, as nats-py does: lines without a colon, names
        that are not ASCII or hold whitespace are skipped; values are stripped and
        decoded as UTF-8 with replacement."""
        out: dict[str, str] = {}
        search = _WHITESPACE.search
        for line in raw.split(_CRLF):
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            try:
                key = name.strip().decode("ascii")
            except UnicodeDecodeError:
                continue
            if search(key) is not None:
                continue
            out[key] = value.strip().decode("utf-8", "replace")
        return out
