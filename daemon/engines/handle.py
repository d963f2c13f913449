"""The engine boundary as the daemon sees it: one loaded model instance, whatever runs it.

    EngineHandle ─┬─ WorkerHandle  (host.py)      a worker process: llama.cpp, MLX
                  └─ ThreadHandle  (inprocess.py) a thread of the daemon: the fake engine

The manager starts one with `start_engine` and hands it out only through leases; nothing
above the manager knows which kind it holds. A remote backend would be one more.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Protocol

from daemon.engines.base import (
    EmbedResult,
    EngineInfo,
    GenerationRequest,
    LoadSpec,
    PromptInput,
    StreamEvent,
)

# Engines run on a thread of the daemon rather than in a worker process: only those that
# cannot crash the process natively (see inprocess.py).
IN_PROCESS_ENGINES = frozenset({"fake"})


class EngineHandle(Protocol):
    spec: LoadSpec

    @property
    def info(self) -> EngineInfo:
        """What was loaded, as measured by the engine."""
        ...

    @property
    def pid(self) -> int | None:
        """The process holding the model (None: the daemon's own)."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        """TokenEvents then one DoneEvent; closing the generator cancels the generation.
        Raises a typed LmsError (ContextOverflow, WorkerCrashed, ModelUnloaded, ...)."""
        ...

    async def embed(self, texts: list[PromptInput]) -> EmbedResult: ...

    async def count_tokens(self, text: str) -> int: ...

    async def tokenize(self, text: str) -> list[int]: ...

    async def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str: ...

    def memory_bytes(self) -> int:
        """Memory the model holds, measured (0 when it cannot be told apart)."""
        ...

    async def close(self) -> None:
        """Unload; requests in flight fail with ModelUnloaded. Idempotent."""
        ...


OnEngineExit = Callable[[Any, str], None]
OnLoadProgress = Callable[[float], None]  # 0..1, on the event loop, as the engine loads


class EngineStarter(Protocol):
    def __call__(
        self, spec: LoadSpec, on_exit: OnEngineExit, on_progress: OnLoadProgress | None = None
    ) -> Awaitable[EngineHandle]: ...


async def start_engine(
    spec: LoadSpec, on_exit: OnEngineExit, on_progress: OnLoadProgress | None = None
) -> EngineHandle:
    """Loads `spec` in a worker process, or on a thread for the in-process engines.
    Raises LoadFailed saying why it could not. Cancelled, it stops the load and leaves
    nothing behind."""
    if spec.engine in IN_PROCESS_ENGINES:
        from daemon.engines.inprocess import ThreadHandle

        return await ThreadHandle.start(spec, on_exit=on_exit, on_progress=on_progress)
    from daemon.engines.host import WorkerHandle

    return await WorkerHandle.start(spec, on_exit=on_exit, on_progress=on_progress)
