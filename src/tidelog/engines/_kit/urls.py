"""Engine options from a store URL's query string."""

from __future__ import annotations

import urllib.parse
from typing import Any, TypeVar

import msgspec

from tidelog.errors import InvalidURL

__all__ = ["config_from_url"]

C = TypeVar("C", bound=msgspec.Struct)

# --------------------------------------------------------------------------- config


def config_from_url(config_type: type[C], url: str, **fixed: Any) -> C:
    """Build an engine's config Struct from a URL's query string.

    `sqlite:///data.db?synchronous=normal&partitions=32` sets the fields
    `synchronous` and `partitions`; unknown or malformed options raise
    `InvalidURL` instead of being silently ignored.
    """
    parsed = urllib.parse.urlsplit(url)
    options: dict[str, Any] = dict(fixed)
    for key, value in urllib.parse.parse_qsl(parsed.query, keep_blank_values=True):
        if key in options:
            raise InvalidURL(url, f"option {key!r} given twice")
        options[key] = value
    known = {f.encode_name for f in msgspec.structs.fields(config_type)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidURL(url, f"unknown option(s) {', '.join(unknown)}; known: {sorted(known)}")
    try:
        return msgspec.convert(options, config_type, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidURL(url, str(exc)) from None
