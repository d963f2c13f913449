"""Route and request shape of LM Studio's streamed chat, as `lms chat` uses it.

`POST /api/v0/chat/completions` with `"stream": true` answers Server-Sent Events: each
`data:` line is an OpenAI `chat.completion.chunk` (plus LM Studio's `stats` on the last
one, `usage` when asked for), an error is a `data:` line holding `{"error": {...}}` in the
OpenAI envelope, and `data: [DONE]` ends the stream.
"""

from typing import Any, Literal, TypedDict

V0_CHAT_COMPLETIONS_PATH = "/api/v0/chat/completions"


class ChatMessage(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(TypedDict):
    include_usage: bool


class ChatRequest(TypedDict):
    """The subset of the OpenAI chat request that `lms chat` sends."""

    model: str
    messages: list[ChatMessage]
    stream: Literal[True]
    stream_options: StreamOptions
    ttl: int  # idle seconds before a model loaded for this chat is unloaded


# One decoded `data:` chunk. Read defensively (`.get`): its fields are OpenAI's, and
# optional ones come and go between servers.
ChatChunk = dict[str, Any]
