"""Continuous batching for the llama.cpp engine: N slots, one llama.cpp context with N
sequences, every active slot advanced by ONE `llama_decode` per step.

A step puts into one `llama_batch`: the last sampled token of every generating slot (one
token each, logits on), then prompt tokens of slots still reading their prompt, at most
`prefill_chunk` of them while any slot is generating (a long prompt never freezes the
other streams for more than a chunk), or a whole batch when none is. After the decode,
each slot with logits samples its next token with its own sampler chain (seed, grammar,
penalties are per request) and feeds it to its own StreamShaper.

Prompt cache: a slot keeps its KV cells and their tokens after its request ends. A new
request takes the free slot whose cached tokens share the longest prefix with its prompt
(the least recently used one on a tie), drops the cells past that prefix
(`llama_memory_seq_rm`) and reads only the rest of its prompt.

Shared pool (`pool_cells`, llama.cpp's unified KV cache): all slots take their cells from
one pool. Before each decode the step makes room for what it puts in the batch: first
from idle slots' cached cells (least recently used first, from the end of their cache,
so the rest of a cached prefix stays usable), then by the rule "the oldest request goes
first": a newer request still reading its prompt gives its cells back and waits (it
reads them again later), and when only generating requests are left, the newest one
ends with `contextLengthReached`. The oldest request always has the whole pool, so
everything admitted finishes; no request ever writes into another one's cells.

Images (a vision model, llama_vision.py): a prompt's images are spans of placeholder ids
in its token list. Text tokens go into the shared batch up to the next image; an image is
read by a decode of its own (llama.cpp takes embeddings or tokens in one batch, never
both), after the step's token decode: the oldest request at an image has it encoded
(once: the embeddings stay with the request; while another slot is generating, the
encoding is that step's whole image work) and its embeddings decoded, at most
`prefill_chunk` of them a step while another slot is generating, like a prompt chunk
(a model whose images need non-causal attention reads each image whole). A cached prefix
that ends inside an image is cut back to the image's start.

Positions: a slot keeps each cached cell's position beside its token. Text and most
images take one position per cell; an M-RoPE model's image (Qwen2-VL) takes fewer
positions than cells, all its cells sharing the image's first position in the cache
(their row and column go into the 4-component positions of the embeddings' batch). So a
cell's position is not its index: cutting the cache at cell k removes the positions from
that cell's on (`llama_memory_seq_rm`), and never cuts an image in two.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from daemon.engines.base import GenerationParams, SlotOutput, StopReason
from daemon.engines.llama_lib import llama_cpp
from daemon.engines.llama_sampling import Sampler, token_logprobs
from daemon.engines.streaming import RawToken, StreamShaper
from daemon.errors import EngineError, InvalidRequest

if TYPE_CHECKING:  # vision instances only: llama_vision loads numpy and Pillow
    from daemon.engines.llama_vision import ImageSpan, Vision

# Prompt tokens per step while other slots are generating. Prompt processing runs at about
# 300 tokens/s on 2 CPU cores with SmolLM2, so 64 holds the other streams up for about
# 0.2 s a step, and costs the new request about one decode step (~16 ms) per chunk.
PREFILL_CHUNK = 64


@dataclass
class _Job:
    key: int
    prompt: list[int]
    params: GenerationParams
    sampler: Sampler
    shaper: StreamShaper
    cancelled: Callable[[], bool]
    arrived: float
    next_token: int | None = None  # sampled, not yet decoded
    logits_at: int = -1  # its row in this step's batch, when it has one
    spans: list[ImageSpan] = field(default_factory=list)  # its images, in prompt order

    def image_at(self, position: int) -> ImageSpan | None:
        """The first image that ends after `position` (the next one to read)."""
        return next((s for s in self.spans if s.end > position), None)


@dataclass
class _Slot:
    seq: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV this sequence holds
    positions: list[int] = field(default_factory=list)  # each cached cell's position
    next_pos: int = 0  # the position the next cell takes
    used_at: float = 0.0
    job: _Job | None = None

    def append(self, token: int) -> int:
        """Records one more text cell; returns its position."""
        pos = self.next_pos
        self.cached.append(token)
        self.positions.append(pos)
        self.next_pos = pos + 1
        return pos

    def pop(self) -> None:
        """Takes the last cell back (its KV was never written)."""
        self.cached.pop()
        self.next_pos = self.positions.pop()


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class LlamaSlots:
    """The slots of one llama.cpp context. Calls come from one thread."""

    def __init__(
        self,
        ctx: Any,
        vocab: Any,
        *,
        n_slots: int,
        context_length: int,
        n_batch: int,
        piece: Callable[[int], bytes],
        prefill_chunk: int = PREFILL_CHUNK,
        clock: Callable[[], float] = time.perf_counter,
        pool_cells: int | None = None,
        vision: Vision | None = None,
    ) -> None:
        self._ctx = ctx
        self._vocab = vocab
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self._memory = llama_cpp.llama_get_memory(ctx)
        self._slots = [_Slot(seq) for seq in range(n_slots)]
        self._context_length = context_length
        self._n_batch = n_batch
        self._piece = piece
        self._chunk = max(1, min(prefill_chunk, n_batch))
        self._clock = clock
        self._batch: Any = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._pool = pool_cells  # None: every slot has its own context_length cells
        self._vision = vision
        self._embd_batch: Any = None  # made on the first image
        self._mrope_pos: Any = None  # 4 positions per embedding, for M-RoPE models

    def slot_count(self) -> int:
        return len(self._slots)

    def free_slots(self) -> int:
        return sum(1 for s in self._slots if s.job is None)

    def active(self) -> int:
        return sum(1 for s in self._slots if s.job is not None)

    def cached_tokens(self) -> list[list[int]]:
        """Each slot's cached tokens (for tests and diagnostics)."""
        return [list(s.cached) for s in self._slots]

    # -- admitting ----------------------------------------------------------------------

    def admit(
        self,
        key: int,
        prompt: list[int],
        params: GenerationParams,
        cancelled: Callable[[], bool],
        arrived: float,
        spans: list[ImageSpan] | None = None,
    ) -> None:
        """Starts a tokenized prompt (that fits the context) in the free slot with the
        longest cached prefix. Raises before changing anything when it cannot start.
        `spans`: the prompt's images (their placeholders are in `prompt`), owned by the
        request from here on."""
        spans = spans or []
        free = [s for s in self._slots if s.job is None]
        if not free:
            raise EngineError("no free slot")
        if spans and spans[-1].end >= len(prompt):
            raise InvalidRequest("a prompt cannot end with an image", param="messages")
        for span in spans:
            if span.non_causal and span.n_tokens > self._n_batch:
                raise InvalidRequest(
                    f"an image takes {span.n_tokens} positions; this model reads an image "
                    f"whole and a batch holds {self._n_batch}",
                    code="image_too_large",
                )
        sampler = Sampler(self._vocab, self._n_vocab, params)  # raises on a bad grammar
        slot = max(free, key=lambda s: (common_prefix(s.cached, prompt), -s.used_at))
        # The last prompt token is always read again: its logits give the first token.
        keep = min(common_prefix(slot.cached, prompt), len(prompt) - 1)
        inside = next((s for s in spans if s.start < keep < s.end), None)
        if inside is not None:  # an image is read whole or not at all
            keep = inside.start
        self._truncate(slot, keep)
        shaper = StreamShaper(
            params=params,
            prompt_tokens=len(prompt),
            context_length=self._context_length,
            started=arrived,
            cached_tokens=len(slot.cached),  # what _truncate kept is not read again
        )
        slot.job = _Job(key, prompt, params, sampler, shaper, cancelled, arrived, spans=spans)

    def _truncate(self, slot: _Slot, keep: int) -> int:
        """Drops the slot's KV cells from cell `keep` on (all of them if the memory cannot
        drop a tail, as with recurrent models); returns how many cells went. A cut inside
        an image whose cells share one position takes the whole image."""
        if keep >= len(slot.cached):
            return 0
        positions = slot.positions
        while keep > 0 and positions[keep - 1] == positions[keep]:
            keep -= 1
        memory, seq = self._memory, slot.seq
        if keep == 0 or not llama_cpp.llama_memory_seq_rm(memory, seq, positions[keep], -1):
            llama_cpp.llama_memory_seq_rm(memory, seq, -1, -1)
            keep = 0
        dropped = len(slot.cached) - keep
        slot.next_pos = positions[keep]
        del slot.cached[keep:]
        del positions[keep:]
        return dropped

    # -- stepping -----------------------------------------------------------------------

    def step(self) -> list[SlotOutput]:
        out: list[SlotOutput] = []
        now = self._clock()
        for slot in self._slots:
            job = slot.job
            if job is None:
                continue
            if job.cancelled():
                self._emit(slot, job.shaper.end(StopReason.USER_STOPPED, now), out)
            elif job.shaper.limit_reached():  # max_tokens <= 0: the prompt is not even read
                self._emit(slot, job.shaper.end(StopReason.MAX_TOKENS, now), out)
        in_batch = self._fill(out, now)
        if in_batch:
            self._decode_tokens(in_batch, out, now)
        if self._vision is not None:
            self._read_image(out)
        return out

    def _decode_tokens(self, in_batch: list[_Slot], out: list[SlotOutput], now: float) -> None:
        status = llama_cpp.llama_decode(self._ctx, self._batch)
        if status == 1 and self._pool is not None:  # no room after all: nothing was written
            self._undo_batch(in_batch, out, now)
            return
        if status != 0:
            for slot in in_batch:  # their KV cells are in doubt: forget them
                self._truncate(slot, 0)
                self._fail(slot, EngineError(f"llama_decode failed ({status})"), out)
            return
        now = self._clock()
        for slot in in_batch:
            job = slot.job
            if job is None or job.logits_at < 0:
                continue
            try:
                raw = self._sample(job)
            except Exception as exc:  # a sampler failure ends this request only
                self._fail(slot, exc, out)
                continue
            self._emit(slot, job.shaper.feed(raw, now), out)
            if slot.job is not None:
                job.next_token = raw.token_id

    def _read_image(self, out: list[SlotOutput]) -> None:
        """Reads (part of) one image: the oldest request whose prompt is at an image."""
        vision = self._vision
        assert vision is not None
        at_image = []
        for slot in self._slots:
            job = slot.job
            if job is None or job.next_token is not None:
                continue
            span = job.image_at(len(slot.cached))
            if span is not None and span.start <= len(slot.cached):
                at_image.append((slot, job, span))
        if not at_image:
            return
        slot, job, span = min(at_image, key=lambda found: found[1].arrived)
        if span.non_causal and len(slot.cached) > span.start:  # read it whole again
            self._truncate(slot, span.start)
        done = len(slot.cached) - span.start
        generating = any(s.job is not None and s.job.next_token is not None for s in self._slots)
        if span.embeddings is None:
            try:
                vision.encode(span)
            except Exception as exc:
                self._fail(slot, exc, out)
                return
            if generating:  # the encoding is this step's work; its decode comes next step
                return
        embeddings = span.embeddings
        assert embeddings is not None
        want = span.n_tokens - done
        if not span.non_causal:
            want = min(want, self._chunk if generating else self._n_batch)
        if self._pool is not None:
            got = _Room(self).take_up_to(slot, want)
            if got < want and (span.non_causal or got == 0):
                return  # it waits for room (an older request has the pool)
            want = got
        first = slot.next_pos if done == 0 else slot.positions[span.start]
        status = self._decode_embeddings(slot, span, first, done, want)
        if status != 0:
            self._truncate(slot, span.start)
            if status == 1 and self._pool is not None:
                now = self._clock()
                self._emit(slot, job.shaper.end(StopReason.CONTEXT_FULL, now), out)
            else:
                self._fail(slot, EngineError(f"llama_decode failed ({status})"), out)
            return
        start = len(slot.cached)
        slot.cached.extend(job.prompt[start : start + want])
        if span.mrope is not None:  # the image's cells share its first position
            slot.positions.extend([first] * want)
            slot.next_pos = first + span.n_pos if done + want == span.n_tokens else first
        else:
            slot.positions.extend(range(first + done, first + done + want))
            slot.next_pos = first + done + want

    def _decode_embeddings(
        self, slot: _Slot, span: ImageSpan, first: int, offset: int, count: int
    ) -> int:
        """Decodes the image's embeddings [offset, offset + count); the image's first
        position is `first`."""
        vision = self._vision
        assert vision is not None and span.embeddings is not None
        n_embd = vision.n_embd
        if self._embd_batch is None:
            self._embd_batch = llama_cpp.llama_batch_init(self._n_batch, n_embd, 1)
        batch = self._embd_batch
        rows = span.embeddings[offset * n_embd : (offset + count) * n_embd]
        ctypes.memmove(batch.embd, rows.ctypes.data, rows.nbytes)
        for i in range(count):
            batch.pos[i] = first + offset + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = slot.seq
            batch.logits[i] = False
        batch.n_tokens = count
        own_pos = batch.pos
        if span.mrope is not None:  # section-major: all t, then all rows, columns, extra
            if self._mrope_pos is None:
                self._mrope_pos = (llama_cpp.llama_pos * (4 * self._n_batch))()
            span.write_mrope(self._mrope_pos, first, offset, count)
            batch.pos = ctypes.cast(self._mrope_pos, ctypes.POINTER(llama_cpp.llama_pos))
        if span.non_causal:
            llama_cpp.llama_set_causal_attn(self._ctx, False)
        try:
            return int(llama_cpp.llama_decode(self._ctx, batch))
        finally:
            batch.pos = own_pos  # llama_batch_free frees the batch's own array
            if span.non_causal:
                llama_cpp.llama_set_causal_attn(self._ctx, True)

    def _fill(self, out: list[SlotOutput], now: float) -> list[_Slot]:
        """Builds this step's batch; returns the slots in it."""
        batch = self._batch
        n = 0
        in_batch: list[_Slot] = []
        room = _Room(self) if self._pool is not None else None

        def put(slot: _Slot, token: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = slot.append(token)
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = slot.seq
            batch.logits[n] = logits
            n += 1

        active = sorted((s for s in self._slots if s.job is not None), key=_arrival)
        for slot in active:
            job = slot.job
            if job is None:  # a newer request that gave its cells to an older one
                continue
            job.logits_at = -1
            if job.next_token is not None:
                if room is not None and not self._room_for_token(room, slot, out, now):
                    continue
                job.logits_at = n
                put(slot, job.next_token, True)
                in_batch.append(slot)
        budget = self._chunk if in_batch else self._n_batch
        reading = [s for s in active if s.job and s.job.next_token is None]
        for slot in reading:
            job = slot.job
            assert job is not None
            limit = len(job.prompt) - len(slot.cached)
            span = job.image_at(len(slot.cached))
            if span is not None:
                if span.start <= len(slot.cached):
                    continue  # at an image: _read_image reads it
                limit = span.start - len(slot.cached)
            take = min(budget, self._n_batch - n, limit)
            if take > 0 and room is not None:
                take = room.take_up_to(slot, take)
            if take <= 0:
                break
            for _ in range(take):
                last = len(slot.cached) == len(job.prompt) - 1
                if last:
                    job.logits_at = n
                put(slot, job.prompt[len(slot.cached)], last)
            budget -= take
            in_batch.append(slot)
        batch.n_tokens = n
        return in_batch

    def _room_for_token(self, room: _Room, slot: _Slot, out: list[SlotOutput], now: float) -> bool:
        """A cell for a generating slot's next token. When none is left, the newest
        generating request ends (contextLengthReached): this one, or a newer one whose
        cells then go to it. Generating slots come here oldest first."""
        while not room.take(slot, 1):
            generating = [
                s for s in self._slots if s.job is not None and s.job.next_token is not None
            ]
            newest = max(generating, key=_arrival)
            job = newest.job
            assert job is not None
            self._emit(newest, job.shaper.end(StopReason.CONTEXT_FULL, now), out)
            if newest is slot:
                return False
        return True

    def _undo_batch(self, in_batch: list[_Slot], out: list[SlotOutput], now: float) -> None:
        """llama_decode found no room for the batch (it wrote nothing): take the batch's
        tokens back and end the newest request in it, so the others fit next step."""
        for i in range(self._batch.n_tokens - 1, -1, -1):
            seq = int(self._batch.seq_id[i][0])
            self._slots[seq].pop()
        newest = max(in_batch, key=_arrival)
        job = newest.job
        assert job is not None
        self._truncate(newest, 0)
        self._emit(newest, job.shaper.end(StopReason.CONTEXT_FULL, now), out)

    def cells_used(self) -> int:
        """KV cells held by all slots (each cached token is one cell)."""
        return sum(len(s.cached) for s in self._slots)

    def _sample(self, job: _Job) -> RawToken:
        token = job.sampler.sample(self._ctx, job.logits_at)
        logprob: float | None = None
        top: list[tuple[str, float]] | None = None
        if job.params.logprobs:
            logprob, top = token_logprobs(
                self._ctx,
                job.logits_at,
                self._n_vocab,
                token,
                job.params.top_logprobs,
                lambda t: self._piece(t).decode("utf-8", errors="replace"),
            )
        return RawToken(
            token_id=token,
            piece=self._piece(token),
            eog=bool(llama_cpp.llama_vocab_is_eog(self._vocab, token)),
            logprob=logprob,
            top_logprobs=top,
        )

    def _emit(self, slot: _Slot, events: list[Any], out: list[SlotOutput]) -> None:
        job = slot.job
        assert job is not None
        out.extend((job.key, event) for event in events)
        if job.shaper.finished:
            self._release(slot)

    def _fail(self, slot: _Slot, exc: Exception, out: list[SlotOutput]) -> None:
        job = slot.job
        assert job is not None
        out.append((job.key, exc))
        self._release(slot)

    def _release(self, slot: _Slot) -> None:
        """The request leaves; its KV cells (and their tokens) stay for the next one."""
        if slot.job is not None:
            slot.job.sampler.close()
            for span in slot.job.spans:
                span.free()
            slot.job = None
        slot.used_at = self._clock()

    def drop(self, key: int) -> None:
        """Ends a request without events (its consumer went away)."""
        for slot in self._slots:
            if slot.job is not None and slot.job.key == key:
                self._release(slot)

    def abort_all(self) -> None:
        for slot in self._slots:
            self._release(slot)

    def forget(self) -> None:
        """The context's memory was cleared behind our back (an embedding call)."""
        for slot in self._slots:
            slot.cached.clear()
            slot.positions.clear()
            slot.next_pos = 0

    def close(self) -> None:
        self.abort_all()
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._embd_batch is not None:
            llama_cpp.llama_batch_free(self._embd_batch)
            self._embd_batch = None


class _Room:
    """Makes room in the shared pool for one step's batch (see the module's docstring)."""

    def __init__(self, slots: LlamaSlots) -> None:
        self._owner = slots
        assert slots._pool is not None
        self.free = slots._pool - slots.cells_used()

    def take(self, slot: _Slot, want: int) -> bool:
        """Reserves `want` cells for `slot`, freeing some if needed; False if it cannot."""
        return self.take_up_to(slot, want) == want

    def take_up_to(self, slot: _Slot, want: int) -> int:
        """Reserves as many of `want` cells as it can for `slot` (0: it must wait)."""
        if self.free < want:
            self._reclaim_idle(want - self.free)
        if self.free < want:
            self._preempt_newer(slot, want - self.free)
        got = max(0, min(want, self.free))
        self.free -= got
        return got

    def _reclaim_idle(self, need: int) -> None:
        owner = self._owner
        idle = sorted((s for s in owner._slots if s.job is None and s.cached), key=_last_used)
        for slot in idle:
            if need <= 0:
                return
            drop = owner._truncate(slot, len(slot.cached) - min(need, len(slot.cached)))
            self.free += drop
            need -= drop

    def _preempt_newer(self, slot: _Slot, need: int) -> None:
        """Newer requests still reading their prompt give their cells back (newest first)."""
        owner = self._owner
        assert slot.job is not None
        mine = slot.job.arrived
        newer = [
            s
            for s in owner._slots
            if s.job is not None
            and s.job.next_token is None
            and s.job.arrived > mine
            and s.cached
            and s is not slot
        ]
        for other in sorted(newer, key=_arrival, reverse=True):
            if need <= 0:
                return
            drop = owner._truncate(other, len(other.cached) - min(need, len(other.cached)))
            self.free += drop
            need -= drop


def _last_used(slot: _Slot) -> float:
    return slot.used_at


def _arrival(slot: _Slot) -> float:
    return slot.job.arrived if slot.job is not None else 0.0
