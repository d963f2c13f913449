"""Structured output for the MLX engine, through llguidance (Microsoft's constrained
decoding library, used by llama.cpp, vLLM and SGLang; it reads Hugging Face tokenizers).

`GenerationParams.structured` ({"schema", "prefix", "suffix", "repeat"}) becomes a Lark
grammar whose value is llguidance's own JSON-schema compiler (`%json {...}`):

    start: "prefix" value "suffix"                  (repeat: one or more, whitespace between)
    value: %json {schema}

Each step the matcher gives the set of allowed tokens as a bitmask; the other logits
become -inf before sampling, and the sampled token is fed back to the matcher. Once the
value is complete only EOS is allowed, so the stream ends with `eosFound`.
llguidance is imported here only, on the first structured request of a loaded model.
"""

from __future__ import annotations

import json
from typing import Any

import mlx.core as mx
import numpy as np

from daemon.errors import EngineError, InvalidRequest

PARAM = "response_format"
MISSING = (
    "structured output (response_format json_schema/json_object) on MLX models needs the "
    "Python package 'llguidance', which is not installed: pip install 'lmsd[mlx]' "
    "(or: pip install llguidance)"
)


def structured_lark(structured: dict[str, Any]) -> str:
    """The Lark grammar (llguidance's dialect) for prefix + JSON value + suffix."""
    schema = structured.get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequest("the JSON schema must be an object", param=PARAM)
    parts = [json.dumps(structured.get("prefix") or ""), "value"]
    parts.append(json.dumps(structured.get("suffix") or ""))
    item = " ".join(p for p in parts if p != '""')
    if structured.get("repeat"):
        start = f"start: item (/[ \\t\\n]*/ item)* /[ \\t\\n]*/\nitem: {item}"
    else:
        start = f"start: {item}"
    return f"{start}\nvalue: %json {json.dumps(schema)}\n"


class StructuredFactory:
    """Per loaded model: the llguidance view of its tokenizer (built once, ~0.5 s)."""

    def __init__(self, hf_tokenizer: Any, eos: list[int], n_vocab: int) -> None:
        try:
            import llguidance
        except ImportError as exc:
            raise InvalidRequest(MISSING, param=PARAM) from exc
        self._llg = llguidance
        self._n_vocab = n_vocab
        try:
            self._tokenizer = llguidance.LLTokenizer(
                hf_tokenizer.backend_tokenizer.to_str(), n_vocab=n_vocab, eos_token=eos
            )
        except (ValueError, RuntimeError, AttributeError) as exc:
            raise InvalidRequest(
                f"structured output is not available for this model's tokenizer: {exc}",
                param=PARAM,
            ) from exc

    def constraint(self, structured: dict[str, Any]) -> JsonConstraint:
        grammar = structured_lark(structured)
        matcher = self._llg.LLMatcher(self._tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidRequest(
                f"the JSON schema cannot be used for structured output: {matcher.get_error()}",
                param=PARAM,
            )
        return JsonConstraint(matcher, self._n_vocab)


class JsonConstraint:
    """One request's matcher: masks logits, then follows the sampled token."""

    def __init__(self, matcher: Any, n_vocab: int) -> None:
        self._matcher = matcher
        self._n_vocab = n_vocab

    def allowed(self) -> np.ndarray[Any, np.dtype[np.bool_]]:
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        mask = np.unpackbits(bits, bitorder="little")[: self._n_vocab].astype(np.bool_)
        if mask.shape[0] < self._n_vocab:  # logits wider than the tokenizer's vocabulary
            mask = np.pad(mask, (0, self._n_vocab - mask.shape[0]))
        return mask

    def apply(self, logits: mx.array) -> mx.array:
        if self._matcher.is_error():
            raise EngineError(f"structured output failed: {self._matcher.get_error()}")
        width = logits.shape[-1]
        mask = self.allowed()
        if width != mask.shape[0]:
            mask = np.resize(np.pad(mask, (0, max(0, width - mask.shape[0]))), width)
        return mx.where(mx.array(mask), logits, mx.array(-np.inf, dtype=logits.dtype))

    def accept(self, token: int) -> None:
        if not self._matcher.is_stopped():
            self._matcher.consume_token(token)
