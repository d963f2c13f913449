"""`lms upstream add|list|remove|policy`: remote backends behind the daemon
(docs/scale-out.md). Works against a remote daemon too (`lms --host`), with an admin key.

The key of an upstream is read from `--api-key-env VAR` or a prompt, never from the
command line (where `ps` and shell history would show it), and never printed."""

import os
from typing import Annotated

import typer

from lms.api import upstreams as api
from lms.cli import output
from lms.cli.common import EXIT_BAD_USAGE, JsonOption, handle_errors, make_client

app = typer.Typer(help="Remote backends (OpenAI-compatible servers).", no_args_is_help=True)


def _render(status: api.UpstreamStatus) -> str:
    reachable = {True: "up", False: "down", None: "not checked"}[status["reachable"]]
    key = "key set" if status["api_key_set"] else "no key"
    models = ", ".join(status["served_models"]) or "none"
    line = (
        f"{status['name']}  {status['base_url']}  {reachable}, circuit {status['circuit']}, "
        f"{status['in_flight']}/{status['max_in_flight']} in flight, priority "
        f"{status['priority']}, {key}\n  models: {models}"
    )
    if status["last_error"]:
        line += f"\n  last error: {status['last_error']}"
    return output.safe(line)


@app.command()
@handle_errors
def add(
    name: Annotated[str, typer.Argument(help="A name for it (lowercase, digits, . _ -).")],
    base_url: Annotated[str, typer.Argument(help="Its URL, e.g. http://10.0.0.2:8000.")],
    api_key_env: Annotated[
        str | None,
        typer.Option("--api-key-env", help="Read its API key from this environment variable."),
    ] = None,
    ask_key: Annotated[
        bool, typer.Option("--ask-key", help="Prompt for its API key (not echoed).")
    ] = False,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", "-m", help="Expose only this upstream model (ID or ID=OUR-KEY); repeat."
        ),
    ] = None,
    priority: Annotated[int, typer.Option(help="Lower is tried first.")] = 0,
    max_in_flight: Annotated[int, typer.Option(help="Requests sent to it at once.")] = 32,
    connect_timeout: Annotated[float, typer.Option(help="Seconds to connect.")] = 5.0,
    first_byte_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for its answer to begin.")
    ] = 300.0,
    idle_timeout: Annotated[float, typer.Option(help="Longest silence inside an answer.")] = 60.0,
    replace: Annotated[bool, typer.Option("--replace", help="Replace one of that name.")] = False,
    json: JsonOption = False,
) -> None:
    """Add an upstream; its models appear in the listings once it answers."""
    body: api.UpstreamRequest = {
        "name": name,
        "base_url": base_url,
        "priority": priority,
        "max_in_flight": max_in_flight,
        "connect_timeout": connect_timeout,
        "first_byte_timeout": first_byte_timeout,
        "idle_timeout": idle_timeout,
        "replace": replace,
    }
    if api_key_env is not None:
        key = os.environ.get(api_key_env)
        if not key:
            output.error(f"the environment variable {api_key_env} is not set")
            raise typer.Exit(EXIT_BAD_USAGE)
        body["api_key"] = key
    elif ask_key:
        body["api_key"] = typer.prompt("API key", hide_input=True)
    if model:
        body["models"] = list(model)
    status = make_client(None, None).add_upstream(body)
    if json:
        output.json_out(status)
    else:
        output.data(_render(status))


@app.command("list")
@handle_errors
def list_(json: JsonOption = False) -> None:
    """The upstreams, their health and the models they serve (never their keys)."""
    listing = make_client(None, None).upstreams()
    if json:
        output.json_out(listing)
        return
    if not listing["upstreams"]:
        output.info("No upstreams; add one with `lms upstream add NAME URL`.")
    for status in listing["upstreams"]:
        output.data(_render(status))
    for model, policy in sorted(listing["policies"].items()):
        output.data(output.safe(f"policy {model}: {policy}"))


@app.command()
@handle_errors
def remove(name: Annotated[str, typer.Argument(help="The upstream's name.")]) -> None:
    """Remove an upstream (its models leave the listings at once)."""
    make_client(None, None).remove_upstream(name)
    output.info(f"Removed upstream {name}.")


@app.command()
@handle_errors
def policy(
    model: Annotated[str, typer.Argument(help="The model key.")],
    value: Annotated[
        str,
        typer.Argument(help=f"One of {', '.join(api.POLICIES)}, or 'default'."),
    ],
) -> None:
    """Set how requests for a model served both here and upstream are routed."""
    if value != "default" and value not in api.POLICIES:
        output.error(f"the policy must be one of {', '.join(api.POLICIES)}, or default")
        raise typer.Exit(EXIT_BAD_USAGE)
    chosen: api.Policy | None = None
    for candidate in api.POLICIES:
        if candidate == value:
            chosen = candidate
    make_client(None, None).set_upstream_policy(model, chosen)
    output.info(f"Policy for {model}: {value}.")
