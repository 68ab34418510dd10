"""The `tidelog` command line (also `python -m tidelog`): the application, assembled.

Every command is a small sync wrapper that runs async code with
`asyncio.run` (through `run`) against the store named by the global
`--store URL` (or `TIDELOG_STORE`, default `tidelog.DEFAULT_STORE_URL`).
`--json` switches every command's output to JSON lines for scripts.

Errors are handled in exactly one place, `_Group.invoke`: a `TidelogError`
(bad stream name, wrong expected version, deleted stream, unknown URL
scheme, ...) or malformed JSON from the command line becomes one line on
stderr and exit code 1, never a traceback. Anything else is a bug and keeps
its traceback.

This module only assembles: each area's commands live in their own module
(`_cli_store`, `consumers/_cli`, `schemas/_cli`, `projections/_cli`,
`_cli_admin`, `_cli_transfer`, `server/_cli`, `_cli_status`, `_cli_keys`,
`_cli_retention`, `_cli_scheduled`), imported plainly below, and each exposes
`register(app)`. A command module is a leaf: it takes `settings(ctx)`,
`run(...)`, `emit(...)` and `parse_json(...)` from `tidelog._cli_kit`, never
from here. A command module that does not exist is skipped; any other import
error is raised, so a broken module is never silently hidden. Command modules
import heavy optional dependencies inside their command functions, so that
`tidelog --help` works on a base install.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Annotated, Any, Final

import msgspec
import typer

import tidelog
from tidelog._cli_kit import (
    Settings,
    emit,
    event_to_json,
    json_encoder,
    parse_expected_version,
    parse_json,
    run,
    settings,
)
from tidelog.errors import TidelogError

__all__ = [
    "app",
    "emit",
    "event_to_json",
    "main",
    "parse_expected_version",
    "parse_json",
    "run",
    "settings",
]


class _Group(typer.core.TyperGroup):
    """The one place where errors become a one-line message and an exit code.

    It also shapes the command line as most CLIs do: `--json` works after the
    command too (`tidelog read order-1 --json`), and flags show no value type
    in help.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _quiet_flags(self)

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)
        _quiet(params)  # Typer adds the completion flags after __init__
        return params

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if ctx.parent is None:
            args = _global_json_first(args)
        result: list[str] = super().parse_args(ctx, args)
        return result

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except TidelogError as exc:
            _fail(ctx, type(exc).__name__, exc.message_for("cli"))
        except (msgspec.DecodeError, json.JSONDecodeError) as exc:
            _fail(ctx, "InvalidInput", f"invalid JSON: {exc}")
        except BrokenPipeError:
            # The reader went away (`tidelog log | head`): stop quietly, like other tools.
            # Point stdout at /dev/null so flushing it at exit cannot raise again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(141) from None


def _global_json_first(args: list[str]) -> list[str]:
    """`args` with every `--json` (up to a `--`) moved to the front, where the global
    option is parsed: scripts and people put it after the command as often as before."""
    end = args.index("--") if "--" in args else len(args)
    head = args[:end]
    if "--json" not in head:
        return args
    return ["--json", *(a for a in head if a != "--json"), *args[end:]]


def _quiet_flags(command: Any) -> None:
    """Show flags without a value type in help, in `command` and every subcommand.

    A flag takes no value, but Typer's help writes `--json <bool>`, which
    reads as if it took one. An empty metavar leaves the column blank; the
    help option, made on demand, is treated when it is made.
    """
    _quiet(command.params)
    make_help_option = command.get_help_option

    def get_help_option(ctx: Any) -> Any:
        option = make_help_option(ctx)
        if option is not None and option.metavar is None:
            option.metavar = ""
        return option

    command.get_help_option = get_help_option
    for sub in getattr(command, "commands", {}).values():
        _quiet_flags(sub)


def _quiet(params: list[Any]) -> None:
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


