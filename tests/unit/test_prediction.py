"""The prediction service and its pure parts (reasoning), and the in-process engine handle,
in process with the fake engine."""

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.engines.base import ChatRequest, LoadSpec
from daemon.engines.client import State
from daemon.engines.handle import start_engine
from daemon.engines.inprocess import ThreadHandle
from daemon.errors import ContextOverflow, LoadFailed, ModelUnloaded, WorkerCrashed
from daemon.prediction.reasoning import ReasoningSplitter, opens_thought, template_thinks
from daemon.prediction.service import PredictionService
from daemon.prediction.types import (
    Message,
    Prediction,
    PredictionDone,
    PredictionEvent,
    PredictionFailed,
    PromptProgress,
    ReasoningFragment,
    TextFragment,
    TextPart,
    ToolCallArguments,
    ToolCallEnded,
    ToolCallStarted,
    ToolSetup,
)
from daemon.server import Daemon
from tests.inprocess import running_daemon

# -- reasoning, pure ------------------------------------------------------------------------


def split(splitter: ReasoningSplitter, text: str, step: int) -> list[tuple[str, str]]:
    pieces = []
    for i in range(0, len(text), step):
        pieces += splitter.feed(text[i : i + step])
    pieces += splitter.finish()
    merged: list[tuple[str, str]] = []
    for kind, part in pieces:
        if merged and merged[-1][0] == kind:
            merged[-1] = (kind, merged[-1][1] + part)
        else:
            merged.append((kind, part))
    return merged


@pytest.mark.parametrize("step", [1, 2, 3, 7, 100])
def test_reasoning_is_split_whatever_the_token_boundaries(step: int) -> None:
    text = "<think>Hmm, <b>two</b>.</think>\n\nFour. <thinking> is fine"
    assert split(ReasoningSplitter(), text, step) == [
        ("reasoning", "Hmm, <b>two</b>."),
        ("content", "Four. <thinking> is fine"),
    ]


def test_a_thought_opened_by_the_template_and_one_never_closed() -> None:
    assert split(ReasoningSplitter(inside=True), "Let me see.</think>Yes.", 4) == [
        ("reasoning", "Let me see."),
        ("content", "Yes."),
    ]
    assert split(ReasoningSplitter(), "<think>still thinking", 5) == [
        ("reasoning", "still thinking")
    ]
    assert split(ReasoningSplitter(), "no thoughts <thin", 3) == [("content", "no thoughts <thin")]


def test_which_templates_think() -> None:
    assert template_thinks("{{ '<think>' }}...{{ '</think>' }}")
    assert not template_thinks("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert not template_thinks(None)
    assert opens_thought("<|im_start|>assistant\n<think>\n")
    assert not opens_thought("<|im_start|>assistant\n")


# -- the service's event streams ------------------------------------------------------------


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running_daemon(tmp_path) as daemon:
        yield daemon


def chat(model: str, text: str = "hello there friend", **fields: Any) -> Prediction:
    return Prediction(model=model, messages=(Message("user", (TextPart(text),)),), **fields)


async def events_of(service: PredictionService, prediction: Prediction) -> list[PredictionEvent]:
    async with service.predict(prediction) as run:
        return [event async for event in run.events]


async def test_a_prediction_streams_typed_events_then_done(daemon: Daemon) -> None:
    events = await events_of(daemon.core.predictions, chat("echo"))
    assert isinstance(events[0], PromptProgress) and events[0].fraction == 1.0
    texts = [e for e in events if isinstance(e, TextFragment)]
    assert "".join(t.text for t in texts) == "hello there friend"
    done = events[-1]
    assert isinstance(done, PredictionDone)
    assert done.text == "hello there friend" and done.stop_reason == "eosFound"
    assert done.stats.completion_tokens == 3


async def test_tool_calls_and_reasoning_as_events(daemon: Daemon) -> None:
    weather = {"type": "function", "function": {"name": "get_weather"}}
    tools = ToolSetup("auto", [weather], ["get_weather"])
    events = await events_of(daemon.core.predictions, chat("toolsmith", tools=tools))
    kinds = [type(e) for e in events if not isinstance(e, PromptProgress)]
    assert kinds == [ToolCallStarted, ToolCallArguments, ToolCallEnded, PredictionDone]
    done = events[-1]
    assert isinstance(done, PredictionDone) and done.stop_reason == "toolCalls"
    assert done.tool_calls[0].arguments_object() == {"city": "Paris"}
    events = await events_of(daemon.core.predictions, chat("thinker"))
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningFragment))
    assert reasoning == "Two and two."
    assert "".join(e.text for e in events if isinstance(e, TextFragment)) == "Four."


