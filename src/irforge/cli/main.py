"""Command line entrypoint of irforge (the `irforge` console script and `python -m irforge`)."""

from __future__ import annotations

import os
import traceback
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from irforge import __version__
from irforge.errors import ToolchainError

from . import build as build_cli
from . import compile as compile_cli
from . import convert as convert_cli
from . import download as download_cli
from . import export as export_cli
from . import inspect as inspect_cli
from . import models as models_cli
from . import run as run_cli
from . import serve as serve_cli
from . import shard as shard_cli

EXIT_USER_ERROR = 2
EXIT_INTERNAL = 1


def _debug(ctx: typer.Context) -> bool:
    return bool(os.environ.get("IRFORGE_DEBUG")) or bool((ctx.obj or {}).get("debug"))


class _Group(TyperGroup):
    """Maps failures to one line on stderr: exit 2 for bad input, 1 for internal errors."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except ToolchainError as e:
            if _debug(ctx):
                traceback.print_exc()
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except BrokenPipeError:  # `irforge inspect ... | head`
            raise typer.Exit(0) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as e:
            if _debug(ctx):
                traceback.print_exc()
            else:
                typer.echo(
                    f"internal error: {type(e).__name__}: {e} (re-run with --debug for the "
                    "traceback, and please report it)",
                    err=True,
                )
            raise typer.Exit(EXIT_INTERNAL) from None


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
        bool, typer.Option("--debug", help="Show full tracebacks (also IRFORGE_DEBUG=1).")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    ctx.obj = {"debug": debug}


app.command(name="inspect")(inspect_cli.inspect_cmd)
app.command(name="download")(download_cli.download_cmd)
app.command(name="models")(models_cli.models_cmd)
app.command(name="convert")(convert_cli.convert_cmd)
app.command(name="shard")(shard_cli.shard_cmd)
app.command(name="export")(export_cli.export_cmd)
app.command(name="compile")(compile_cli.compile_cmd)
app.command(name="run")(run_cli.run_cmd)
app.command(name="build")(build_cli.build_cmd)
app.command(name="serve")(serve_cli.serve_cmd)


def main() -> None:
    app()
