"""A request's sampling settings in mlx-lm's terms, for the MLX engine's text path
(mlx_impl.py) and its vision path (mlx_vision.py, mlx-vlm takes the same names)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
from mlx_lm.sample_utils import make_sampler

from daemon.engines.base import GenerationParams

PENALTY_WINDOW = 64  # repeat/frequency/presence penalties look this far back (as llama.cpp)


def sampler(params: GenerationParams) -> Callable[[mx.array], mx.array]:
    """Temperature (0: greedy), top-p, min-p and top-k, as mlx-lm chains them."""
    return make_sampler(
        temp=max(params.temperature, 0.0),
        top_p=params.top_p,
        min_p=params.min_p,
        top_k=max(params.top_k, 0),
    )


def penalties(params: GenerationParams) -> dict[str, Any]:
    """The penalty keywords of mlx-lm's make_logits_processors and mlx-vlm's
    generate_step (None: that penalty is off)."""
    return {
        "repetition_penalty": params.repeat_penalty if params.repeat_penalty != 1.0 else None,
        "repetition_context_size": PENALTY_WINDOW,
        "presence_penalty": params.presence_penalty or None,
        "presence_context_size": PENALTY_WINDOW,
        "frequency_penalty": params.frequency_penalty or None,
        "frequency_context_size": PENALTY_WINDOW,
    }
