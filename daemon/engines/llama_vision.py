"""A vision model's projector through llama.cpp's multimodal library (mtmd, as
llama-cpp-python exposes it in `llama_cpp.mtmd_cpp`): it cuts a rendered chat prompt
into text tokens and images, and encodes an image into embeddings in the text model's
space. Nothing here knows a model family: mtmd reads the projector's own metadata.

A prompt with images is one list of token ids in which each image stands as as many
placeholder ids as the image takes positions: negative numbers made from the hash of the
image's bytes and the position in it. So the slots' prompt cache (llama_slots.py) finds a
cached image again by plain prefix comparison, and never mistakes one image for another.

Positions: most models give an image's embeddings one position each. Models with M-RoPE
(Qwen2-VL and its successors) give the whole image `n_pos` positions (max(rows, columns))
and each embedding a (temporal, row, column, extra) position inside them; mtmd says which
(`mtmd_decode_use_mrope`) and computes those positions, so the span keeps them.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from daemon.engines import images
from daemon.engines.llama_lib import llama_cpp, mtmd_cpp
from daemon.errors import EngineError, InvalidRequest, LoadFailed

# mtmd and its CLIP encoder log every image to stderr; quiet unless the load is verbose.
_QUIET = mtmd_cpp.mtmd_log_set.argtypes[0](lambda _level, _text, _data: None)
_TEXT = 0  # MTMD_INPUT_CHUNK_TYPE_TEXT
_IMAGE = 1  # MTMD_INPUT_CHUNK_TYPE_IMAGE


def placeholder(image_hash: str, index: int) -> int:
    """The id that stands for position `index` of the image with this hash (always < 0)."""
    return -1 - (int(image_hash[:10], 16) << 20) - index


@dataclass
class ImageSpan:
    """One image of a prompt: its entries [start, start + n_tokens) in the token list,
    the positions it takes in the sequence (`n_pos`), and mtmd's chunk for it (freed once
    encoded, or when the request ends).

    `mrope`: for an M-RoPE model, each embedding's 4 position components relative to the
    image's first position p0 (shape 4 x n_tokens, section-major as llama_batch wants them)
    and which components add p0 (the rest are fixed)."""

    start: int
    n_tokens: int
    chunk: Any
    non_causal: bool
    n_pos: int = 0
    mrope: tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]] | None = None
    embeddings: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        if self.n_pos <= 0:
            self.n_pos = self.n_tokens

    @property
    def end(self) -> int:
        return self.start + self.n_tokens

    def write_mrope(self, out: Any, first: int, offset: int, count: int) -> None:
        """The positions of embeddings [offset, offset + count) of an image whose first
        position is `first`, section-major, into `out` (a ctypes array of >= 4 * count
        llama_pos)."""
        assert self.mrope is not None
        relative, moved = self.mrope
        view = np.ctypeslib.as_array(out)[: 4 * count].reshape(4, count)
        view[:] = relative[:, offset : offset + count] + (moved * first)[:, None]

    def free(self) -> None:
        if self.chunk:
            mtmd_cpp.mtmd_input_chunk_free(self.chunk)
            self.chunk = None


@dataclass
class VisionPrompt:
    tokens: list[int]  # text token ids, and placeholders where the images go
    spans: list[ImageSpan]


class Vision:
    """The projector of one loaded model. Calls come from the worker's one thread."""

    def __init__(
        self, mmproj_path: str, model: Any, *, n_threads: int, use_gpu: bool, verbose: bool
    ) -> None:
        if not verbose:
            mtmd_cpp.mtmd_log_set(_QUIET, None)
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = n_threads
        params.print_timings = False
        params.warmup = False
        self._ctx: Any = mtmd_cpp.mtmd_init_from_file(mmproj_path.encode(), model, params)
        if not self._ctx:
            raise LoadFailed(f"llama.cpp could not load the vision projector {mmproj_path}")
        if not mtmd_cpp.mtmd_support_vision(self._ctx):
            self.close()
            raise LoadFailed(f"{mmproj_path} is a projector without a vision encoder")
        self.marker = mtmd_cpp.mtmd_default_marker().decode()
        self.mrope = bool(mtmd_cpp.mtmd_decode_use_mrope(self._ctx))
        self.n_embd = int(llama_cpp.llama_model_n_embd_inp(model))

    def prompt(self, text: str, encoded: list[str], *, add_special: bool) -> VisionPrompt:
        """The rendered prompt with its images (base64 file bytes, in marker order)."""
        datas = [_bytes(item, i) for i, item in enumerate(encoded)]
        bitmaps = [self._bitmap(data, i) for i, data in enumerate(datas)]
        chunks = mtmd_cpp.mtmd_input_chunks_init()
        try:
            raw = text.encode("utf-8")
            given = mtmd_cpp.mtmd_input_text()
            given.text, given.text_len = raw, len(raw)
            given.add_special, given.parse_special = add_special, True
            array = (mtmd_cpp.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            status = mtmd_cpp.mtmd_tokenize(
                self._ctx, chunks, ctypes.byref(given), array, len(bitmaps)
            )
            if status == 1:
                raise InvalidRequest(
                    f"the prompt has {text.count(self.marker)} image places for "
                    f"{len(bitmaps)} images (is '{self.marker}' in a message's text?)",
                    param="messages",
                )
            if status != 0:
                raise InvalidRequest(
                    "the model's projector could not prepare an image", code="invalid_image"
                )
            return self._walk(chunks)
        finally:
            mtmd_cpp.mtmd_input_chunks_free(chunks)
            for bitmap in bitmaps:
                mtmd_cpp.mtmd_bitmap_free(bitmap)

    def _bitmap(self, data: bytes, index: int) -> Any:
        picture = images.decode(data, param=f"image {index + 1}")
        pixels = (ctypes.c_ubyte * len(picture.rgb)).from_buffer_copy(picture.rgb)
        bitmap = mtmd_cpp.mtmd_bitmap_init(picture.width, picture.height, pixels)
        if not bitmap:
            raise MemoryError
        mtmd_cpp.mtmd_bitmap_set_id(bitmap, images.image_id(data).encode())
        return bitmap

    def _walk(self, chunks: Any) -> VisionPrompt:
        tokens: list[int] = []
        spans: list[ImageSpan] = []
        try:
            for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
                chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, i)
                kind = int(mtmd_cpp.mtmd_input_chunk_get_type(chunk))
                if kind == _TEXT:
                    count = ctypes.c_size_t()
                    ids = mtmd_cpp.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                    tokens.extend(int(ids[j]) for j in range(count.value))
                elif kind == _IMAGE:
                    n = int(mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk))
                    ident = (mtmd_cpp.mtmd_input_chunk_get_id(chunk) or b"").decode()
                    copy = mtmd_cpp.mtmd_input_chunk_copy(chunk)
                    causal = not mtmd_cpp.mtmd_decode_use_non_causal(self._ctx, chunk)
                    span = ImageSpan(
                        len(tokens),
                        n,
                        copy,
                        non_causal=not causal,
                        n_pos=int(mtmd_cpp.mtmd_input_chunk_get_n_pos(chunk)),
                        mrope=_mrope_positions(chunk, n) if self.mrope else None,
                    )
                    spans.append(span)
                    tokens.extend(placeholder(ident, j) for j in range(n))
                else:
                    raise InvalidRequest("this server takes text and images only")
        except BaseException:
            for span in spans:
                span.free()
            raise
        return VisionPrompt(tokens, spans)

    def encode(self, span: ImageSpan) -> npt.NDArray[np.float32]:
        """The image's embeddings (n_tokens x n_embd), computed once and kept on the span."""
        if span.embeddings is None:
            if not span.chunk or mtmd_cpp.mtmd_encode_chunk(self._ctx, span.chunk) != 0:
                raise EngineError("the projector failed to encode an image")
            out = mtmd_cpp.mtmd_get_output_embd(self._ctx)
            size = span.n_tokens * self.n_embd
            span.embeddings = np.ctypeslib.as_array(out, shape=(size,)).copy()
            span.free()
        return span.embeddings

    def close(self) -> None:
        if self._ctx:
            mtmd_cpp.mtmd_free(self._ctx)
            self._ctx = None


def _mrope_positions(
    chunk: Any, n_tokens: int
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """mtmd's decoder positions for each embedding of an image, relative to the image's
    first position, and which of the 4 components move with that position. mtmd gives
    absolute positions for a first position p0; asking for p0 = 0 and p0 = 1 tells the
    offsets from the components that follow p0 (t, row, column) and those that do not."""
    tokens = mtmd_cpp.mtmd_input_chunk_get_tokens_image(chunk)
    relative = np.empty((4, n_tokens), dtype=np.int32)
    moved = np.zeros(4, dtype=np.int32)
    for i in range(n_tokens):
        at0 = mtmd_cpp.mtmd_image_tokens_get_decoder_pos(tokens, 0, i)
        at1 = mtmd_cpp.mtmd_image_tokens_get_decoder_pos(tokens, 1, i)
        for axis, name in enumerate(("t", "y", "x", "z")):  # llama.cpp's section order
            relative[axis, i] = getattr(at0, name)
            moved[axis] |= getattr(at1, name) != getattr(at0, name)
    return relative, moved


def _bytes(item: str, index: int) -> bytes:
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"image {index + 1} is not valid base64") from None
