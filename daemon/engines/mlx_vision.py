"""MLX vision models (a folder whose config.json has `vision_config`) through mlx-vlm, for
the MLX engine (mlx_impl.py), which keeps its interface: the same requests, the same
token stream (streaming.shape_stream).

mlx-vlm is imported only when such a model loads; without it the load fails with a
LoadFailed that says so. A request's images reach the model as mlx-vlm's own examples
feed them: the chat template renders each image as the model's image placeholder, the
model's processor expands it and computes the pixel values, and mlx-vlm's `generate_step`
reads the prompt (image embeddings merged in by the model's `get_input_embeddings`) and
generates, with our sampler and logits processors. No KV cache is kept between requests:
every request reads its whole prompt (a model may keep position state from its images).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import mlx.core as mx
import numpy as np

from daemon.engines import images as image_codec
from daemon.engines import mlx_sampling
from daemon.engines.base import IMAGE_MARKER, ChatRequest, GenerationParams
from daemon.engines.streaming import RawToken
from daemon.errors import ContextOverflow, InvalidRequest, LoadFailed

PREFILL_CHUNK = 512
MISSING = (
    "{path} is an MLX vision model (its config.json has vision_config); MLX vision models "
    "run on the Python package 'mlx_vlm', which cannot be imported here ({why}); install it "
    "with: pip install 'lmsd[mlx]' (or: pip install mlx-vlm)"
)


def is_vision(config: dict[str, Any]) -> bool:
    """The catalog's test too (catalog._mlx_record): a vision tower is configured."""
    return "vision_config" in config


def mlx_vlm_version() -> str:
    from importlib.metadata import version

    return version("mlx-vlm")


@dataclass
class Prompt:
    """A request's prompt as the model reads it."""

    ids: list[int]
    pixel_values: Any = None
    mask: Any = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. image_grid_thw (Qwen2-VL)


