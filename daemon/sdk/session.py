"""One SDK connection (one namespace): its handshake is done; each frame becomes a call or
a channel running as its own task, so a slow one never holds up the others, and a cancel
or a disconnect reaches the one it is for.

Bounds: at most MAX_OPEN calls and channels at once (past it, the new one is refused
with an error, the connection stays); a malformed frame is answered (a
`communicationWarning`, or an error for the call or channel it names) and the
connection goes on. `close()` (the client went away) cancels everything still running:
each prediction stops, its lease ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from daemon.errors import LmsError
from daemon.sdk import endpoints, protocol
from daemon.sdk.context import Channel, ChannelHandler, Context, Rpc

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]


class Session:
    def __init__(self, ctx: Context, send: Send, *, max_open: int = protocol.MAX_OPEN) -> None:
        self.ctx = ctx
        self._send = send
        self._max_open = max_open
        self._tasks: set[asyncio.Task[None]] = set()
        self._channels: dict[int, Channel] = {}

    @property
    def open_count(self) -> int:
        return len(self._tasks)

    async def send(self, frame: dict[str, Any]) -> None:
        try:
            await self._send(frame)
        except (ConnectionError, RuntimeError) as exc:  # the client went away
            raise asyncio.CancelledError from exc

    async def receive(self, text: str | bytes) -> None:
        """One frame from the client."""
        try:
            frame = protocol.parse_frame(text)
        except protocol.FrameError as exc:
            await self.send(protocol.warning(f"malformed frame ignored: {exc}"))
            return
        namespace = self.ctx.namespace
        if isinstance(frame, protocol.RpcCall):
            handler = endpoints.RPCS.get(namespace, {}).get(frame.endpoint)
            if handler is None:
                error = protocol.unknown_endpoint(namespace, frame.endpoint, "RPC")
                await self.send(protocol.rpc_error(frame.call_id, error))
            elif self._full():
                await self.send(protocol.rpc_error(frame.call_id, self._busy()))
            else:
                self._spawn(self._rpc(handler, frame))
        elif isinstance(frame, protocol.ChannelCreate):
            channel_handler = endpoints.CHANNELS.get(namespace, {}).get(frame.endpoint)
            if channel_handler is None:
                error = protocol.unknown_endpoint(namespace, frame.endpoint, "channel")
                await self.send(protocol.channel_error(frame.channel_id, error))
            elif frame.channel_id in self._channels:
                error = protocol.error(f"channel {frame.channel_id} is already open")
                await self.send(protocol.channel_error(frame.channel_id, error))
            elif self._full():
                await self.send(protocol.channel_error(frame.channel_id, self._busy()))
            else:
                channel = Channel(self._channel_sender(frame.channel_id))
                self._channels[frame.channel_id] = channel
                self._spawn(self._channel(channel_handler, frame, channel))
        elif isinstance(frame, protocol.ChannelSend):
            channel_or_none = self._channels.get(frame.channel_id)
            message = frame.message if isinstance(frame.message, dict) else {}
            if channel_or_none is not None and message.get("type") == "cancel":
                channel_or_none.cancelled.set()
        elif frame.subscribe_id is not None:
            error = protocol.unknown_endpoint(namespace, frame.kind, "signal")
            await self.send(protocol.signal_error(frame.subscribe_id, error))

    async def close(self) -> None:
        """The connection ended: stop every call and channel still running."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- internals --------------------------------------------------------------------------

    def _full(self) -> bool:
        return len(self._tasks) >= self._max_open

    def _busy(self) -> dict[str, Any]:
        return protocol.error(
            f"too many calls and channels open on this connection (at most {self._max_open})",
            suggestion="wait for some to finish",
        )

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _channel_sender(self, channel_id: int) -> Send:
        async def send(message: dict[str, Any]) -> None:
            await self.send(protocol.channel_send(channel_id, message))

        return send

    async def _rpc(self, handler: Rpc, call: protocol.RpcCall) -> None:
        try:
            result = await handler(self.ctx, call.parameter)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log(call.endpoint, exc)
            await self.send(protocol.rpc_error(call.call_id, protocol.error_of(exc)))
            return
        await self.send(protocol.rpc_result(call.call_id, result))

    async def _channel(
        self,
        handler: ChannelHandler,
        create: protocol.ChannelCreate,
        channel: Channel,
    ) -> None:
        try:
            await handler(self.ctx, create.parameter, channel)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log(create.endpoint, exc)
            await self.send(protocol.channel_error(create.channel_id, protocol.error_of(exc)))
            return
        finally:
            self._channels.pop(create.channel_id, None)
        await self.send(protocol.channel_close(create.channel_id))

    def _log(self, endpoint: str, exc: Exception) -> None:
        where = f"{self.ctx.namespace}.{endpoint}"
        if isinstance(exc, LmsError):
            log.info("SDK %s failed: %s", where, exc)
        else:
            log.exception("SDK %s failed unexpectedly", where, exc_info=exc)
