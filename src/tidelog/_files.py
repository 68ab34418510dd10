"""Files and directories that hold tenants' data: created private to their owner."""

from __future__ import annotations

import contextlib
import os
import pathlib

__all__ = ["make_private_dirs"]


def make_private_dirs(directory: str | os.PathLike[str]) -> None:
    """Create `directory` and its missing parents with mode 0700.

    The store holds every tenant's events: under the usual umask of 022 a plain
    `mkdir -p` would leave them readable by every local user. Directories that
    already exist keep their mode (an operator may have chosen it; a shared
    parent like /var/lib must not be narrowed). `Path.mkdir(parents=True)`
    creates parents with the default mode, hence the walk.
    """
    missing: list[pathlib.Path] = []
    current = pathlib.Path(directory)
    while str(current) not in ("", ".") and not current.exists():
        missing.append(current)
        current = current.parent
    for created in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it first
            created.mkdir(mode=0o700)
