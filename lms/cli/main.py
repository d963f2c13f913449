"""`lms`: the command line client of the lmsd daemon."""

import sys
from typing import Annotated

import typer

from lms.cli import (
    chat,
    common,
    daemon_cmds,
    info,
    lifecycle,
    log,
    model_defaults,
    models,
    server,
    upstream,
)

app = typer.Typer(
    name="lms",
    help="lms - run local LLMs with the lmsd daemon (LM Studio compatible).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(server.app, name="server")
app.add_typer(daemon_cmds.app, name="daemon")
app.add_typer(log.app, name="log")
app.add_typer(model_defaults.app, name="model-defaults")
app.add_typer(upstream.app, name="upstream")


@app.callback()
def connection(
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            envvar="LMS_HOST",
            help="Drive the daemon at HOST[:PORT] over TCP (ls, ps, load, unload, chat, "
            "log stream, server status, upstream); local-only commands refuse.",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="LMS_API_KEY",
            help="The API key to send to a daemon reached over TCP.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """lms - run local LLMs with the lmsd daemon (LM Studio compatible)."""
    common.set_remote(host, api_key)


app.command()(info.version)
app.command()(info.status)
app.command()(models.ls)
app.command(name="import")(models.import_)
app.command()(lifecycle.load)
app.command()(lifecycle.unload)
app.command()(lifecycle.ps)
app.command()(chat.chat)


# Options that may stand alone, and the value they then take. Typer has no options with
# an optional value, so a bare one is given its value before Typer parses the line.
BARE_OPTION_VALUES = {"--cors": "*"}  # `lms server start --cors`: any origin, as LM Studio


def bare_option_values(argv: list[str]) -> list[str]:
    out = []
    for i, arg in enumerate(argv):
        bare = i + 1 == len(argv) or argv[i + 1].startswith("-")
        if arg in BARE_OPTION_VALUES and bare:
            out.append(f"{arg}={BARE_OPTION_VALUES[arg]}")
        else:
            out.append(arg)
    return out


def main() -> None:
    app(args=bare_option_values(sys.argv[1:]))
