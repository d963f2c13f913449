"""The daemon's exception tree. Adapters translate foreign exceptions at the boundary
(`raise LoadFailed(...) from exc`); daemon/http/errors.py maps each class to an HTTP
status and the OpenAI error envelope in one table. Nothing matches on message text.

    LmsError
    ├── ConfigError            bad configuration: names the key and where it came from
    ├── StartupError           the daemon cannot start (port in use, unwritable dir, ...)
    │   └── AlreadyRunning     another daemon holds the lock
    ├── InvalidRequest         a request the client must fix (400)
    │   └── PayloadTooLarge    body over the limit (413)
    ├── NotFound               no such route or resource (404)
    │   └── ModelNotFound      no such model (404, code model_not_found)
    └── Forbidden              not allowed on this channel (403)
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
