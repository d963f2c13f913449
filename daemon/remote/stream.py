"""Reading what an upstream sends, bounded in size and time: nothing it sends (a huge
body, an endless line, a malformed stream, silence) can hold the daemon's memory or a
request forever. Every read waits at most `idle_timeout`; a body, one SSE line and a
whole stream have byte limits."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import ClientPayloadError, ClientResponse

MAX_BODY_BYTES = 64 * 1024 * 1024  # a JSON answer (an embeddings batch, a model list)
MAX_ERROR_BYTES = 64 * 1024  # an error answer: only its message is kept
MAX_LINE_BYTES = 1024 * 1024  # one SSE line
MAX_STREAM_BYTES = 256 * 1024 * 1024  # a whole stream


class StreamBroken(Exception):
    """The upstream's body broke a limit, went silent, or was not what it should be."""


async def _read_some(response: ClientResponse, idle_timeout: float) -> bytes:
    try:
        async with asyncio.timeout(idle_timeout):
            return await response.content.readany()
    except TimeoutError as exc:
        raise StreamBroken(f"sent nothing for {idle_timeout:g}s") from exc
    except (ClientPayloadError, ConnectionError, OSError) as exc:
        raise StreamBroken(f"the connection broke: {type(exc).__name__}") from exc


async def read_body(response: ClientResponse, idle_timeout: float, limit: int) -> bytes:
    """The whole body, up to `limit` bytes (StreamBroken beyond it)."""
    parts: list[bytes] = []
    size = 0
    while chunk := await _read_some(response, idle_timeout):
        size += len(chunk)
        if size > limit:
            raise StreamBroken(f"its answer is over the {limit}-byte limit")
        parts.append(chunk)
    return b"".join(parts)


async def read_json(response: ClientResponse, idle_timeout: float, limit: int) -> Any:
    body = await read_body(response, idle_timeout, limit)
    try:
        return json.loads(body)
    except ValueError as exc:
        raise StreamBroken("its answer is not JSON") from exc


async def sse_data(response: ClientResponse, idle_timeout: float) -> AsyncIterator[Any]:
    """The decoded `data:` payloads of an SSE stream, as they come (no buffering beyond a
    line); ends at `data: [DONE]` or the end of the body."""
    buffer = b""
    total = 0
    while True:
        chunk = await _read_some(response, idle_timeout)
        if not chunk:
            if buffer.strip():
                raise StreamBroken("the stream ended inside an event")
            return
        total += len(chunk)
        if total > MAX_STREAM_BYTES:
            raise StreamBroken(f"the stream is over the {MAX_STREAM_BYTES}-byte limit")
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        if len(buffer) > MAX_LINE_BYTES:
            raise StreamBroken(f"a stream line is over the {MAX_LINE_BYTES}-byte limit")
        for raw in lines:
            line = raw.rstrip(b"\r")
            if not line.startswith(b"data:"):
                continue  # blank lines, comments (": keep-alive"), event names
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return
            try:
                yield json.loads(payload)
            except ValueError as exc:
                raise StreamBroken("a stream event is not JSON") from exc


def error_message(body: bytes) -> str:
    """The message of an error answer (OpenAI's envelope, or the start of the text)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:300].decode("utf-8", "replace").strip() or "no message"
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:1000]
        if isinstance(error, str):
            return error[:1000]
    return "no message"
