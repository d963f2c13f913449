"""`lms`: the command line client of the lmsd daemon."""

import typer

from lms.cli import chat, daemon_cmds, info, lifecycle, log, models, server

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
app.command()(info.version)
app.command()(info.status)
app.command()(models.ls)
app.command(name="import")(models.import_)
app.command()(lifecycle.load)
app.command()(lifecycle.unload)
app.command()(lifecycle.ps)
app.command()(chat.chat)


def main() -> None:
    app()
