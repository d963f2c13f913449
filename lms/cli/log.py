"""`lms log stream`: follow the daemon's diagnostic events (model predictions, server logs)."""

import json as jsonlib
import os
import sys
import time
from enum import StrEnum
from typing import Annotated, Any

import typer

from lms.api import log as api
from lms.cli import output
from lms.cli.common import HostOption, PortOption, handle_errors, make_client
from lms.client import LogStream

app = typer.Typer(help="Follow the daemon's logs.", no_args_is_help=True)

# The stream stays open for as long as the user watches: in effect, no read timeout.
FOLLOW_TIMEOUT_SECONDS = 10_000_000.0
FILTERS = ("input", "output")


class Source(StrEnum):
    model = "model"
    server = "server"


def parse_filter(value: str | None) -> set[str]:
    """`input`, `output` or `input,output` -> the prediction events to show."""
    if value is None:
        return set(FILTERS)
    wanted = {part.strip() for part in value.split(",") if part.strip()}
    if not wanted or not wanted <= set(FILTERS):
        raise typer.BadParameter("use input, output or input,output", param_hint="--filter")
    return wanted


def _timestamp(ms: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ms) / 1000))
    except (TypeError, ValueError, OverflowError):
        return str(ms)


def render_event(event: api.LogEvent, *, stats: bool) -> str:
    """LM Studio's text layout: `key: value` lines, a blank line after each event."""
    data: dict[str, Any] = event.get("data") or {}
    kind = data.get("type")
    lines = [f"timestamp: {_timestamp(event.get('timestamp'))}", f"type: {kind}"]
    if kind == api.PREDICTION_INPUT:
        lines += [
            f"modelIdentifier: {data.get('modelIdentifier')}",
            f"modelPath: {data.get('modelPath')}",
            f'input: "{data.get("input")}"',
        ]
    elif kind == api.PREDICTION_OUTPUT:
        lines += [
            f"modelIdentifier: {data.get('modelIdentifier')}",
            f'output: "{data.get("output")}"',
        ]
        if stats and data.get("stats"):
            lines += ["stats:", *(f"  {k}: {v}" for k, v in data["stats"].items())]
    elif kind == api.SERVER_LOG:
        lines += [f"level: {data.get('level')}", f"content: {data.get('content')}"]
    else:
        lines += [f"{key}: {value}" for key, value in data.items() if key != "type"]
    return "\n".join(lines) + "\n"


def _shown(event: api.LogEvent, wanted: set[str]) -> bool:
    kind = (event.get("data") or {}).get("type")
    if kind == api.PREDICTION_INPUT:
        return "input" in wanted
    if kind == api.PREDICTION_OUTPUT:
        return "output" in wanted
    return True


@app.command()
@handle_errors
def stream(
    source: Annotated[
        Source, typer.Option("--source", "-s", help="model: predictions; server: server logs.")
    ] = Source.model,
    json: Annotated[
        bool, typer.Option("--json", help="Print each event as one JSON line.")
    ] = False,
    filter_: Annotated[
        str | None,
        typer.Option(
            "--filter", help="Model events to show: input, output or input,output (default)."
        ),
    ] = None,
    stats: Annotated[
        bool, typer.Option("--stats", help="Show prediction stats with model outputs.")
    ] = False,
    host: HostOption = None,
    port: PortOption = None,
) -> None:
    """Stream the daemon's logs until Ctrl-C."""
    wanted = parse_filter(filter_)
    client = make_client(host, port, timeout=FOLLOW_TIMEOUT_SECONDS)
    events: LogStream | None = None
    try:
        events = client.log_stream(source.value)  # returns once subscribed
        if events is None:
            return
        output.info(f"Streaming {source.value} logs from lmsd. Press Ctrl-C to stop.")
        for event in events:
            if source is Source.model and not _shown(event, wanted):
                continue
            if json:
                print(jsonlib.dumps(event), flush=True)
            else:
                print(render_event(event, stats=stats), flush=True)
        output.info("The daemon ended the log stream.")
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        # The reader (e.g. `head`) is gone: stop quietly, with no error at exit's flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        if events is not None:
            events.close()
