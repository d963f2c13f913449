"""The daemon's exception tree. Adapters translate foreign exceptions at the boundary
(`raise LoadFailed(...) from exc`); daemon/http/errors.py maps each class to an HTTP
status and the OpenAI error envelope in one table. Nothing matches on message text.

    LmsError
    ├── ConfigError            bad configuration: names the key and where it came from
    ├── StartupError           the daemon cannot start (port in use, unwritable dir, ...)
    │   └── AlreadyRunning     another daemon holds the lock
    ├── InvalidRequest         a request the client must fix (400)
    │   ├── PayloadTooLarge    body over the limit (413)
    │   └── UnsupportedMediaType  a JSON body sent without a JSON Content-Type (415)
    ├── NotFound               no such route or resource (404)
    │   ├── ModelNotFound      no such model (404, code model_not_found)
    │   └── ModelNotLoaded     on disk but not loaded, and JIT loading is off (404)
    ├── Forbidden              not allowed on this channel or with this key (403)
    ├── Unauthorized           no API key, or an unknown one, where keys are required (401)
    ├── LoadFailed             a model could not be loaded; says why
    │   ├── UnknownEngine      no engine by that name
    │   └── CrashedWhileLoading  its worker died while loading it (502, like WorkerCrashed)
    ├── WorkerCrashed          a model's worker process died; names the signal/exit code
    ├── StateNotSaved          a change could not be written to disk; it was not made (500)
    ├── ModelUnloaded          the model was unloaded while a request was using it
    ├── EngineError            an engine failed one request; its worker lives on
    ├── ProtocolError          a malformed frame on a worker's private socket
    ├── InsufficientMemory     the memory guardrail refuses a load; gives both numbers
    ├── ServerBusy             an instance's slots and queue are full (503 + Retry-After)
    ├── UpstreamFailed         a remote upstream answered badly or went away (502)
    └── UpstreamUnavailable    no upstream can serve a remote model now (503)

    InvalidRequest also has  ContextOverflow  (prompt longer than the loaded context).
"""


class LmsError(Exception):
    """Base of every error the daemon raises on purpose."""


class ConfigError(LmsError):
    pass


class StartupError(LmsError):
    pass


class AlreadyRunning(StartupError):
    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"lmsd is already running ({who}); stop it with `lms daemon down` first")


class InvalidRequest(LmsError):
    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


class PayloadTooLarge(InvalidRequest):
    pass


class UnsupportedMediaType(InvalidRequest):
    pass


class NotFound(LmsError):
    pass


class ModelNotFound(NotFound):
    pass


class Forbidden(LmsError):
    pass


class GgufError(LmsError):
    """A file is not a readable GGUF (bad magic, truncated, corrupt header); says why."""


class AmbiguousModel(InvalidRequest):
    """A model name matches several models equally well; `candidates` lists the names
    that pick exactly one of them."""

    def __init__(self, name: str, candidates: list[str]) -> None:
        self.name = name
        self.candidates = list(candidates)
        super().__init__(
            f"model name {name!r} is ambiguous; use one of: {', '.join(self.candidates)}",
            param="model",
            code="model_ambiguous",
        )


class ModelExists(InvalidRequest):
    """An import would overwrite a file that is already in the models directory."""


class LoadFailed(LmsError):
    """A model could not be loaded: file missing, not a model, out of memory, the worker
    died while loading, ... The message says which and names the file."""


class UnknownEngine(LoadFailed):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = list(known)
        super().__init__(f"unknown engine {name!r}; known engines: {', '.join(self.known)}")


class CrashedWhileLoading(LoadFailed):
    """The worker died (crash, abort(), kill -9, out of memory) while loading a model."""


class WorkerCrashed(LmsError):
    """A model's worker process died (crash, abort(), kill -9, out of memory), or an
    engine run inside the daemon failed beyond repair (pid None)."""

    def __init__(self, pid: int | None, reason: str) -> None:
        self.pid = pid
        self.reason = reason
        where = f"the model worker (pid {pid})" if pid is not None else "the model engine"
        super().__init__(f"{where} died: {reason}")


class StateNotSaved(LmsError):
    """A change could not be written to disk (folder full, read-only, not a folder); the
    change was not made. Names the file and the cause."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = "state_not_saved"


class ModelUnloaded(LmsError):
    """The model was unloaded (its worker shut down) while this request was running."""


class EngineError(LmsError):
    """An engine failed one request for a reason the client cannot fix; the worker lives on."""


class ProtocolError(LmsError):
    """A malformed frame on a worker's private socket (too large, not JSON, ...)."""


class ContextOverflow(InvalidRequest):
    """The prompt does not fit the loaded context; carries both numbers."""

    def __init__(self, prompt_tokens: int, context_length: int, *, at_least: bool = False):
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length
        self.at_least = at_least
        # at_least: counted without tokenizing (a lower bound), see check_prompt_size.
        size = f"at least {prompt_tokens}" if at_least else str(prompt_tokens)
        super().__init__(
            f"the prompt is {size} tokens, which does not fit the model's loaded "
            f"context of {context_length} tokens; shorten the prompt or load the model "
            "with a longer context",
            code="context_length_exceeded",
        )


class ModelNotLoaded(NotFound):
    """The model exists on disk but is not loaded, and just-in-time loading is off."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = "model_not_loaded"


class InsufficientMemory(LmsError):
    """A load the memory guardrail refuses; carries both numbers."""

    def __init__(self, message: str, *, needed_bytes: int, available_bytes: int) -> None:
        super().__init__(message)
        self.needed_bytes = needed_bytes
        self.available_bytes = available_bytes
        self.code = "insufficient_memory"


class ServerBusy(LmsError):
    """Every slot and the queue of an instance are full; retry later (503)."""

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unauthorized(LmsError):
    """No API key, or one we do not know, where authentication is on (401)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = "invalid_api_key"


class UpstreamFailed(LmsError):
    """A remote upstream (daemon/remote) failed a request: refused it, broke its stream,
    sent something malformed or too large, or did not answer in time (502). The message
    names the upstream, never its key."""

    def __init__(self, upstream: str, message: str) -> None:
        super().__init__(f"upstream {upstream!r}: {message}")
        self.upstream = upstream


class UpstreamUnavailable(LmsError):
    """No upstream can serve a remote model now: every one that serves it is down, its
    circuit open, or full (503)."""

    def __init__(self, message: str, *, upstreams: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.upstreams = upstreams
