"""`lms chat`: talk to a model from the terminal, one-shot (`-p`) or interactively.

Answers stream from `POST /api/v0/chat/completions` (OpenAI's SSE chunks plus LM Studio's
`stats`). Interrupting an answer closes its connection, which stops the generation in the
daemon at once.
"""

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from lms.api.chat import ChatChunk, ChatMessage, ChatRequest
from lms.cli import output
from lms.cli.common import EXIT_FAILURE, HostOption, PortOption, handle_errors, make_client
from lms.client import Client, ClientError

DEFAULT_TTL_SECONDS = 3600  # LM Studio's default for `lms chat`
# Per read: covers loading the model and reading a long prompt before the first token.
READ_TIMEOUT_SECONDS = 3600.0
EXIT_INTERRUPTED = 130

HELP = """Commands:
  /help             show this help
  /exit             leave (also Ctrl-D)
  /clear            forget the conversation (the system prompt stays)
  /system <text>    set the system prompt (/system alone shows it)
  /stats            show the stats of the last answer
Ctrl-C stops an answer; at the prompt it leaves."""


@dataclass
class Answer:
    text: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)


@dataclass
class Conversation:
    model: str
    ttl: int
    system: str | None = None
    history: list[ChatMessage] = field(default_factory=list)

    def messages(self, user: str) -> list[ChatMessage]:
        system: list[ChatMessage] = (
            [{"role": "system", "content": self.system}] if self.system else []
        )
        return [*system, *self.history, {"role": "user", "content": user}]

    def body(self, user: str) -> ChatRequest:
        return {
            "model": self.model,
            "messages": self.messages(user),
            "stream": True,
            "stream_options": {"include_usage": True},
            "ttl": self.ttl,
        }


def text_pieces(chunks: Iterator[ChatChunk], answer: Answer) -> Iterator[str]:
    """The text pieces of a streamed chat completion; stats and usage land in `answer`."""
    for chunk in chunks:
        if isinstance(chunk.get("stats"), dict):
            answer.stats = chunk["stats"]
        if isinstance(chunk.get("usage"), dict):
            answer.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                answer.text += piece
                yield piece


def format_stats(answer: Answer) -> str:
    stats, usage = answer.stats, answer.usage
    rows = [
        ("Stop reason", stats.get("stop_reason")),
        ("Tokens/second", _rounded(stats.get("tokens_per_second"))),
        ("Time to first token", _seconds(stats.get("time_to_first_token"))),
        ("Generation time", _seconds(stats.get("generation_time"))),
        ("Prompt tokens", usage.get("prompt_tokens")),
        ("Predicted tokens", usage.get("completion_tokens")),
        ("Total tokens", usage.get("total_tokens")),
    ]
    shown = [f"  {name}: {value}" for name, value in rows if value is not None]
    return "\n".join(["Prediction stats:", *shown]) if shown else "No stats for that answer."


def _rounded(value: Any) -> Any:
    return round(value, 2) if isinstance(value, float) else value


def _seconds(value: Any) -> str | None:
    return None if value is None else f"{value}s"


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def answer_to_stdout(client: Client, conversation: Conversation, user: str, answer: Answer) -> None:
    """Stream one answer to stdout, gathering it in `answer`. On Ctrl-C the connection
    closes (the daemon stops generating) and KeyboardInterrupt propagates."""
    chunks = client.chat_stream(conversation.body(user))  # closing it closes the connection
    try:
        for piece in text_pieces(chunks, answer):
            _write(piece)
    finally:
        chunks.close()
        if answer.text and not answer.text.endswith("\n"):
            _write("\n")


def _only_loaded_model(client: Client) -> str:
    names = [i["identifier"] for i in client.instances() if i["type"] != "embedding"]
    if len(names) == 1:
        return names[0]
    if not names:
        output.error(
            "no model is loaded: name one (`lms chat <model>`, see `lms ls`) "
            "or load one first with `lms load <model>`"
        )
        raise typer.Exit(EXIT_FAILURE)
    if not sys.stdin.isatty():
        output.error(f"{len(names)} models are loaded ({', '.join(names)}); name one")
        raise typer.Exit(EXIT_FAILURE)
    for number, name in enumerate(names, 1):
        output.info(f"  {number}. {name}")
    choice = typer.prompt("Chat with which model", type=int, default=1)
    if not 1 <= choice <= len(names):
        output.error("no such choice")
        raise typer.Exit(EXIT_FAILURE)
    return str(names[choice - 1])


