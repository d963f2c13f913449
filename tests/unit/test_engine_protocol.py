"""Frames on the worker's private socket, and the data that crosses it."""

import dataclasses
import socket
import struct
from collections.abc import Iterator

import pytest

from daemon.engines import protocol
from daemon.engines.base import (
    ChatRequest,
    CompletionRequest,
    DoneEvent,
    EngineInfo,
    GenerationParams,
    LoadSpec,
    StopReason,
    TokenEvent,
    request_from_dict,
)
from daemon.engines.protocol import (
    MAX_FRAME_BYTES,
    FrameBuffer,
    Reply,
    decode_body,
    encode_frame,
    error_from_wire,
    error_to_wire,
    read_frame,
)
from daemon.engines.worker import SocketChannel
from daemon.errors import (
    ContextOverflow,
    EngineError,
    InvalidRequest,
    LoadFailed,
    ProtocolError,
)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    with a, b:
        yield a, b


def test_frames_round_trip_over_a_socket(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    messages = [{"type": "generate", "id": i, "text": "héllo ☃ " * i} for i in range(1, 4)]
    a.sendall(b"".join(encode_frame(m) for m in messages))
    a.close()
    assert [read_frame(b) for _ in messages] == messages
    assert read_frame(b) is None  # closed between frames: a clean end


def test_a_frame_is_length_prefixed_json(pair: tuple[socket.socket, socket.socket]) -> None:
    frame = encode_frame({"type": "info", "id": 7})
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    assert decode_body(frame[4:]) == {"type": "info", "id": 7}


def test_a_frame_cut_short_is_a_protocol_error(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.sendall(encode_frame({"type": "info", "id": 1})[:-3])
    a.close()
    with pytest.raises(ProtocolError, match="closed inside a frame"):
        read_frame(b)


def test_an_oversize_length_is_refused_before_reading(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    a.sendall(struct.pack(">I", MAX_FRAME_BYTES + 1))
    with pytest.raises(ProtocolError, match="over the"):
        read_frame(b)


def test_an_oversize_message_is_not_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "MAX_FRAME_BYTES", 1000)
    encode_frame({"type": "embed", "id": 1, "texts": ["x" * 900]})
    with pytest.raises(ProtocolError, match="over the 1000"):
        encode_frame({"type": "embed", "id": 1, "texts": ["x" * 1000]})


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe not utf-8",
        b"{not json",
        b"[1, 2]",
        b'{"id": 1}',
        b'{"type": "info"}',
        b'{"type": "info", "id": "1"}',
        b'{"type": "info", "id": true}',
    ],
)
def test_garbage_bodies_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_body(body)


def test_the_frame_buffer_splits_a_stream_however_it_arrives() -> None:
    messages = [{"type": "token", "id": i, "event": {"text": "é" * i}} for i in range(1, 6)]
    stream = b"".join(encode_frame(m) for m in messages)
    for size in (1, 3, 4, 7, len(stream)):  # byte by byte, across headers, all at once
        frames = FrameBuffer()
        got = []
        for at in range(0, len(stream), size):
            got += frames.feed(stream[at : at + size])
        assert got == messages
        assert frames.pending == 0
    frames = FrameBuffer()
    assert frames.feed(stream + encode_frame({"type": "done", "id": 3})[:6]) == messages
    assert frames.pending == 6  # an end inside a frame: the reader's ProtocolError


def test_the_frame_buffer_refuses_what_the_blocking_reader_refuses() -> None:
    with pytest.raises(ProtocolError):
        FrameBuffer().feed(struct.pack(">I", protocol.MAX_FRAME_BYTES + 1))
    with pytest.raises(ProtocolError):
        FrameBuffer().feed(struct.pack(">I", 2) + b"[]")


def test_a_socket_channel_sends_a_batch_in_one_write() -> None:
    ours, theirs = socket.socketpair()
    try:
        channel = SocketChannel(ours)
        with channel.batched():
            channel.reply(1, Reply.TOKEN, event={"text": "a"})
            channel.reply(2, Reply.TOKEN, event={"text": "b"})
            theirs.setblocking(False)
            with pytest.raises(BlockingIOError):
                theirs.recv(1)  # nothing went out yet
        channel.reply(3, Reply.DONE)  # outside a batch: at once
        theirs.setblocking(True)
        frames = FrameBuffer()
        got: list[dict[str, object]] = []
        while len(got) < 3:
            got += frames.feed(theirs.recv(4096))
        assert [m["id"] for m in got] == [1, 2, 3]
    finally:
        ours.close()
        theirs.close()


def test_errors_cross_as_data_and_come_back_typed() -> None:
    overflow = error_from_wire(error_to_wire(ContextOverflow(5000, 4096)))
    assert isinstance(overflow, ContextOverflow)
    assert (overflow.prompt_tokens, overflow.context_length) == (5000, 4096)
    assert overflow.code == "context_length_exceeded"
    bound = error_from_wire(error_to_wire(ContextOverflow(9000, 4096, at_least=True)))
    assert "is at least 9000 tokens" in str(bound)
    bad = error_from_wire(error_to_wire(InvalidRequest("bad grammar", param="grammar")))
    assert type(bad) is InvalidRequest and bad.param == "grammar"
    assert type(error_from_wire(error_to_wire(LoadFailed("no")))) is LoadFailed
    crash = error_from_wire(error_to_wire(ZeroDivisionError("boom")))
    assert type(crash) is EngineError and "ZeroDivisionError: boom" in str(crash)
    assert isinstance(error_from_wire("nonsense"), ProtocolError)


def test_the_shared_data_round_trips_through_json_frames() -> None:
    params = GenerationParams(
        max_tokens=9, seed=3, stop=["\n"], logit_bias={42: -100.0}, grammar="root ::= x"
    )
    chat = ChatRequest(
        [{"role": "user", "content": "hi"}], tools=[{"type": "function"}], params=params
    )
    completion = CompletionRequest("once upon", params)
    for request in (chat, completion):
        body = decode_body(encode_frame({"type": "generate", "id": 1, "r": request.to_dict()})[4:])
        assert request_from_dict(body["r"]) == request
    token = TokenEvent("a", 5, -0.5, [("a", -0.5), ("b", -2.0)], piece="a", piece_bytes=[97])
    assert token.to_dict() == dataclasses.asdict(token)  # written out: every field, as is
    done = DoneEvent(StopReason.STOP_STRING, 3, 4, 0.1, 0.2, 15.0, stop_string="\n")
    spec = LoadSpec("/m.gguf", "llama_cpp", context_length=2048, gpu_ratio=0.5)
    info = EngineInfo("fake", "1", ["json"], 64, "fake", None, 0, False, True)
    for value in (token, done, spec, info):
        body = decode_body(encode_frame({"type": "x", "id": 1, "v": value.to_dict()})[4:])
        assert type(value).from_dict(body["v"]) == value


def test_unknown_request_kinds_and_stop_reasons_are_refused() -> None:
    with pytest.raises(ProtocolError):
        request_from_dict({"kind": "poem"})
    with pytest.raises(ProtocolError):
        DoneEvent.from_dict({"stop_reason": "bored"})
    with pytest.raises(ProtocolError):
        LoadSpec.from_dict({"engine": "fake"})  # no model_path
