"""The CLI's typed channel to the daemon: one method per endpoint it uses, each taking
and returning the wire shapes of lms/api. The HTTP itself, the errors and the API
version check live in lms/transport.py.

Replies are cast, not validated: the version check is what guarantees that the daemon
answers in the shapes this lms was built with.
"""

import json
from collections.abc import Generator, Iterator
from types import TracebackType
from typing import Any, cast
from urllib.parse import quote, urlencode

from lms.api import admin, chat, lifecycle, log, settings
from lms.api import model_defaults as defaults_api  # `model_defaults` is a method below
from lms.api import models as catalog  # `models` is a method below
from lms.api import upstreams as upstreams_api  # `upstreams` is a method below
from lms.api.load_stream import LoadEvent
from lms.transport import (
    ApiError,
    ApiVersionMismatch,
    ClientError,
    DaemonNotRunning,
    StreamError,
    Transport,
)

__all__ = [
    "ApiError",
    "ApiVersionMismatch",
    "Client",
    "ClientError",
    "DaemonNotRunning",
    "LogStream",
    "StreamError",
]


class LogStream:
    """A live `GET /api/admin/log/stream` subscription: iterate it for the events (until
    the daemon ends the stream); close() (or leaving a `with`) ends the subscription."""

    def __init__(self, lines: Generator[str, None, None]) -> None:
        self._lines = lines

    def __iter__(self) -> Iterator[log.LogEvent]:
        for line in self._lines:
            if not line.strip():
                continue  # a keep-alive
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                yield cast(log.LogEvent, event)

    def close(self) -> None:
        self._lines.close()

    def __enter__(self) -> "LogStream":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Client(Transport):
    # -- control plane: no API version check ---------------------------------------------
    # `lms daemon status|down|up`, `lms status`, `lms version` and `lms server
    # start|stop|status` must work against a daemon of another version, so that the new
    # `lms` can always see, stop and restart an old `lmsd`. These four calls skip the
    # check; their shapes (lms/api/admin.py) only ever gain fields.

    def status(self, *, timeout: float | None = None) -> admin.DaemonStatus:
        """`GET /api/admin/status`."""
        reply = self.request("GET", admin.STATUS_PATH, timeout=timeout, check_version=False)
        return cast(admin.DaemonStatus, reply)

    def shutdown(self) -> admin.ShutdownReply:
        """`POST /api/admin/shutdown`: the daemon drains, unloads and exits."""
        reply = self.request("POST", admin.SHUTDOWN_PATH, {}, check_version=False)
        return cast(admin.ShutdownReply, reply)

    def server_start(self, request: admin.ServerStartRequest) -> admin.HttpListener:
        """`POST /api/admin/server/start`: start (or move) the TCP listener."""
        reply = self.request("POST", admin.SERVER_START_PATH, request, check_version=False)
        return cast(admin.HttpListener, reply)

    def server_stop(self) -> admin.ServerStopReply:
        """`POST /api/admin/server/stop`: stop the TCP listener (the daemon keeps running)."""
        reply = self.request("POST", admin.SERVER_STOP_PATH, {}, check_version=False)
        return cast(admin.ServerStopReply, reply)

    # -- lifecycle ---------------------------------------------------------------------

    def load(self, body: lifecycle.LoadRequest) -> lifecycle.LoadReply:
        """`POST /api/v1/models/load`; `body` must not ask for estimate_only (see estimate)."""
        return cast(lifecycle.LoadReply, self.request("POST", lifecycle.LOAD_PATH, body))

    def load_stream(self, body: lifecycle.LoadRequest) -> Generator[LoadEvent, None, None]:
        """`POST /api/v1/models/load` streamed: the load's events as they come, the last
        one `model_load.end` with the reply. An error event raises `StreamError`; a load
        refused before it starts raises `ApiError`. Closing the generator closes the
        connection, which abandons the load in the daemon (if nobody else waits for it)."""
        lines = self.stream_lines("POST", lifecycle.LOAD_PATH, {**body, "stream": True})
        try:
            for line in lines:
                if not line.startswith("data:"):
                    continue
                try:
                    event = json.loads(line.removeprefix("data:"))
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                if event.get("type") == "error":
                    error = event.get("error")
                    message = error.get("message") if isinstance(error, dict) else error
                    raise StreamError(str(message or "the load failed"))
                yield cast(LoadEvent, event)
        finally:
            lines.close()

    def estimate(self, body: lifecycle.LoadRequest) -> lifecycle.EstimateReply:
        """`POST /api/v1/models/load` with `"estimate_only": true`: loads nothing."""
        request: lifecycle.LoadRequest = {**body, "estimate_only": True}
        return cast(lifecycle.EstimateReply, self.request("POST", lifecycle.LOAD_PATH, request))

    def unload(self, identifier: str) -> lifecycle.UnloadReply:
        """`POST /api/v1/models/unload` of one instance (requests in flight finish first)."""
        request: lifecycle.UnloadRequest = {"instance_id": identifier}
        return cast(lifecycle.UnloadReply, self.request("POST", lifecycle.UNLOAD_PATH, request))

    def unload_all(self) -> lifecycle.UnloadAllReply:
        request: lifecycle.UnloadRequest = {"all": True}
        reply = self.request("POST", lifecycle.UNLOAD_PATH, request)
        return cast(lifecycle.UnloadAllReply, reply)

    def instances(self) -> list[lifecycle.InstanceInfo]:
        """`GET /api/admin/instances`: the loaded instances (`lms ps`)."""
        return cast(list[lifecycle.InstanceInfo], self.request("GET", lifecycle.INSTANCES_PATH))

    def match(self, query: str, *, exact: bool = False) -> lifecycle.MatchReply:
        """`GET /api/admin/models/match`: what `lms load <query>` would load."""
        params = {"q": query} | ({"exact": "1"} if exact else {})
        reply = self.request("GET", f"{lifecycle.MATCH_PATH}?{urlencode(params)}")
        return cast(lifecycle.MatchReply, reply)

    # -- per-model defaults ----------------------------------------------------------------

    def model_defaults(self) -> defaults_api.ModelDefaultsListing:
        """`GET /api/admin/model-defaults`: every model's load defaults."""
        reply = self.request("GET", defaults_api.MODEL_DEFAULTS_PATH)
        return cast(defaults_api.ModelDefaultsListing, reply)

    def model_defaults_of(self, model: str) -> defaults_api.ModelDefaultsEntry:
        """`GET /api/admin/model-defaults?model=...`: one model's load defaults."""
        path = f"{defaults_api.MODEL_DEFAULTS_PATH}?{urlencode({'model': model})}"
        return cast(defaults_api.ModelDefaultsEntry, self.request("GET", path))

    def change_model_defaults(
        self, request: defaults_api.ModelDefaultsRequest
    ) -> defaults_api.ModelDefaultsEntry:
        """`POST /api/admin/model-defaults`: checked like a load, then saved."""
        reply = self.request("POST", defaults_api.MODEL_DEFAULTS_PATH, request)
        return cast(defaults_api.ModelDefaultsEntry, reply)

    # -- models --------------------------------------------------------------------------

    def models(self) -> catalog.ModelsListing:
        """`GET /api/admin/models`: every model on disk (`lms ls`)."""
        return cast(catalog.ModelsListing, self.request("GET", catalog.ADMIN_MODELS_PATH))

    def import_model(
        self,
        path: str,
        *,
        mode: catalog.ImportMode = "move",
        user_repo: str | None = None,
        dry_run: bool = False,
    ) -> catalog.ImportReply:
        """`POST /api/admin/models/import` (Unix socket only); `path` absolute."""
        request: catalog.ImportRequest = {
            "path": path,
            "mode": mode,
            "user_repo": user_repo,
            "dry_run": dry_run,
        }
        return cast(catalog.ImportReply, self.request("POST", catalog.ADMIN_IMPORT_PATH, request))

    # -- settings and keys ---------------------------------------------------------------

    def config(self) -> settings.ConfigReply:
        """`GET /api/admin/config`."""
        return cast(settings.ConfigReply, self.request("GET", settings.CONFIG_PATH))

    def set_config(self, key: str, value: Any) -> settings.ConfigSetReply:
        """`POST /api/admin/config`: saved in the config file, applied now where it can be."""
        request: settings.ConfigSetRequest = {"key": key, "value": value}
        reply = self.request("POST", settings.CONFIG_PATH, request)
        return cast(settings.ConfigSetReply, reply)

    # -- upstreams ---------------------------------------------------------------------

    def upstreams(self) -> upstreams_api.UpstreamListing:
        """`GET /api/admin/upstreams`: never the upstreams' keys."""
        reply = self.request("GET", upstreams_api.UPSTREAMS_PATH)
        return cast(upstreams_api.UpstreamListing, reply)

    def add_upstream(self, body: upstreams_api.UpstreamRequest) -> upstreams_api.UpstreamStatus:
        """`POST /api/admin/upstreams` (admin)."""
        reply = self.request("POST", upstreams_api.UPSTREAMS_PATH, body)
        return cast(upstreams_api.UpstreamStatus, reply)

    def remove_upstream(self, name: str) -> upstreams_api.UpstreamListing:
        """`DELETE /api/admin/upstreams/{name}` (admin)."""
        reply = self.request("DELETE", f"{upstreams_api.UPSTREAMS_PATH}/{quote(name, safe='')}")
        return cast(upstreams_api.UpstreamListing, reply)

    def set_upstream_policy(
        self, model: str, policy: upstreams_api.Policy | None
    ) -> upstreams_api.UpstreamListing:
        """`POST /api/admin/upstreams/policy` (admin)."""
        body: upstreams_api.PolicyRequest = {"model": model, "policy": policy}
        reply = self.request("POST", upstreams_api.POLICY_PATH, body)
        return cast(upstreams_api.UpstreamListing, reply)

    def keys(self) -> list[settings.KeyInfo]:
        """`GET /api/admin/keys` (Unix socket only)."""
        return cast(list[settings.KeyInfo], self.request("GET", settings.KEYS_PATH))

    def create_key(self, name: str | None = None, scope: str = "inference") -> settings.CreatedKey:
        """`POST /api/admin/keys` (Unix socket only): the secret is in the reply only."""
        request: settings.KeyCreateRequest = {"name": name, "scope": scope}
        return cast(settings.CreatedKey, self.request("POST", settings.KEYS_PATH, request))

    def revoke_key(self, id_or_name: str) -> settings.KeyInfo:
        """`DELETE /api/admin/keys/<id or name>` (Unix socket only)."""
        path = f"{settings.KEYS_PATH}/{quote(id_or_name, safe='')}"
        return cast(settings.KeyInfo, self.request("DELETE", path))

    # -- streams -------------------------------------------------------------------------

    def log_stream(self, source: log.LogSource) -> LogStream | None:
        """Subscribe to `GET /api/admin/log/stream`. Returns once the subscription is live
        (every event published from then on will arrive), or None when the daemon closed
        the stream before that (it is shutting down)."""
        path = f"{log.LOG_STREAM_PATH}?{urlencode({'source': source})}"
        lines = self.stream_lines("GET", path)
        try:
            opening = next(lines, None)  # the empty line that says the stream is live
        except BaseException:
            lines.close()
            raise
        if opening is None:
            lines.close()
            return None
        return LogStream(lines)

    def chat_stream(self, body: chat.ChatRequest) -> Generator[chat.ChatChunk, None, None]:
        """`POST /api/v0/chat/completions`, streamed: each decoded chunk until `[DONE]`.
        An error event raises `StreamError`. Nothing is sent until the first chunk is
        asked for; closing the generator closes the connection, which stops the
        generation in the daemon."""
        lines = self.stream_lines("POST", chat.V0_CHAT_COMPLETIONS_PATH, body)
        try:
            for line in lines:
                if not line.startswith("data:"):
                    continue
                data = line.removeprefix("data:").strip()
                if data == "[DONE]":
                    return
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue
                if not isinstance(chunk, dict):
                    continue
                error = chunk.get("error")
                if error is not None:
                    message = error.get("message") if isinstance(error, dict) else error
                    raise StreamError(str(message or "the answer ended with an error"))
                yield chunk
        finally:
            lines.close()