def _piped_input() -> str:
    """What was piped into stdin ('' when stdin is a terminal or empty)."""
    if sys.stdin is None or sys.stdin.isatty():
        return ""
    return sys.stdin.read().strip()


def one_shot(client: Client, conversation: Conversation, prompt: str, *, stats: bool) -> None:
    answer = Answer()
    try:
        answer_to_stdout(client, conversation, prompt, answer)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if stats:
        output.info(format_stats(answer))


def _command(line: str, conversation: Conversation, last: Answer | None) -> bool:
    """Run a slash command; False when it asks to leave."""
    name, _, argument = line.partition(" ")
    argument = argument.strip()
    if name in ("/exit", "/quit", "/bye"):
        return False
    if name == "/help":
        output.info(HELP)
    elif name == "/clear":
        conversation.history.clear()
        output.info("Conversation cleared.")
    elif name in ("/system", "/system-prompt"):
        if argument:
            conversation.system = argument
            output.info("System prompt set.")
        else:
            output.info(f"System prompt: {conversation.system or '(none)'}")
    elif name == "/stats":
        output.info(format_stats(last) if last is not None else "No answer yet.")
    else:
        output.info(f"Unknown command {name}; type /help for the list.")
    return True


def interactive(client: Client, conversation: Conversation, *, stats: bool) -> None:
    import readline  # noqa: F401 - line editing and history for input()

    output.info(f"Chatting with {conversation.model}. Type /help for commands, /exit to leave.")
    last: Answer | None = None
    while True:
        try:
            line = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            _write("\n")
            return
        if not line:
            continue
        if line.startswith("/"):
            if not _command(line, conversation, last):
                return
            continue
        answer = Answer()
        try:
            answer_to_stdout(client, conversation, line, answer)
        except KeyboardInterrupt:
            output.info("(interrupted)")
            if answer.text:  # keep what was said, so the conversation stays in turn
                _remember(conversation, line, answer.text)
                last = answer
            continue
        except ClientError as exc:
            output.error(str(exc))
            continue
        _remember(conversation, line, answer.text)
        last = answer
        if stats:
            output.info(format_stats(last))


def _remember(conversation: Conversation, user: str, assistant: str) -> None:
    conversation.history += [
        {"role": "user", "content": user},
        {"role": "assistant", "content": assistant},
    ]


@handle_errors
def chat(
    model: Annotated[
        str | None, typer.Argument(help="Model key or loaded identifier (default: the loaded one).")
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt", "-p", help="Answer this one prompt and exit (stdin is prepended)."
        ),
    ] = None,
    system_prompt: Annotated[
        str | None, typer.Option("--system-prompt", "-s", help="The system prompt.")
    ] = None,
    stats: Annotated[
        bool, typer.Option("--stats", help="Print prediction stats after each answer.")
    ] = False,
    ttl: Annotated[
        int,
        typer.Option(
            "--ttl", min=1, help="Unload a model loaded for this chat after idle seconds."
        ),
    ] = DEFAULT_TTL_SECONDS,
    host: HostOption = None,
    port: PortOption = None,
) -> None:
    """Chat with a model: interactively in a terminal, or once with -p."""
    client = make_client(host, port, timeout=READ_TIMEOUT_SECONDS)
    piped = _piped_input()
    if prompt is None and not piped and not sys.stdin.isatty():
        output.error("nothing to ask: pass a prompt with -p, pipe one in, or run in a terminal")
        raise typer.Exit(EXIT_FAILURE)
    conversation = Conversation(model or _only_loaded_model(client), ttl, system_prompt)
    if prompt is not None or piped:
        text = "\n\n".join(part for part in (piped, prompt) if part)
        if not text.strip():
            output.error("the prompt is empty")
            raise typer.Exit(EXIT_FAILURE)
        one_shot(client, conversation, text, stats=stats)
    else:
        interactive(client, conversation, stats=stats)
