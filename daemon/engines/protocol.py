"""The private wire between the daemon and a model worker.

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON: one object with
a `type` and an integer `id`. Requests carry a fresh id; every reply names the id it
answers, so many requests can be in flight. See docs/engines.md for the message table.

Errors cross as data, `{"kind": ..., "message": ..., ...}`, mapped to and from our own
exception classes by one table here: nothing is classified by its message text.
"""

from __future__ import annotations

import json
import socket
import struct
from enum import StrEnum
from typing import Any

from daemon.errors import (
    ContextOverflow,
    EngineError,
    InvalidRequest,
    LmsError,
    LoadFailed,
    ProtocolError,
)

Message = dict[str, Any]

HEADER = struct.Struct(">I")
# Big enough for an embedding batch's vectors; anything larger is a broken stream.
MAX_FRAME_BYTES = 128 * 1024 * 1024


class Op(StrEnum):
    """Daemon -> worker."""

    LOAD = "load"  # spec -> progress*, result: EngineInfo (cancel aborts it)
    GENERATE = "generate"  # request -> token*, done
    CANCEL = "cancel"  # id of a generate/embed in flight -> (it ends with userStopped)
    EMBED = "embed"  # texts -> result: EmbedResult
    RENDER_CHAT = "render_chat"  # messages, tools, add_generation_prompt -> result: str
    COUNT_TOKENS = "count_tokens"  # text -> result: int
    TOKENIZE = "tokenize"  # text -> result: list[int] (as a prompt is tokenized)
    SHUTDOWN = "shutdown"  # cancel everything, close the engine, exit 0


class Reply(StrEnum):
    """Worker -> daemon."""

    TOKEN = "token"  # event: TokenEvent
    DONE = "done"  # event: DoneEvent (last frame of a generate)
    RESULT = "result"  # value: the answer to a one-shot request
    PROGRESS = "progress"  # value: 0..1, how far a `load` has got (before its result)
    ERROR = "error"  # error: {kind, message, ...} (last frame of any request)


def encode_frame(message: Message) -> bytes:
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(body)} bytes is over the {MAX_FRAME_BYTES} limit")
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes | bytearray) -> int:
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {length} bytes is over the {MAX_FRAME_BYTES} limit")
    return int(length)


def decode_body(body: bytes) -> Message:
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame is not UTF-8 JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise ProtocolError(f"frame is not a JSON object: {type(message).__name__}")
    if not isinstance(message.get("type"), str) or type(message.get("id")) is not int:
        raise ProtocolError("frame lacks a string `type` or an integer `id`")
    return message


class FrameBuffer:
    """Splits a byte stream into frames, however it arrives: `feed` what was read, get
    every frame it completed (a worker's step sends all its tokens in one write, read
    here in one go: one wake-up of the daemon for the step, not one a token)."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self._data += data
        frames: list[Message] = []
        start = 0
        while len(self._data) - start >= HEADER.size:
            length = frame_length(self._data[start : start + HEADER.size])
            end = start + HEADER.size + length
            if len(self._data) < end:
                break
            frames.append(decode_body(bytes(self._data[start + HEADER.size : end])))
            start = end
        del self._data[:start]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of a frame not complete yet."""
        return len(self._data)


def _recv_exactly(sock: socket.socket, size: int, *, at_boundary: bool) -> bytes | None:
    chunks: list[bytes] = []
    got = 0
    while got < size:
        chunk = sock.recv(min(size - got, 1 << 20))
        if not chunk:
            if at_boundary and got == 0:
                return None
            raise ProtocolError(f"connection closed inside a frame ({got} of {size} bytes)")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket) -> Message | None:
    """Blocking read of one frame; None when the peer closed between frames."""
    header = _recv_exactly(sock, HEADER.size, at_boundary=True)
    if header is None:
        return None
    body = _recv_exactly(sock, frame_length(header), at_boundary=False)
    assert body is not None
    return decode_body(body)


def error_to_wire(exc: BaseException) -> dict[str, Any]:
    """The data form of an exception raised while serving a request."""
    if isinstance(exc, ContextOverflow):
        return {
            "kind": "context_overflow",
            "message": str(exc),
            "prompt_tokens": exc.prompt_tokens,
            "context_length": exc.context_length,
            "at_least": exc.at_least,
        }
    if isinstance(exc, InvalidRequest):
        return {
            "kind": "invalid_request",
            "message": str(exc),
            "param": exc.param,
            "code": exc.code,
        }
    if isinstance(exc, LoadFailed):
        return {"kind": "load_failed", "message": str(exc)}
    if isinstance(exc, LmsError):
        return {"kind": "engine_error", "message": str(exc)}
    if isinstance(exc, MemoryError):
        return {"kind": "engine_error", "message": "out of memory"}
    return {"kind": "engine_error", "message": f"{type(exc).__name__}: {exc}"}


def error_from_wire(data: Any) -> LmsError:
    if not isinstance(data, dict):
        return ProtocolError(f"malformed error from the worker: {data!r}")
    kind, message = data.get("kind"), str(data.get("message", ""))
    if kind == "context_overflow":
        return ContextOverflow(
            int(data["prompt_tokens"]),
            int(data["context_length"]),
            at_least=data.get("at_least") is True,
        )
    if kind == "invalid_request":
        return InvalidRequest(message, param=data.get("param"), code=data.get("code"))
    if kind == "load_failed":
        return LoadFailed(message)
    return EngineError(message)
