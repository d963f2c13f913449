"""`lms model-defaults list|get|set|reset`: the load settings every load of a model
starts from (`lms load`, the load APIs, just-in-time loads); what a load names still wins.

`set` takes any load setting the daemon knows, by the load API's name with dashes
(`--context-length 8192 --parallel 2 --ttl 600 --gpu max --flash-attention off`), so a
setting the daemon gains needs nothing new here. A value is read as JSON when it is JSON
(numbers, true/false), else as text; a bare flag is true (`--no-<name>`: false). The daemon
checks them as it checks a load: a refused value exits 2 and nothing is saved.
"""

import json as jsonlib
from typing import Annotated, Any

import typer

from lms.api.model_defaults import ModelDefaultsEntry, ModelDefaultsRequest
from lms.cli import load_flags, output
from lms.cli.common import EXIT_BAD_USAGE, JsonOption, handle_errors, local_client
from lms.client import ApiError

app = typer.Typer(
    help="Per-model load defaults: the settings every load of a model starts from.",
    no_args_is_help=True,
)

KeyArgument = Annotated[str, typer.Argument(help="Model key, alias, key@quant or path.")]


def _value(text: str) -> Any:
    try:
        return jsonlib.loads(text)
    except ValueError:
        return text


def parse_settings(args: list[str]) -> dict[str, Any]:
    """`--context-length 8192 --flag --no-other --ttl=5m` -> {"context_length": 8192,
    "flag": True, "other": False, "ttl": "5m"}; `lms load`'s flag names (`--mmap`,
    `--keep-in-memory`, `--offload-kv-cache`) become the load API's."""
    settings: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise typer.BadParameter(f"expected --<setting> <value>, got {arg!r}")
        name, eq, text = arg[2:].partition("=")
        value: Any
        if eq:
            value = _value(text)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            i += 1
            value = _value(args[i])
        elif name.startswith("no-"):
            name, value = name.removeprefix("no-"), False
        else:
            value = True
        name = name.replace("-", "_")
        settings[load_flags.API_NAMES.get(name, name)] = value
        i += 1
    if not settings:
        raise typer.BadParameter("name at least one setting, e.g. --context-length 8192")
    return settings


def _show(value: Any) -> str:
    return value if isinstance(value, str) else jsonlib.dumps(value)


def _print(entry: ModelDefaultsEntry, *, json: bool) -> None:
    if json:
        output.json_out(entry)
        return
    if not entry["defaults"]:
        output.data(f"{output.safe(entry['model'])} has no load defaults.")
        return
    width = max(map(len, entry["defaults"]))
    output.data(f"{output.safe(entry['model'])} ({output.safe(entry['path'])}):")
    for name, value in entry["defaults"].items():
        output.data(f"  {name.ljust(width)}  {output.safe(_show(value))}")


def _change(request: ModelDefaultsRequest) -> ModelDefaultsEntry:
    try:
        return local_client().change_model_defaults(request)
    except ApiError as exc:
        if exc.status != 400:
            raise
        output.error(str(exc))  # the daemon refused a value: bad usage, nothing saved
        raise typer.Exit(EXIT_BAD_USAGE) from None


@app.command("list")
@handle_errors
def list_(json: JsonOption = False) -> None:
    """Every model that has load defaults, with them."""
    listing = local_client().model_defaults()
    if json:
        output.json_out(listing)
    elif not listing["models"]:
        output.data("No model has load defaults. Set some with `lms model-defaults set`.")
    else:
        for entry in listing["models"]:
            settings = ", ".join(f"{k}={_show(v)}" for k, v in entry["defaults"].items())
            output.data(f"{output.safe(entry['model'])}  {output.safe(settings)}")


@app.command()
@handle_errors
def get(key: KeyArgument, json: JsonOption = False) -> None:
    """A model's load defaults."""
    _print(local_client().model_defaults_of(key), json=json)


@app.command(
    "set",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
@handle_errors
def set_(ctx: typer.Context, key: KeyArgument, json: JsonOption = False) -> None:
    """Set load defaults: --context-length N, --parallel N, --ttl S, --gpu off|max|0..1,
    and any other load setting of `lms load` or the load API (by its API name)."""
    settings = parse_settings(list(ctx.args))
    _print(_change({"model": key, "set": settings}), json=json)


@app.command()
@handle_errors
def reset(
    key: KeyArgument,
    settings: Annotated[
        list[str] | None, typer.Argument(help="Settings to forget (default: all of them).")
    ] = None,
    json: JsonOption = False,
) -> None:
    """Forget a model's load defaults (all, or those named, e.g. context-length)."""
    names = [name.removeprefix("--").replace("-", "_") for name in settings or []]
    _print(_change({"model": key, "reset": names or True}), json=json)
