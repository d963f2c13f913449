"""The `predict` channel: an SDK prediction through the prediction service, its events as
the SDK's messages, a client's cancel stopping the generation within a token."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from daemon.errors import LmsError
from daemon.prediction.types import (
    ModelUsed,
    PredictionDone,
    PredictionFailed,
    PromptProgress,
    ReasoningFragment,
    TextFragment,
    ToolCallEnded,
    ToolCallFailed,
    ToolCallStarted,
)
from daemon.sdk import remote, translate
from daemon.sdk.context import Channel, Context, as_dict
from daemon.sdk.protocol import error_of


async def _next_or_cancel(events: Any, cancelled: asyncio.Event) -> Any:
    """The next event, or None once the client cancels (the pending read is cancelled,
    which closes the engine's stream: the generation stops within a token)."""
    if cancelled.is_set():
        return None
    step = asyncio.ensure_future(anext(events))
    stop = asyncio.ensure_future(cancelled.wait())
    try:
        await asyncio.wait((step, stop), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if step.done():
        return step.result()
    step.cancel()
    with contextlib.suppress(BaseException):
        await step
    return None


async def predict(ctx: Context, param: Any, channel: Channel) -> None:
    param = as_dict(param, "creationParameter")
    name, _ = await remote.find(ctx, param.get("modelSpecifier"))
    request = translate.predict_request(name, param, ttl=None, files=ctx.files.image)
    async with ctx.predictions.predict(request.prediction) as run:
        done: PredictionDone | None = None
        pending_calls: dict[int, bool] = {}
        while True:
            event = await _next_or_cancel(run.events, channel.cancelled)
            if event is None:
                break
            if isinstance(event, PromptProgress):
                await channel.send({"type": "promptProcessingProgress", "progress": event.fraction})
            elif isinstance(event, TextFragment):
                if event.text:
                    await channel.send(translate.fragment(event.text))
            elif isinstance(event, ReasoningFragment):
                await channel.send(translate.fragment(event.text, reasoning="reasoning"))
            elif isinstance(event, ToolCallStarted):
                pending_calls[event.index] = True
                await channel.send({"type": "toolCallGenerationStart"})
            elif isinstance(event, ToolCallEnded):
                pending_calls.pop(event.index, None)
                await channel.send(
                    {
                        "type": "toolCallGenerationEnd",
                        "toolCallRequest": translate.tool_call_request(event.call),
                    }
                )
            elif isinstance(event, ToolCallFailed):
                await channel.send(
                    {"type": "toolCallGenerationFailed", "error": error_of(LmsError(event.reason))}
                )
            elif isinstance(event, PredictionFailed):
                raise event.error
            elif isinstance(event, PredictionDone):
                done = event
                break
        info, load_config = await _model_info(ctx, run.model)
        await channel.send(
            {
                "type": "success",
                "stats": translate.stats(done, cancelled=done is None, gpu_layers=0),
                "modelInfo": info,
                "loadModelConfig": load_config,
                "predictionConfig": translate.kv_config(request.config),
            }
        )


async def _model_info(ctx: Context, model: ModelUsed) -> tuple[dict[str, Any], dict[str, Any]]:
    """The instance that answered, and its load config, for `success`."""
    if model.format == "remote":  # the router sent it upstream
        served = remote.RemoteModel(model.model_key, remote.upstreams_of(ctx, model.model_key))
        return remote.instance_info(served), remote.load_config()
    catalog = await ctx.store.catalog()
    record = next((r for r in catalog.records if r.path == model.path), None)
    key = catalog.public_id(record) if record is not None else model.model_key
    instance = next((i for i in ctx.manager.instances() if i.identifier == model.identifier), None)
    info: dict[str, Any] = (
        translate.model_info(record, key) if record is not None else {"path": model.path}
    )
    info = {
        **info,
        "type": "llm",
        "modelKey": key,
        "identifier": model.identifier,
        "instanceReference": instance.reference if instance is not None else "",
        "contextLength": model.context_length,
    }
    load_config = translate.load_config(
        model.context_length, instance.config.gpu_ratio if instance is not None else 0.0, "llm"
    )
    return info, load_config