async def test_failing_before_the_first_event_raises_after_it_ends_the_stream(
    daemon: Daemon,
) -> None:
    with pytest.raises(ContextOverflow):
        await events_of(daemon.core.predictions, chat("tiny", " ".join(["w"] * 40)))
    events = await events_of(daemon.core.predictions, chat("crashy"))
    assert isinstance(events[-1], PredictionFailed)
    assert isinstance(events[-1].error, WorkerCrashed)
    assert not any(isinstance(e, PredictionDone) for e in events)


async def test_leaving_early_cancels_the_generation_and_ends_the_lease(daemon: Daemon) -> None:
    service, manager = daemon.core.predictions, daemon.core.manager
    async with service.predict(chat("endless")) as run:
        async for event in run.events:
            if isinstance(event, TextFragment):
                [inst] = manager.instances()
                assert (inst.in_flight, inst.generating, inst.status) == (1, 1, "generating")
                break
    assert (inst.in_flight, inst.generating, inst.prompt_processing) == (0, 0, 0)
    assert inst.status == "idle"


async def test_a_model_that_dies_before_its_request_starts_is_a_crash_not_a_bug(
    daemon: Daemon,
) -> None:
    """Between the end of a load and the start of the request that waited for it, the
    engine may die: the request gets WorkerCrashed (502), never a missing engine."""
    manager = daemon.core.manager
    exits: list[Any] = []

    async def starter(spec: LoadSpec, on_exit: Any, on_progress: Any = None) -> Any:
        handle = await start_engine(spec, on_exit, on_progress)
        exits.append((handle, on_exit))
        return handle

    manager._starter = starter
    entered = asyncio.Event()

    async def request() -> None:
        async with manager.lease("echo"):
            entered.set()

    task = asyncio.create_task(request())
    while not manager.instances():
        await asyncio.sleep(0)
    [inst] = manager.instances()
    await asyncio.sleep(0)  # the request now waits for the load
    # Runs once the load is done, before the waiting request resumes.
    inst.loaded.add_done_callback(lambda _: exits[0][1](exits[0][0], "killed by signal SIGKILL"))
    with pytest.raises(WorkerCrashed, match="SIGKILL"):
        await task
    assert not entered.is_set() and manager.instances() == []


# -- the in-process engine handle -----------------------------------------------------------


def fake_spec(tmp_path: Path, **options: Any) -> LoadSpec:
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"fake": True, **options}))
    return LoadSpec(model_path=str(path), engine="fake", parallel=2)


async def test_the_thread_handle_serves_like_a_worker(tmp_path: Path) -> None:
    handle = await ThreadHandle.start(fake_spec(tmp_path, reply="a b c"))
    try:
        assert handle.pid is None and handle.state is State.READY
        assert handle.info.runtime_name == "fake"
        assert await handle.count_tokens("one two") == 2
        request = ChatRequest([{"role": "user", "content": "x"}])
        events = [e async for e in handle.generate(request)]
        assert "".join(getattr(e, "text", "") for e in events) == "a b c"
    finally:
        await handle.close()
        await handle.close()  # idempotent
    assert handle.state is State.EXITED and handle.exit_reason is None
    with pytest.raises(ModelUnloaded):
        await handle.count_tokens("x")


async def test_a_crash_in_the_thread_is_reported_like_a_dead_worker(tmp_path: Path) -> None:
    exits: list[str] = []
    spec = fake_spec(tmp_path, reply="a b c d", crash_after_tokens=1)
    handle = await ThreadHandle.start(spec, on_exit=lambda _, reason: exits.append(reason))
    with pytest.raises(WorkerCrashed, match="the model engine died: crashed: SimulatedCrash"):
        async for _ in handle.generate(ChatRequest([{"role": "user", "content": "x"}])):
            pass
    assert handle.state is State.EXITED and exits and "SimulatedCrash" in exits[0]
    await handle.close()


async def test_a_failed_load_leaves_no_thread(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    spec = fake_spec(tmp_path, fail_load="no such weights")
    with pytest.raises(LoadFailed, match="no such weights"):
        await ThreadHandle.start(spec)
    assert set(threading.enumerate()) <= before
