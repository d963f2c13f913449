"""The SDK wire protocol, as pure functions: the handshake, the client's frames parsed
and checked, the server's frames built, and our errors in the SDK's error shape.

    client                                   server
    {"authVersion": 1, clientIdentifier,  →
     clientPasskey}                       ←  {"success": true} | {"success": false, "error"}
    {"type": "rpcCall", endpoint, callId, →
     parameter?}                          ←  {"type": "rpcResult", callId, result?}
                                          ←  {"type": "rpcError", callId, error}
    {"type": "channelCreate", endpoint,   →
     channelId, creationParameter?}       ←  {"type": "channelSend", channelId, message}*
    {"type": "channelSend", channelId,    →  (a cancel: message {"type": "cancel"})
     message}                             ←  {"type": "channelClose", channelId}
                                          ←  {"type": "channelError", channelId, error}
                                          ←  {"type": "communicationWarning", warning}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from daemon.errors import (
    AmbiguousModel,
    Forbidden,
    InvalidRequest,
    LmsError,
    ModelNotFound,
    ModelNotLoaded,
    Unauthorized,
)

NAMESPACES = ("llm", "embedding", "system", "files", "repository", "diagnostics", "plugins")
MAX_FRAME_BYTES = 16 * 1024 * 1024  # a frame larger than this closes the connection
MAX_OPEN = 64  # calls and channels running at once on one connection
MAX_ID = 2**53  # ids are JSON numbers: integers that a double holds exactly

NO_MODEL_CODE = "generic.noModelMatchingQuery"


class FrameError(LmsError):
    """A frame that is not one the protocol allows; the connection stays open."""


@dataclass(frozen=True)
class Hello:
    client_identifier: str
    client_passkey: str
    api_token: str | None  # newer SDKs' API token, where they put it in the handshake


@dataclass(frozen=True)
class RpcCall:
    endpoint: str
    call_id: int
    parameter: Any


@dataclass(frozen=True)
class ChannelCreate:
    endpoint: str
    channel_id: int
    parameter: Any


@dataclass(frozen=True)
class ChannelSend:
    channel_id: int
    message: Any


@dataclass(frozen=True)
class Ignored:
    """A frame we accept and have nothing to do for (acks, signal subscriptions...)."""

    kind: str
    subscribe_id: int | None = None


Frame = RpcCall | ChannelCreate | ChannelSend | Ignored


def _object(text: str | bytes) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError(f"the frame is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise FrameError("the frame must be a JSON object")
    return data


def _id(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_ID:
        raise FrameError(f"'{name}' must be a non-negative integer")
    return value


def _endpoint(data: dict[str, Any]) -> str:
    value = data.get("endpoint")
    if not isinstance(value, str) or not value or len(value) > 200:
        raise FrameError("'endpoint' must be a non-empty string")
    return value


def parse_hello(text: str | bytes) -> Hello:
    data = _object(text)
    if data.get("authVersion") != 1:
        raise FrameError("the first frame must be the handshake, with authVersion 1")
    ident, passkey = data.get("clientIdentifier"), data.get("clientPasskey")
    if not isinstance(ident, str) or not isinstance(passkey, str):
        raise FrameError("the handshake needs string 'clientIdentifier' and 'clientPasskey'")
    token = data.get("apiToken")
    return Hello(ident, passkey, token if isinstance(token, str) and token else None)


def parse_frame(text: str | bytes) -> Frame:
    data = _object(text)
    kind = data.get("type")
    if kind == "rpcCall":
        return RpcCall(_endpoint(data), _id(data, "callId"), data.get("parameter"))
    if kind == "channelCreate":
        return ChannelCreate(_endpoint(data), _id(data, "channelId"), data.get("creationParameter"))
    if kind == "channelSend":
        return ChannelSend(_id(data, "channelId"), data.get("message"))
    if kind in (
        "channelAck",
        "communicationWarning",
        "signalUnsubscribe",
        "writableSignalUnsubscribe",
        "keepAlive",
    ):
        return Ignored(kind)
    if kind in ("signalSubscribe", "writableSignalSubscribe"):
        return Ignored(kind, _id(data, "subscribeId"))
    raise FrameError(f"unknown frame type {kind!r}")


# -- server frames ----------------------------------------------------------------------------


def hello_ok() -> dict[str, Any]:
    return {"success": True}


def hello_refused(error: dict[str, Any]) -> dict[str, Any]:
    return {"success": False, "error": error}


def rpc_result(call_id: int, result: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "rpcResult", "callId": call_id}
    if result is not None:
        frame["result"] = result
    return frame


def rpc_error(call_id: int, error: dict[str, Any]) -> dict[str, Any]:
    return {"type": "rpcError", "callId": call_id, "error": error}


def channel_send(channel_id: int, message: dict[str, Any]) -> dict[str, Any]:
    return {"type": "channelSend", "channelId": channel_id, "message": message}


def channel_close(channel_id: int) -> dict[str, Any]:
    return {"type": "channelClose", "channelId": channel_id}


def channel_error(channel_id: int, error: dict[str, Any]) -> dict[str, Any]:
    return {"type": "channelError", "channelId": channel_id, "error": error}


def signal_error(subscribe_id: int, error: dict[str, Any]) -> dict[str, Any]:
    return {"type": "signalError", "subscribeId": subscribe_id, "error": error}


def warning(text: str) -> dict[str, Any]:
    return {"type": "communicationWarning", "warning": text}


def dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, allow_nan=False)


# -- errors -------------------------------------------------------------------------------------


def error(
    title: str,
    *,
    cause: str | None = None,
    suggestion: str | None = None,
    code: str | None = None,
    **display: Any,
) -> dict[str, Any]:
    """An error as the SDKs read it (SerializedLMSExtendedError): `displayData.code` is
    what they turn into a typed error (model not found...)."""
    out: dict[str, Any] = {"title": title}
    if cause is not None:
        out["cause"] = cause
    if suggestion is not None:
        out["suggestion"] = suggestion
    if code is not None:
        out["displayData"] = {"code": code, **display}
    return out


def error_of(exc: BaseException) -> dict[str, Any]:
    """Our exception in the SDK's shape."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ModelNotFound | ModelNotLoaded | AmbiguousModel):
        loaded = list(getattr(exc, "loaded", []))
        return error(
            text,
            suggestion="list the models with `lms ls` (downloaded) or `lms ps` (loaded)",
            code=NO_MODEL_CODE,
            query=dict(getattr(exc, "query", {})),
            loadedModelsSample=loaded[:10],
            totalLoadedModels=len(loaded),
        )
    if isinstance(exc, Unauthorized):
        return error(
            text,
            suggestion="pass an API key (LM_API_TOKEN); create one with `lms server key create`",
            code="generic.unauthorized",
        )
    if isinstance(exc, Forbidden):
        return error(text, code="generic.forbidden")
    if isinstance(exc, FrameError | InvalidRequest):
        return error(text, code="generic.invalidRequest")
    if isinstance(exc, LmsError):
        return error(text)
    return error("internal error", cause=type(exc).__name__)


def unknown_endpoint(namespace: str, endpoint: str, kind: str) -> dict[str, Any]:
    return error(
        f"Unsupported {kind} endpoint {namespace}.{endpoint}: this server (lmsd) does not "
        "implement it",
        suggestion="see docs/sdk.md for the endpoints lmsd serves",
        code="generic.unsupportedEndpoint",
    )
