"""A deterministic fake engine that ships in the package, for tests and demos.

Its "model file" can be any file. A file holding a JSON object is read as options, and so
is a GGUF file's `fake.options` string (any other file gets the defaults):

    {"fake": true, "token_delay": 0.01, "context_length": 256, "reply": "Hello there",
     "endless": false, "babble": false, "memory_mb": 0, "load_delay": 0,
     "crash_after_tokens": null, "fail_load": null, "embedding_dim": 16}

It "generates" by echoing `reply`, else the last user message (chat) or the prompt
(completion; a prompt of token ids has nothing to echo), one word (with its trailing
space; a word or space longer than TOKEN_CHARS takes several) per token, then EOS;
`endless` repeats it until max_tokens or the context is full. With `babble` (or nothing to
echo) it draws words at random from a small list with `random.Random(seed)`, so seeds
matter. `LMS_FAKE_TOKEN_DELAY` (seconds) overrides `token_delay`; `crash_after_tokens`
calls abort() like a broken native library would (in the daemon's process it raises
SimulatedCrash instead); `memory_mb` allocates (and touches) that much memory at load;
`load_delay` (seconds) makes loading slow, reporting its progress in tenths across it
(the same value again while it waits; a cancelled load stops within LOAD_POLL_S).

It has `LoadSpec.parallel` slots (base.BatchingEngine): up to that many generations run
side by side, each advancing one word per step, and a step takes `token_delay` however
many are running (like a batched decode).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import os
import random
import re
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

from daemon.engines.base import (
    ChatRequest,
    EmbedResult,
    EngineInfo,
    GenerationRequest,
    LoadProgressCallback,
    LoadSpec,
    PromptInput,
    StreamEvent,
    check_token_ids,
    keep_loading,
)
from daemon.engines.slots import DelegatedSlots, IteratorSlots, SlotRunner
from daemon.engines.streaming import RawToken, check_prompt_size, shape_stream
from daemon.errors import ContextOverflow, GgufError, InvalidRequest, LoadFailed
from daemon.gguf import read_header

TOKEN_CHARS = 32
LOAD_STEPS = 10  # progress reports across load_delay
LOAD_POLL_S = 0.02  # how soon a slow fake load notices it was cancelled
TOKEN_RE = re.compile(
    rf"\s{{0,{TOKEN_CHARS}}}\S{{1,{TOKEN_CHARS}}}\s{{0,{TOKEN_CHARS}}}|\s{{1,{TOKEN_CHARS}}}"
)
MAX_TOKEN_BYTES = 3 * TOKEN_CHARS * 4  # a token's text is at most this many UTF-8 bytes
WORDS = ("apple", "river", "stone", "cloud", "ember", "maple", "quartz", "delta", "lumen")
EOS_ID = 0
VOCAB_SIZE = 50_001  # token ids: EOS_ID, and 1..50000 (token_id)
DELAY_ENV = "LMS_FAKE_TOKEN_DELAY"
GGUF_OPTIONS_KEY = "fake.options"


@dataclass(frozen=True)
class FakeOptions:
    fake: bool = True
    token_delay: float = 0.0
    load_delay: float = 0.0
    context_length: int = 4096
    reply: str | None = None
    endless: bool = False
    babble: bool = False
    memory_mb: int = 0
    crash_after_tokens: int | None = None
    fail_load: str | None = None
    embedding_dim: int = 16


def read_options(path: str) -> FakeOptions:
    """The options of a fake model: a JSON file's object, a GGUF file's `fake.options`
    string (tests write catalog-visible fakes that way), or the defaults for anything else
    (a real GGUF, an MLX directory: `lmsd --engine fake` serves whatever is on disk)."""
    if os.path.isdir(path):
        return FakeOptions()
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
    except FileNotFoundError:
        raise LoadFailed(f"model file not found: {path}") from None
    except OSError as exc:
        raise LoadFailed(f"cannot read model file {path}: {exc.strerror}") from exc
    if head.startswith(b"GGUF"):
        return _gguf_options(path)
    if not head.lstrip().startswith(b"{"):
        return FakeOptions()
    return _options_from_json(head, path)


def _gguf_options(path: str) -> FakeOptions:
    try:
        text = read_header(path).metadata.get(GGUF_OPTIONS_KEY)
    except GgufError as exc:
        raise LoadFailed(f"{path} is not a readable GGUF: {exc}") from exc
    return _options_from_json(text.encode(), path) if isinstance(text, str) else FakeOptions()


def _options_from_json(raw: bytes, path: str) -> FakeOptions:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise LoadFailed(f"{path} is not a fake model: invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise LoadFailed(f"{path}: fake model options must be a JSON object")
    known = {f.name for f in fields(FakeOptions)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise LoadFailed(f"{path}: unknown fake model options {unknown}")
    try:
        return FakeOptions(**data)
    except TypeError as exc:
        raise LoadFailed(f"{path}: bad fake model options ({exc})") from exc


class SimulatedCrash(BaseException):
    """`crash_after_tokens` inside the daemon's process (inprocess.py): ends the engine's
    thread the way abort() ends a worker, without taking the daemon with it."""


def token_id(piece: str) -> int:
    return 1 + zlib.crc32(piece.encode()) % 50_000


def _pause_loading(seconds: float, still_wanted: Callable[[], bool]) -> None:
    """Sleeps in short slices, so that a cancelled load stops within one."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, LOAD_POLL_S))
        if not still_wanted():
            raise LoadFailed("loading was cancelled")