class VisionModel:
    """A loaded mlx-vlm model and its processor."""

    def __init__(self, path: Path) -> None:
        try:
            from mlx_vlm.generate.ar import generate_step
            from mlx_vlm.utils import load, prepare_inputs, should_add_special_tokens
        except ImportError as exc:  # not installed, or no mlx-vlm for this platform
            raise LoadFailed(MISSING.format(path=path, why=exc)) from exc
        self._generate_step: Callable[..., Any] = generate_step
        self._prepare_inputs: Callable[..., Any] = prepare_inputs
        self.model: Any
        self.processor: Any
        try:
            self.model, self.processor = load(str(path))
        except MemoryError as exc:
            raise LoadFailed(f"out of memory loading {path}") from exc
        except Exception as exc:  # mlx-vlm raises ValueError, KeyError, OSError, ...
            raise LoadFailed(f"mlx-vlm could not load {path}: {type(exc).__name__}: {exc}") from exc
        self.tokenizer: Any = getattr(self.processor, "tokenizer", self.processor)
        config = self.model.config
        self._model_type = str(getattr(config, "model_type", ""))
        self._image_token_index = getattr(config, "image_token_index", None)
        self._add_special = bool(should_add_special_tokens(self._model_type, self.processor))

    def eos_ids(self) -> set[int]:
        found: set[int] = set()
        for value in (
            getattr(self.model.config, "eos_token_id", None),
            self.tokenizer.eos_token_id,
        ):
            if isinstance(value, int):
                found.add(value)
            elif isinstance(value, list):
                found.update(int(v) for v in value if isinstance(v, int))
        return found

    # -- the prompt -------------------------------------------------------------------

    def image_prompt(self, request: ChatRequest, n_ctx: int) -> Prompt:
        """The chat with its images, as token ids and pixel values; a ContextOverflow when
        it does not fit `n_ctx`."""
        pictures = [_picture(data, n) for n, data in enumerate(request.images, start=1)]
        text = self._render(request)
        inputs = self._inputs(text, pictures)
        ids = [int(t) for t in inputs["input_ids"].reshape(-1).tolist()]
        if len(ids) >= n_ctx:
            raise ContextOverflow(len(ids), n_ctx)
        extra = {
            k: v
            for k, v in inputs.items()
            if k not in ("input_ids", "pixel_values", "attention_mask") and v is not None
        }
        return Prompt(ids, inputs.get("pixel_values"), inputs.get("attention_mask"), extra)

    def _render(self, request: ChatRequest) -> str:
        """The chat template's text. Each image goes in as a content part `{"type":
        "image"}` (what Hugging Face vision templates read); a template that does not
        place them (a text-only template) gets the content as one string with the
        processor's image token where each image was."""
        structured = [_with_image_parts(m) for m in request.messages]
        kwargs: dict[str, Any] = {"add_generation_prompt": request.add_generation_prompt}
        if request.tools:
            kwargs["tools"] = request.tools
        placeholder = self._placeholder()
        try:
            text = str(self.tokenizer.apply_chat_template(structured, tokenize=False, **kwargs))
            if placeholder is None or text.count(placeholder) >= len(request.images):
                return text
        except (jinja2.TemplateError, ValueError, TypeError, KeyError):
            if placeholder is None:
                raise InvalidRequest(
                    "this vision model's chat template cannot place images", param="messages"
                ) from None
        flat = [
            {**m, "content": m["content"].replace(IMAGE_MARKER, placeholder)}
            if isinstance(m.get("content"), str)
            else m
            for m in request.messages
        ]
        try:
            return str(self.tokenizer.apply_chat_template(flat, tokenize=False, **kwargs))
        except (jinja2.TemplateError, ValueError, TypeError, KeyError) as exc:
            raise InvalidRequest(
                f"the model's chat template rejected the messages: {exc}", param="messages"
            ) from exc

    def _placeholder(self) -> str | None:
        """What the template writes for an image, before the processor expands it
        (Gemma 3 writes its begin-of-image token, most others the image token)."""
        for name in ("boi_token", "image_token"):
            value = getattr(self.processor, name, None)
            if isinstance(value, str) and value:
                return value
        return None

    def _inputs(self, text: str, pictures: list[Any]) -> dict[str, Any]:
        try:
            inputs: dict[str, Any] = self._prepare_inputs(
                self.processor,
                images=pictures,
                prompts=text,
                image_token_index=self._image_token_index,
                add_special_tokens=self._add_special,
            )
            return inputs
        except ValueError:
            # mlx-vlm 0.7.10's LlavaProcessor hands prepare_inputs' `padding` on to the
            # image processor, which transformers 5 refuses: call the processor plainly.
            pass
        try:
            return dict(self.processor(text=[text], images=pictures))
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidRequest(
                f"the model's processor could not read the images: {exc}", param="messages"
            ) from exc

    # -- generation ---------------------------------------------------------------------

    def tokens(
        self,
        prompt: Prompt,
        params: GenerationParams,
        constraint: Any,
        n_ctx: int,
        piece: Callable[[int], bytes],
        eos: frozenset[int],
        logprobs: Callable[[mx.array, int, GenerationParams], tuple[float, Any]],
    ) -> Iterator[RawToken]:
        """mlx-vlm's generate_step with our sampler; logprobs are those it yields (after
        logit bias and penalties)."""
        language = getattr(self.model, "language_model", None)
        for name in ("_position_ids", "_rope_deltas"):  # a previous request's image state
            if language is not None and hasattr(language, name):
                setattr(language, name, None)
        steps: Iterator[tuple[Any, mx.array]] = self._generate_step(
            mx.array([prompt.ids]),
            self.model,
            prompt.pixel_values,
            prompt.mask,
            max_tokens=max(n_ctx - len(prompt.ids), 1),
            sampler=mlx_sampling.sampler(params),
            logits_processors=[_Constrained(constraint)] if constraint is not None else None,
            logit_bias=params.logit_bias or None,
            **mlx_sampling.penalties(params),
            prefill_step_size=PREFILL_CHUNK,
            **prompt.extra,
        )
        for sampled, vector in steps:
            token = int(sampled)
            lp, top = logprobs(vector[None], token, params) if params.logprobs else (None, None)
            yield RawToken(
                token_id=token, piece=piece(token), eog=token in eos, logprob=lp, top_logprobs=top
            )


class _Constrained:
    """A structured-output constraint as an mlx-vlm logits processor: it is called with the
    tokens so far (first the prompt's, then one more each step), so each call first feeds
    the constraint the tokens sampled since the last."""

    def __init__(self, constraint: Any) -> None:
        self._constraint = constraint
        self._seen: int | None = None

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        count = int(tokens.shape[0])
        if self._seen is not None:
            for token in np.asarray(tokens[self._seen :]).reshape(-1):
                self._constraint.accept(int(token))
        self._seen = count
        result: mx.array = self._constraint.apply(logits)
        return result


def _with_image_parts(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if not isinstance(content, str) or IMAGE_MARKER not in content:
        return message
    parts: list[dict[str, Any]] = []
    for n, text in enumerate(content.split(IMAGE_MARKER)):
        if n:
            parts.append({"type": "image"})
        if text:
            parts.append({"type": "text", "text": text})
    return {**message, "content": parts}


def _picture(data: str, n: int) -> Any:
    """A request image (base64 file bytes) as an RGB PIL image."""
    from PIL import Image

    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"image {n} is not base64", param="messages") from None
    decoded = image_codec.decode(raw, param=f"image {n}")
    return Image.frombytes("RGB", (decoded.width, decoded.height), decoded.rgb)
