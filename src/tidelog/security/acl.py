"""Access control: which principal may read, write or administer which streams and groups.

A grant names a principal, a permission and a resource:

- `stream:NAME`   exactly that stream;
- `category:NAME` every stream of that category (`NAME` and `NAME-…`);
- `prefix:NAME`   every stream starting with NAME, which must end at a
                  delimiter (`-`, `:` or `@`), so `prefix:orders-` covers
                  `orders-1` but nothing can make a grant on `orders` cover
                  `orders_secret` or `orderslist`;
- `$all`          the global log (reading every category at once);
- `group:NAME`    exactly that consumer group (on any category);
- `group-prefix:NAME-`  every consumer group starting with NAME, which must
                  end at a delimiter, as for `prefix:`;
- `*`             every stream, system streams included, and every group
                  (for admins).

Consumer groups are a resource of their own, as in Kafka's group ACLs: a
group has no owner in the store, so without a grant on it anyone who may read
its category could join it, evict its members and move its checkpoints.
Membership, commits, fetches and nacks of group G need `read` on G besides
`read` on the category; stream, category, prefix and `$all` grants never cover
a group, and group grants never cover a stream.

System streams (`$…`) are covered only by grants that name them (`stream:$…`,
`category:$dlq`, `prefix:$dlq-`) or by `*`. `admin` implies `write` and
`read`; `write` does not imply `read`. The streams of the store's own keys and
grants (`$keys`, `$grants`, see `keystore`) are for admins only, whatever the
grant: writing them would hand out any permission. Names are compared exactly, after the
same validation as stream names, so case, unicode look-alikes and zero-width
characters never match.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import msgspec

from tidelog.errors import InvalidInput
from tidelog.model import category_of, validate_stream_name

__all__ = [
    "CREDENTIAL_STREAMS",
    "GRANTS_STREAM",
    "KEYS_STREAM",
    "Access",
    "Grant",
    "Permission",
    "parse_grant",
]

KEYS_STREAM = "$keys"
"""API keys created at runtime (`keystore`): digests, never the keys."""
GRANTS_STREAM = "$grants"
"""Grants added at runtime (`keystore`)."""
CREDENTIAL_STREAMS = frozenset({KEYS_STREAM, GRANTS_STREAM})
"""Streams only an admin (`admin` on `*`) may read or write, whatever else is granted."""

_DELIMITERS = ("-", ":", "@")
_KINDS = ("stream", "category", "prefix", "group", "group-prefix")


class Permission(enum.Enum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"

    def covers(self, wanted: Permission) -> bool:
        return self is wanted or self is Permission.ADMIN


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    principal: str
    permission: Permission
    resource: str

    def __post_init__(self) -> None:
        _check_resource(self.resource)

    def covers_stream(self, stream: str) -> bool:
        kind, _, name = self.resource.partition(":")
        if self.resource == "*":
            return True
        if self.resource == "$all":
            return not stream.startswith("$")
        if kind == "stream":
            return stream == name
        if kind == "category":
            return category_of(stream) == name
        if kind == "prefix":
            return stream.startswith(name)
        return False

    def covers_category(self, category: str) -> bool:
        """Whether this grant covers every stream of `category` (for category reads)."""
        kind, _, name = self.resource.partition(":")
        if self.resource == "*" or (self.resource == "$all" and not category.startswith("$")):
            return True
        return kind == "category" and name == category

    def covers_group(self, group: str) -> bool:
        """Whether this grant covers consumer group `group` (only group grants and `*` do)."""
        kind, _, name = self.resource.partition(":")
        if self.resource == "*":
            return True
        if kind == "group":
            return group == name
        if kind == "group-prefix":
            return group.startswith(name)
        return False


def _check_resource(resource: str) -> None:
    if resource in ("*", "$all"):
        return
    kind, sep, name = resource.partition(":")
    if not sep or kind not in _KINDS:
        raise InvalidInput(
            f"invalid grant resource {resource!r}: use stream:NAME, category:NAME, "
            "prefix:NAME-, group:NAME, group-prefix:NAME-, $all or *"
        )
    if kind in ("prefix", "group-prefix"):
        if not name.endswith(_DELIMITERS):
            raise InvalidInput(
                f"invalid prefix grant {resource!r}: a prefix must end at a delimiter (- : @)"
            )
        validate_stream_name(name.rstrip("-:@") or "x")
    else:
        validate_stream_name(name)


def parse_grant(text: str) -> Grant:
    """Parse `principal=permission:resource`, e.g. `billing=read:category:order`."""
    principal, sep, rest = text.partition("=")
    permission, sep2, resource = rest.partition(":")
    if not sep or not sep2 or not principal:
        raise InvalidInput(f"invalid grant {text!r}: use PRINCIPAL=PERMISSION:RESOURCE")
    try:
        perm = Permission(permission)
    except ValueError:
        raise InvalidInput(f"invalid permission {permission!r}: read, write or admin") from None
    return Grant(principal=principal, permission=perm, resource=resource)


class Access:
    """The grants of one principal, answering "may it do this?"."""

    def __init__(self, principal: str, grants: Iterable[Grant]) -> None:
        self.principal = principal
        self.grants = tuple(g for g in grants if g.principal == principal)

    def _has(self, wanted: Permission) -> list[Grant]:
        return [g for g in self.grants if g.permission.covers(wanted)]

    def can_stream(self, stream: str, wanted: Permission) -> bool:
        if stream in CREDENTIAL_STREAMS:
            return self.is_admin
        return any(g.covers_stream(stream) for g in self._has(wanted))

    def can_category(self, category: str, wanted: Permission) -> bool:
        if category in CREDENTIAL_STREAMS:  # a stream without `-` is its own category
            return self.is_admin
        return any(g.covers_category(category) for g in self._has(wanted))

    def can_group(self, group: str, wanted: Permission) -> bool:
        return any(g.covers_group(group) for g in self._has(wanted))

    def can_all(self, wanted: Permission) -> bool:
        """The global log: needs `$all` (or `*`)."""
        return any(g.resource in ("$all", "*") for g in self._has(wanted))

    @property
    def is_admin(self) -> bool:
        return any(g.resource == "*" and g.permission is Permission.ADMIN for g in self.grants)
