"""Command line entrypoint of irforge (the `irforge` console script and `python -m irforge`)."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from difflib import get_close_matches
from typing import Annotated, Any

import typer
from typer.core import TyperGroup
from typer.main import get_command_from_info
from typer.models import CommandInfo

try:  # Typer 0.22+ vendors click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older Typer on click
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError  # type: ignore

from irforge import __version__
from irforge.errors import ToolchainError

EXIT_USER_ERROR = 2
EXIT_INTERNAL = 1


_debug_anywhere = False  # `--debug` seen after the command name, in this invocation


def _debug() -> bool:
    return _debug_anywhere or bool(os.environ.get("IRFORGE_DEBUG"))


def _tidy(command: Any) -> Any:
    """Flags take no value: show none in --help (Typer 0.29 prints `<bool>` beside them)."""
    for param in command.params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    if not getattr(command, "_irforge_tidy", False):  # --help is made per context
        make_help = command.get_help_option

        def get_help_option(ctx: Any) -> Any:
            option = make_help(ctx)
            if option is not None and option.metavar is None:
                option.metavar = ""
            return option

        command.get_help_option = get_help_option
        command._irforge_tidy = True
    return command


# The subcommands, in --help's order: name -> "module:function". A command's module (and what
# it imports: numpy, the manifest, the runtime) is loaded only when that command runs or help
# lists it; loading all of them cost 0.1-0.2 s before every command, a sixth of a 2 GiB convert.
COMMANDS = {
    "inspect": "irforge.cli.inspect:inspect_cmd",
    "download": "irforge.cli.download:download_cmd",
    "models": "irforge.cli.models:models_cmd",
    "convert": "irforge.cli.convert:convert_cmd",
    "shard": "irforge.cli.shard:shard_cmd",
    "export": "irforge.cli.export:export_cmd",
    "compile": "irforge.cli.compile:compile_cmd",
    "run": "irforge.cli.run:run_cmd",
    "build": "irforge.cli.build:build_cmd",
    "serve": "irforge.cli.serve:serve_cmd",
    "deploy": "irforge.cli.deploy:deploy_cmd",
}


class _Group(TyperGroup):
    """Maps failures to one line on stderr: exit 2 for bad input, 1 for internal errors.

    Usage errors too (click's are a boxed, multi-line report): `error: <what> (see `irforge
    CMD --help`)`. `--debug` is accepted anywhere on the line, not only before the command.
    Subcommands load on first use (COMMANDS).
    """

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, function = COMMANDS[cmd_name].split(":")
            callback = getattr(importlib.import_module(module), function)
            self.commands[cmd_name] = get_command_from_info(
                CommandInfo(name=cmd_name, callback=callback),
                pretty_exceptions_short=app.pretty_exceptions_short,
                rich_markup_mode=app.rich_markup_mode,
            )
        command = super().get_command(ctx, cmd_name)
        return _tidy(command) if command is not None else None

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except UsageError as e:  # suggest among every command, loaded or not
            matches = get_close_matches(args[0], list(COMMANDS)) if args else []
            if matches and "Did you mean" not in e.message:
                suggestions = ", ".join(repr(m) for m in matches)
                e.message = f"{e.message.rstrip('.')}. Did you mean {suggestions}?"
            raise

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        global _debug_anywhere
        args = list(sys.argv[1:] if args is None else args)
        end = args.index("--") if "--" in args else len(args)
        _debug_anywhere = "--debug" in args[:end]
        args = [a for i, a in enumerate(args) if i >= end or a != "--debug"]
        _tidy(self)
        try:
            # the name errors and help show, however the app is started (python -m, CliRunner)
            prog_name = "irforge"
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as e:  # bare `irforge`: the help itself
            e.show()
            code = e.exit_code
        except UsageError as e:
            where = e.ctx.command_path if e.ctx else "irforge"
            typer.echo(f"error: {e.format_message()} (see `{where} --help`)", err=True)
            code = e.exit_code
        except typer.Abort:
            typer.echo("interrupted", err=True)
            code = 130
        except ClickException as e:
            typer.echo(f"error: {e.format_message()}", err=True)
            code = e.exit_code
        except ToolchainError as e:  # bad input, said in one line
            if _debug():
                traceback.print_exc()
            typer.echo(f"error: {e}", err=True)
            code = EXIT_USER_ERROR
        except SystemExit as e:
            # click exits 1 on a closed stdout (`irforge inspect ... | head`): not a failure
            if not isinstance(e.__context__, BrokenPipeError):
                raise
            code = 0
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            code = 130
        except Exception as e:
            if _debug():
                traceback.print_exc()
            else:
                typer.echo(
                    f"internal error: {type(e).__name__}: {e} (re-run with --debug for the "
                    "traceback, and please report it)",
                    err=True,
                )
            code = EXIT_INTERNAL
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=_Group,
    help="irforge: from published LLM weights to a running IREE server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"irforge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="Show full tracebacks (also IRFORGE_DEBUG=1); anywhere on the line."
        ),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    ctx.obj = {"debug": debug}


def main() -> None:
    app()
