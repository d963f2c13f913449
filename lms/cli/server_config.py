"""`lms server config get|set|list` and `lms server key create|list|revoke`."""

import contextlib
import json as jsonlib
from typing import Annotated, Any

import typer

from lms.cli import output
from lms.cli.common import EXIT_BAD_USAGE, JsonOption, handle_errors, local_client
from lms.client import ApiError

config_app = typer.Typer(
    help="Every server setting, persisted in the config file.", no_args_is_help=True
)
key_app = typer.Typer(help="API keys for the HTTP API.", no_args_is_help=True)


def _show(value: Any) -> str:
    return jsonlib.dumps(value) if not isinstance(value, str) else value


@config_app.command("list")
@handle_errors
def list_(json: JsonOption = False) -> None:
    """Every setting with its current value."""
    config = local_client().config()
    if json:
        output.json_out(config["settings"])
        return
    width = max(map(len, config["settings"]))
    for name, value in config["settings"].items():
        marker = "" if value == config["defaults"][name] else "  (changed)"
        output.data(f"{name.ljust(width)}  {_show(value)}{marker}")
    output.info(f"\nConfig file: {config['config_file']}")


@config_app.command()
@handle_errors
def get(key: Annotated[str, typer.Argument(help="The setting.")], json: JsonOption = False) -> None:
    """One setting's value."""
    config = local_client().config()
    if key not in config["settings"]:
        output.error(f"unknown setting {key!r}; see `lms server config list`")
        raise typer.Exit(1)
    value = config["settings"][key]
    if json:
        output.json_out(value)
    else:
        output.data(_show(value))


@config_app.command("set")
@handle_errors
def set_(
    key: Annotated[str, typer.Argument(help="The setting.")],
    value: Annotated[str, typer.Argument(help="Its new value (lists: comma-separated, or JSON).")],
    json: JsonOption = False,
) -> None:
    """Change a setting: saved in the config file, applied now where it can be."""
    sent: Any = value
    if value.startswith(("[", "{")):
        with contextlib.suppress(ValueError):
            sent = jsonlib.loads(value)
    try:
        reply = local_client().set_config(key, sent)
    except ApiError as exc:
        if exc.status != 400:
            raise
        # The daemon refused the value itself (not a number, NaN, out of range): bad usage.
        output.error(str(exc))
        raise typer.Exit(EXIT_BAD_USAGE) from None
    if json:
        output.json_out(reply)
        return
    output.info(
        f"{reply['key']} = {_show(reply['value'])} (saved in {reply['config_file']}; "
        f"applied {reply['applied']})"
    )


@key_app.command()
@handle_errors
def create(
    name: Annotated[str | None, typer.Option("--name", help="A name to recognise it by.")] = None,
    scope: Annotated[str, typer.Option("--scope", help="inference or admin.")] = "inference",
    json: JsonOption = False,
) -> None:
    """Create an API key. It is shown once: store it now."""
    if scope not in ("inference", "admin"):
        raise typer.BadParameter("use inference or admin", param_hint="--scope")
    reply = local_client().create_key(name, scope)
    if json:
        output.json_out(reply)
        return
    output.data(reply["key"])
    output.info(
        f"Created {reply['scope']} key {reply['name']!r} (id {reply['id']}). It is shown "
        "only this once; send it as `Authorization: Bearer <key>`."
    )


@key_app.command("list")
@handle_errors
def list_keys(json: JsonOption = False) -> None:
    """The API keys (never the keys themselves)."""
    keys = local_client().keys()
    if json:
        output.json_out(keys)
    elif not keys:
        output.data("No API keys. Create one with `lms server key create`.")
    else:
        for key in keys:
            output.data(f"{key['id']}  {key['name']}  {key['scope']}  {key['hint']}")


@key_app.command()
@handle_errors
def revoke(key: Annotated[str, typer.Argument(help="The key's id or name.")]) -> None:
    """Revoke an API key: it stops working at once."""
    reply = local_client().revoke_key(key)
    output.info(f"Revoked key {reply['name']!r} ({reply['id']}).")