def _fail(ctx: Any, kind: str, message: str) -> None:
    """Print one line on stderr (a JSON object with `--json`) and exit with status 1."""
    message = " ".join(message.split())  # one line, whatever the message contains
    if settings(ctx).json:
        typer.echo(json_encoder.encode({"error": kind, "message": message}), err=True)
    else:
        typer.echo(f"error: {kind}: {message}", err=True)
    raise typer.Exit(1)


app = typer.Typer(
    name="tidelog",
    cls=_Group,
    help="tidelog: an event store and a message queue in one.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _typed(ctx: typer.Context, name: str) -> bool:
    """Whether the option `name` was typed on the command line (not from the environment).

    Compared by name: Typer may carry its own copy of Click's `ParameterSource`.
    """
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _print_version(value: bool | None) -> None:
    if value:
        typer.echo(f"tidelog {tidelog.__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    ctx: typer.Context,
    store: Annotated[
        str,
        typer.Option(
            "--store",
            envvar="TIDELOG_STORE",
            help="Store URL: sqlite:///path.db, memory://, postgresql://..., nats://..., "
            "http(s)://...",
        ),
    ] = tidelog.DEFAULT_STORE_URL,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json", help="Print JSON lines instead of tables (before or after the command)."
        ),
    ] = False,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="TIDELOG_TOKEN",
            show_envvar=True,
            help="Bearer token (API key or JWT) for an http(s):// store. Prefer --token-file "
            "or the environment: an option shows in the process list.",
        ),
    ] = None,
    token_file: Annotated[
        str | None,
        typer.Option(
            "--token-file",
            envvar="TIDELOG_TOKEN_FILE",
            show_envvar=True,
            help="File whose first line is the bearer token (a mounted secret, for scripts).",
        ),
    ] = None,
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = None,
) -> None:
    if token is not None and token_file is not None:
        # one typed, one from the environment: the one typed wins; both typed is a mistake
        typed = {name for name in ("token", "token_file") if _typed(ctx, name)}
        if typed == {"token"}:
            token_file = None
        elif typed == {"token_file"}:
            token = None
        else:
            raise typer.BadParameter(
                "give a token or a token file, not both", param_hint="--token/--token-file"
            )
    ctx.obj = Settings(store=store, json=json_output, token=token, token_file=token_file)


# --------------------------------------------------------------------------- command modules

_COMMAND_MODULES: Final[list[ModuleType]] = []
"""The modules that add commands, in help order: each has `register(app: typer.Typer)`."""


@contextlib.contextmanager
def _command_module(name: str) -> Iterator[None]:
    """Guard the plain import of the command module `name`, then list it.

    Only "this module (or its package) does not exist" is skipped: a missing
    dependency of an existing module is an error, never hidden.
    """
    try:
        yield
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            return
        raise
    _COMMAND_MODULES.append(sys.modules[name])


with _command_module("tidelog._cli_store"):
    import tidelog._cli_store
with _command_module("tidelog.consumers._cli"):
    import tidelog.consumers._cli
with _command_module("tidelog.schemas._cli"):
    import tidelog.schemas._cli
with _command_module("tidelog.projections._cli"):
    import tidelog.projections._cli
with _command_module("tidelog._cli_admin"):
    import tidelog._cli_admin
with _command_module("tidelog._cli_transfer"):
    import tidelog._cli_transfer
with _command_module("tidelog._cli_retention"):
    import tidelog._cli_retention
with _command_module("tidelog.server._cli"):
    import tidelog.server._cli
with _command_module("tidelog._cli_status"):
    import tidelog._cli_status
with _command_module("tidelog._cli_keys"):
    import tidelog._cli_keys
with _command_module("tidelog._cli_scheduled"):
    import tidelog._cli_scheduled


def _register_extensions(target: typer.Typer) -> None:
    """Let every command module add its commands to `target`, in help order."""
    for module in _COMMAND_MODULES:
        module.register(target)


_register_extensions(app)


def main() -> None:
    """The console script `tidelog`."""
    app(prog_name="tidelog")
