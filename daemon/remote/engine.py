"""The engine handle of a remote model: every request goes to one of the upstreams that
serve it, in the pool's order; until the first token, a failure (unreachable, busy, a
broken answer) passes the request to the next one. Once tokens have gone out, a failure
ends the stream with an error naming the upstream. Closing the stream closes the
connection, so the upstream stops generating."""

import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from daemon.engines.base import (
    EmbedResult,
    EngineInfo,
    GenerationRequest,
    LoadSpec,
    PromptInput,
    StreamEvent,
    TokenEvent,
)
from daemon.errors import InvalidRequest, UpstreamFailed, UpstreamUnavailable
from daemon.remote.pool import Upstream, UpstreamBusy, UpstreamPool
from daemon.remote.stream import MAX_BODY_BYTES, StreamBroken, read_json, sse_data
from daemon.remote.translate import (
    BadChunk,
    StreamState,
    done_event,
    embed_body,
    read_chunk,
    read_embeddings,
    request_body,
)

REMOTE_ENGINE = "remote"


class RemoteHandle:
    """An EngineHandle for the model `key` that upstreams in `pool` serve."""

    def __init__(
        self, pool: UpstreamPool, key: str, *, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._pool = pool
        self.key = key
        self._clock = clock
        self.spec = LoadSpec(model_path=f"remote:{key}", engine=REMOTE_ENGINE)
        # Filled in by each request: the upstream that served it last.
        self.upstream: str | None = None

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            runtime_name=REMOTE_ENGINE,
            runtime_version="openai-compatible",
            supported_formats=[],
            context_length=0,  # not told by /v1/models
            arch="remote",
            quant=None,
            n_gpu_layers=0,
            embedding=False,
            chat_template=True,
        )

    @property
    def pid(self) -> int | None:
        return None

    def memory_bytes(self) -> int:
        return 0

    async def close(self) -> None:
        return None

    async def count_tokens(self, text: str) -> int:
        raise InvalidRequest(f"{self.key} is a remote model: its tokens cannot be counted here")

    async def tokenize(self, text: str) -> list[int]:
        raise InvalidRequest(f"{self.key} is a remote model: it cannot be tokenized here")

    async def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        raise InvalidRequest(f"{self.key} is a remote model: its prompt is rendered upstream")

    def _candidates(self) -> list[Upstream]:
        serving = self._pool.serving(self.key)
        if not serving:
            raise UpstreamUnavailable(f"no upstream serves {self.key!r} now")
        return serving

    def _none_left(self, tried: list[str]) -> UpstreamUnavailable:
        names = tuple(u.name for u in self._pool.serving(self.key))
        detail = "; ".join(tried) or "every one is full or its circuit is open"
        return UpstreamUnavailable(
            f"no upstream can serve {self.key!r} now ({', '.join(names) or 'none'}): {detail}",
            upstreams=names,
        )

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        path, body = request_body(self.key, request)
        tried: list[str] = []
        for upstream in self._candidates():
            if not self._pool.take(upstream):
                continue
            error: str | None = "cancelled"
            started = False
            try:
                body["model"] = upstream.models.get(self.key, self.key)
                sent = self._clock()
                async with self._pool.post(upstream, path, body) as response:
                    self.upstream = upstream.name
                    state = StreamState()
                    first: float | None = None
                    async for chunk in sse_data(response, upstream.config.idle_timeout):
                        text = read_chunk(chunk, state)
                        if text:
                            if first is None:
                                first = self._clock()
                            started = True
                            yield TokenEvent(text=text, token_id=None)
                    if state.calls:
                        started = True
                        yield TokenEvent(text=state.calls_text(), token_id=None)
                    end = self._clock()
                    first = end if first is None else first
                    error = None
                    yield done_event(
                        state, time_to_first_token=first - sent, generation_time=end - first
                    )
                    return
            except UpstreamBusy as exc:
                error = None  # busy is no fault: it does not count against its circuit
                tried.append(f"{upstream.name}: {exc}")
                continue
            except (StreamBroken, BadChunk) as exc:
                error = str(exc)
                failure = UpstreamFailed(upstream.name, error)
                if started:
                    raise failure from exc
                tried.append(str(failure))
                continue
            except UpstreamFailed as exc:
                error = str(exc)
                if started:
                    raise
                tried.append(str(exc))
                continue
            except InvalidRequest:
                error = None
                raise
            finally:
                self._pool.release(upstream, error if error != "cancelled" else None)
        raise self._none_left(tried)

    async def embed(self, texts: list[PromptInput]) -> EmbedResult:
        if not texts:
            raise InvalidRequest("'input' is empty", param="input")
        inputs: Any = list(texts)
        tried: list[str] = []
        for upstream in self._candidates():
            if not self._pool.take(upstream):
                continue
            error: str | None = None
            try:
                body = embed_body(upstream.models.get(self.key, self.key), inputs)
                async with self._pool.post(upstream, "/embeddings", body) as response:
                    data = await read_json(response, upstream.config.idle_timeout, MAX_BODY_BYTES)
                vectors, tokens = read_embeddings(data, len(texts))
                return EmbedResult(vectors=vectors, prompt_tokens=tokens)
            except UpstreamBusy as exc:
                tried.append(f"{upstream.name}: {exc}")
            except (StreamBroken, BadChunk, UpstreamFailed) as exc:
                failure = (
                    exc
                    if isinstance(exc, UpstreamFailed)
                    else UpstreamFailed(upstream.name, str(exc))
                )
                error = str(failure)
                tried.append(error)
            finally:
                self._pool.release(upstream, error)
        raise self._none_left(tried)
