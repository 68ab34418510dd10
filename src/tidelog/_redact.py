"""`redact_url`: a store URL with its secrets masked, for anything a person may read.

Store URLs carry credentials (`postgresql://user:password@host/db`, a token in
the query string), and they end up in start-up banners, log lines, metric
labels and error messages, which land in terminals, log stores and tickets.
Every place that shows a URL goes through this one helper, so a new secret
form is masked everywhere at once. It only parses, never raises: a URL too
malformed to parse is masked whole rather than echoed.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Final

__all__ = ["REDACTED", "redact_url"]

REDACTED: Final = "***"
# query option names whose values are secrets (matched anywhere in the name:
# `token`, `access_token`, `api_key`, `password`, `sslpassword`, `client_secret`...)
_SECRET_NAMES: Final = re.compile(
    r"token|passw|pwd|secret|key|auth|credential|signature|sig$", re.IGNORECASE
)


def redact_url(url: str) -> str:
    """`url` with the userinfo password and secret-looking query values replaced by `***`."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{REDACTED}@{host}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_NAMES.search(k) for k, _ in pairs):
            query = "&".join(
                f"{urllib.parse.quote(k, safe='')}="
                + (REDACTED if _SECRET_NAMES.search(k) else urllib.parse.quote(v, safe="/:,"))
                for k, v in pairs
            )
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    # by hand, not `urlunsplit`, which drops the `//` of `sqlite:///path` (no host)
    head = f"{parts.scheme}://{netloc}" if "//" in url else parts.scheme + ":"
    return (
        head
        + parts.path
        + (f"?{query}" if query else "")
        + (f"#{parts.fragment}" if parts.fragment else "")
    )
