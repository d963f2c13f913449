"""`lms load`'s progress: a bar on a terminal (as LM Studio's `lms load` shows), a plain
line every tenth otherwise, nothing with `--json`. The load is streamed from the daemon
(`Client.load_stream`); Ctrl-C closes the stream, which abandons the load in the daemon
(its worker stops), and `lms` says "Load cancelled." and exits 130."""

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer

from lms.api.lifecycle import LoadReply, LoadRequest
from lms.cli import output
from lms.client import Client, StreamError

EXIT_INTERRUPTED = 130  # what a shell reports for Ctrl-C
PLAIN_STEP = 0.1  # a plain line per tenth, not per percent


@contextmanager
def _bar(label: str) -> Iterator[Callable[[float], None]]:
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    with Progress(
        TextColumn(f"Loading {escape(label)}"),
        BarColumn(),
        TaskProgressColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task("load", total=1.0)
        yield lambda value: progress.update(task, completed=value)


@contextmanager
def _lines(label: str) -> Iterator[Callable[[float], None]]:
    shown = -1.0

    def show(value: float) -> None:
        nonlocal shown
        if value - shown >= PLAIN_STEP or (value >= 1.0 > shown):
            shown = value
            output.info(f"Loading {label}: {value:.0%}")

    yield show


def on_terminal() -> bool:
    return sys.stderr.isatty()


def load_with_progress(client: Client, body: LoadRequest, label: str, *, json: bool) -> LoadReply:
    """Loads, showing the progress on stderr (not with `json`); Ctrl-C cancels the load."""
    if json:
        return client.load(body)
    shown = output.safe(label)
    display = _bar(shown) if on_terminal() else _lines(shown)
    events = client.load_stream(body)
    try:
        with display as show:
            for event in events:
                if event["type"] == "model_load.progress":
                    show(event.get("progress", 0.0))
                elif event["type"] == "model_load.end" and "result" in event:
                    return event["result"]
    except KeyboardInterrupt:
        events.close()  # the connection closes: the daemon abandons the load
        output.info("Load cancelled.")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        events.close()
    raise StreamError("the daemon ended the load's stream without a result")