class FakeEngine(DelegatedSlots):
    def __init__(self) -> None:
        self._options = FakeOptions()
        self._ballast: bytearray | None = None
        self._delay = 0.0
        self._in_process = False
        self._slots = IteratorSlots(self._generate_batched)

    def load(self, spec: LoadSpec, progress: LoadProgressCallback = keep_loading) -> EngineInfo:
        options = read_options(spec.model_path)
        if options.fail_load:
            raise LoadFailed(options.fail_load)
        # Progress in tenths across load_delay, like a real engine reading its tensors.
        for step in range(LOAD_STEPS + 1):
            value = step / LOAD_STEPS
            if not progress(value):
                raise LoadFailed("loading was cancelled")
            if step < LOAD_STEPS:
                _pause_loading(options.load_delay / LOAD_STEPS, functools.partial(progress, value))
        if options.memory_mb:
            self._ballast = bytearray(b"\x01") * (options.memory_mb << 20)
        context = spec.context_length or options.context_length
        self._in_process = spec.in_process
        self._options = replace(options, context_length=context)
        self._delay = float(os.environ.get(DELAY_ENV) or options.token_delay)
        self._slots = IteratorSlots(
            self._generate_batched, spec.parallel, before_step=lambda: time.sleep(self._delay)
        )
        return EngineInfo(
            runtime_name="fake",
            runtime_version="1",
            supported_formats=["json"],
            context_length=context,
            arch="fake",
            quant=None,
            n_gpu_layers=0,
            embedding=spec.embedding,
            chat_template=True,
        )

    def count_tokens(self, text: str) -> int:
        return len(TOKEN_RE.findall(text))

    def tokenize(self, text: str) -> list[int]:
        return [token_id(piece) for piece in TOKEN_RE.findall(text)]

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        parts = []
        if tools:
            parts.append(f"<|tools|>\n{json.dumps(tools, sort_keys=True)}\n")
        for message in messages:
            parts.append(f"<|{message.get('role', 'user')}|>\n{_text(message)}\n")
        if add_generation_prompt:
            parts.append("<|assistant|>\n")
        return "".join(parts)

    # -- slots (base.BatchingEngine) ---------------------------------------------------

    def admit(
        self,
        key: int,
        request: GenerationRequest,
        cancelled: Callable[[], bool],
        arrived: float,
    ) -> None:
        self._slots.admit(key, request, cancelled, arrived)

    def _slot_runner(self) -> SlotRunner:
        return self._slots

    def _generate_batched(
        self, request: GenerationRequest, cancelled: Callable[[], bool]
    ) -> Iterator[StreamEvent]:
        return self.generate(request, cancelled, delay=False)  # a step sleeps once for all

    # -- one generation ---------------------------------------------------------------

    def generate(
        self, request: GenerationRequest, cancelled: Callable[[], bool], *, delay: bool = True
    ) -> Iterator[StreamEvent]:
        started = time.perf_counter()
        if isinstance(request, ChatRequest):
            prompt = self.render_chat(request.messages, request.tools)
            users = [m for m in request.messages if m.get("role") == "user"]
            source = _text(users[-1]) if users else ""
            check_prompt_size(prompt, self._options.context_length, MAX_TOKEN_BYTES)
            prompt_tokens = self.count_tokens(prompt)
        elif isinstance(request.prompt, str):
            source = request.prompt
            check_prompt_size(source, self._options.context_length, MAX_TOKEN_BYTES)
            prompt_tokens = self.count_tokens(source)
        else:
            check_token_ids(request.prompt, VOCAB_SIZE, param="prompt")
            source, prompt_tokens = "", len(request.prompt)
        if prompt_tokens >= self._options.context_length:
            raise ContextOverflow(prompt_tokens, self._options.context_length)
        if request.params.grammar is not None and not request.params.grammar.strip():
            raise InvalidRequest("empty grammar", param="grammar")
        text = self._options.reply if self._options.reply is not None else source
        if self._options.babble or not text.strip():
            rng = random.Random(request.params.seed)
            pieces: Iterator[str] = (rng.choice(WORDS) + " " for _ in itertools.count())
        else:
            words = TOKEN_RE.findall(text)
            if self._options.endless:
                words[-1] = words[-1].rstrip() + " "  # "a b" repeats as "a b a b ..."
                pieces = itertools.cycle(words)
            else:
                pieces = iter(words)
        return shape_stream(
            self._raw(pieces, request.params.logprobs, request.params.top_logprobs, delay),
            params=request.params,
            prompt_tokens=prompt_tokens,
            context_length=self._options.context_length,
            cancelled=cancelled,
            started=started,
        )

    def _raw(
        self, pieces: Iterator[str], logprobs: bool, top: int, delay: bool
    ) -> Iterator[RawToken]:
        for count, piece in enumerate(pieces):
            crash_at = self._options.crash_after_tokens
            if crash_at is not None and count >= crash_at:
                if self._in_process:
                    raise SimulatedCrash(f"crash_after_tokens={crash_at}")
                os.abort()
            if delay:
                time.sleep(self._delay)
            tid = token_id(piece)
            logprob = -(tid % 100) / 100 if logprobs else None
            alternatives = [(piece, logprob or 0.0), (piece.upper(), -5.0)][:top] if top else None
            yield RawToken(tid, piece.encode(), logprob=logprob, top_logprobs=alternatives)
        yield RawToken(EOS_ID, b"", eog=True)

    def embed(self, texts: list[PromptInput]) -> EmbedResult:
        for item in texts:
            if not isinstance(item, str):
                check_token_ids(item, VOCAB_SIZE, param="input")
        return EmbedResult(
            vectors=[_hash_vector(str(t), self._options.embedding_dim) for t in texts],
            prompt_tokens=sum(
                self.count_tokens(t) if isinstance(t, str) else len(t) for t in texts
            ),
        )

    def close(self) -> None:
        self._ballast = None


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    return "" if content is None else str(content)


def _hash_vector(text: str, dim: int) -> list[float]:
    raw: list[float] = []
    block = 0
    while len(raw) < dim:
        digest = hashlib.sha256(f"{block}:{text}".encode()).digest()
        raw.extend(b / 127.5 - 1.0 for b in digest)
        block += 1
    norm = math.sqrt(sum(v * v for v in raw[:dim])) or 1.0
    return [v / norm for v in raw[:dim]]
