"""Per-request sampling for the llama.cpp engine: one native sampler chain per slot (logit
bias, penalties, grammar, then greedy or top-k/top-p/min-p/temperature and a seeded draw),
the GBNF made of a JSON schema, and the model's own logprobs."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from daemon.engines.base import GenerationParams
from daemon.engines.llama_lib import llama_cpp
from daemon.errors import InvalidRequest

PENALTY_LAST_N = 64  # tokens the repeat/frequency/presence penalties look back over
# The largest grammar a request may bring: the daemon bounds the JSON schema first
# (daemon/prediction/schema_limits.py); this stops whatever it lets through. A 1 MB
# grammar is converted and parsed in about 0.1 s, during which this worker's other
# slots wait.
MAX_GRAMMAR_BYTES = 1024 * 1024


# The `char` rule of llama-cpp-python's JSON-schema converter, and llama.cpp's.
LOOSE_STRING_CHAR = r'char ::= [^"\\] |'
JSON_STRING_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def structured_grammar(structured: dict[str, Any]) -> str:
    """GBNF for prefix + a JSON value matching the schema + suffix (repeated when asked),
    through llama.cpp's own JSON-schema converter."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        gbnf = json_schema_to_gbnf(json.dumps(structured["schema"]))
    except Exception as exc:  # the converter raises plain Exceptions on unsupported schemas
        raise InvalidRequest(
            f"the JSON schema cannot be turned into a grammar: {exc}", param="response_format"
        ) from exc
    rules = re.sub(r"^root ::=", "structured-value ::=", gbnf, flags=re.MULTILINE)
    # llama-cpp-python's converter lets a string hold raw control characters (a newline),
    # which JSON forbids: the output would not parse. llama.cpp's own converter excludes
    # them (and DEL), as here.
    rules = rules.replace(LOOSE_STRING_CHAR, JSON_STRING_CHAR)
    # json.dumps makes a GBNF string literal: the escapes are the same.
    prefix, suffix = structured.get("prefix") or "", structured.get("suffix") or ""
    if not suffix and not structured.get("repeat"):
        # The value ends the output: no optional space after it, so the grammar is complete
        # (only end-of-generation can follow) right at its last character.
        rules = re.sub(r"^(structured-value ::= .*) space$", r"\1", rules, flags=re.MULTILINE)
    item = " ".join(
        [json.dumps(prefix)] * bool(prefix)
        + ["structured-value"]
        + [json.dumps(suffix)] * bool(suffix)
    )
    root = f"root ::= ({item} [ \\t\\n]*)+" if structured.get("repeat") else f"root ::= {item}"
    return f"{root}\n{rules}"


def check_grammar_size(gbnf: str) -> None:
    """Refuses (400) a grammar over MAX_GRAMMAR_BYTES before llama.cpp parses it."""
    size = len(gbnf.encode("utf-8"))
    if size > MAX_GRAMMAR_BYTES:
        raise InvalidRequest(
            f"the JSON schema is too large for structured output: its grammar is {size} "
            f"bytes, above the limit of {MAX_GRAMMAR_BYTES} bytes",
            param="response_format",
            code="schema_too_large",
        )


class Sampler:
    """One request's llama.cpp sampler chain, in llama.cpp's usual order: logit bias,
    penalties, grammar, then greedy (temperature 0) or top-k, top-p, min-p, temperature
    and a seeded draw. Its state (penalty history, grammar, RNG) is this request's alone."""

    def __init__(self, vocab: Any, n_vocab: int, params: GenerationParams) -> None:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self._chain: Any = chain
        try:
            if params.logit_bias:
                items = [(t, b) for t, b in params.logit_bias.items() if 0 <= t < n_vocab]
                biases = (llama_cpp.llama_logit_bias * len(items))(
                    *(llama_cpp.llama_logit_bias(token, bias) for token, bias in items)
                )
                self._add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(items), biases))
            self._add(
                llama_cpp.llama_sampler_init_penalties(  # the binding's argument list
                    n_vocab,
                    PENALTY_LAST_N,
                    params.repeat_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                )
            )
            gbnf = params.grammar
            if params.structured is not None:
                gbnf = structured_grammar(params.structured)
            if gbnf is not None:
                check_grammar_size(gbnf)
                grammar = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
                if not grammar:
                    raise InvalidRequest("the grammar is not valid GBNF", param="grammar")
                self._add(grammar)
            if params.temperature <= 0:
                self._add(llama_cpp.llama_sampler_init_greedy())
            else:
                seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed
                self._add(llama_cpp.llama_sampler_init_top_k(params.top_k))
                self._add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
                self._add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
                self._add(llama_cpp.llama_sampler_init_temp(params.temperature))
                self._add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        except BaseException:
            self.close()
            raise

    def _add(self, sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def sample(self, ctx: Any, index: int) -> int:
        """Samples (and accepts) the next token from the logits of batch position `index`."""
        return int(llama_cpp.llama_sampler_sample(self._chain, ctx, index))

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None

    def __del__(self) -> None:
        self.close()


def token_logprobs(
    ctx: Any,
    index: int,
    n_vocab: int,
    token: int,
    top_n: int,
    piece: Callable[[int], str],
) -> tuple[float, list[tuple[str, float]] | None]:
    """Log-probabilities from the model's raw logits at batch position `index` (before
    any sampler): the chosen token's, and the `top_n` best with their text."""
    import numpy as np  # loaded by the first request that asks for log-probabilities

    raw = llama_cpp.llama_get_logits_ith(ctx, index)
    logits = np.ctypeslib.as_array(raw, shape=(n_vocab,)).astype(np.float64)
    peak = float(logits.max())
    logprobs = logits - (peak + math.log(float(np.exp(logits - peak).sum())))
    top = None
    if top_n > 0:
        k = min(top_n, n_vocab)
        best = np.argpartition(-logprobs, k - 1)[:k]
        best = best[np.argsort(-logprobs[best])]
        top = [(piece(int(t)), float(logprobs[t])) for t in best]
    return float(logprobs[token]), top
