"""Reasoning apart from the answer: models that think in `<think>…</think>` (Qwen3,
DeepSeek-R1 distills, …) get their thoughts separated into reasoning, as LM Studio does
(`reasoning_content`). Incremental, for streaming: text that may begin or end a tag is
held back until it is clear. Pure: no I/O.

A model whose chat template opens the thought itself (the prompt ends with `<think>`)
starts inside it (`inside=True`); its output then has only the closing tag.
"""

from typing import Literal

START, END = "<think>", "</think>"

Kind = Literal["reasoning", "content"]
Piece = tuple[Kind, str]


def template_thinks(chat_template: str | None) -> bool:
    """Whether a chat template is a thinking model's (it writes `</think>` itself)."""
    return chat_template is not None and END in chat_template


def opens_thought(prompt: str) -> bool:
    """Whether a rendered prompt leaves the model inside a thought."""
    return prompt.rstrip().endswith(START)


class ReasoningSplitter:
    def __init__(self, *, inside: bool = False) -> None:
        self._inside = inside
        self._buffer = ""
        self._after_end = False  # the answer's leading blank lines are the thought's end

    def feed(self, text: str) -> list[Piece]:
        self._buffer += text
        pieces: list[Piece] = []
        while True:
            tag = END if self._inside else START
            at = self._buffer.find(tag)
            if at < 0:
                keep = _held_back(self._buffer, tag)
                self._emit(pieces, self._buffer[: len(self._buffer) - keep])
                self._buffer = self._buffer[len(self._buffer) - keep :]
                return pieces
            self._emit(pieces, self._buffer[:at])
            self._buffer = self._buffer[at + len(tag) :]
            self._inside = not self._inside
            self._after_end = not self._inside

    def finish(self) -> list[Piece]:
        """The rest, when the generation ends (a thought may never have closed)."""
        pieces: list[Piece] = []
        self._emit(pieces, self._buffer)
        self._buffer = ""
        return pieces

    def _emit(self, pieces: list[Piece], text: str) -> None:
        if self._after_end and not self._inside:
            text = text.lstrip()
            if text:
                self._after_end = False
        if text:
            pieces.append(("reasoning" if self._inside else "content", text))


def _held_back(text: str, tag: str) -> int:
    """Length of the longest end of `text` that could begin `tag`."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
