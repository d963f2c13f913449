"""Pure naming rules for models: keys from file names, quantization tokens, variant
preference, parameter strings. The rules are documented in docs/model-keys.md."""

from __future__ import annotations

import re

EMBEDDING_KEY_PREFIX = "text-embedding-"

# A quantization token as it appears at the end of a file or directory name.
QUANT_TOKEN = r"(?:ud[-_])?(?:i?q\d+(?:_[0-9a-z]+)*|tq\d_\d|bf16|fp?16|fp?32|mxfp4(?:_moe)?|nvfp4)"
_SUFFIX_RE = re.compile(
    rf"[._-](?:{QUANT_TOKEN}|gguf|mlx|\d+-?bits?|imat(?:rix)?|i1)$", re.IGNORECASE
)
_QUANT_SUFFIX_RE = re.compile(rf"[._-]({QUANT_TOKEN})$", re.IGNORECASE)
_SPLIT_RE = re.compile(r"^(.+)-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
_PARAMS_RE = re.compile(r"(?:^|[-_.])((?:\d+x)?\d+(?:\.\d+)?)([bm])(?=$|[-_.])", re.IGNORECASE)
_TOOLS_RE = re.compile(r"\btools\b")
_DIGITS_RE = re.compile(r"\d+")

# Approximate bits per weight, to rank variants by quality.
_BPW = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_1": 6.0,
    "Q5_K_M": 5.69, "Q5_K_S": 5.54, "Q5_0": 5.5, "Q4_1": 5.0, "Q4_K_M": 4.89,
    "Q4_K_S": 4.58, "Q4_0": 4.5, "IQ4_NL": 4.5, "IQ4_XS": 4.25, "MXFP4_MOE": 4.25,
    "Q3_K_L": 4.27, "Q3_K_M": 3.91, "IQ3_M": 3.66, "Q3_K_S": 3.5, "IQ3_S": 3.44,
    "IQ3_XS": 3.3, "IQ3_XXS": 3.06, "Q2_K": 2.96, "IQ2_M": 2.7, "Q2_K_S": 2.5,
    "IQ2_S": 2.5, "IQ2_XS": 2.31, "IQ2_XXS": 2.06, "TQ2_0": 2.06, "IQ1_M": 1.75,
    "TQ1_0": 1.69, "IQ1_S": 1.56, "BFLOAT16": 16.0, "FLOAT16": 16.0, "FLOAT32": 32.0,
}  # fmt: skip
DEFAULT_QUANT = "Q4_K_M"


def split_part(filename: str) -> tuple[str, int, int] | None:
    """`name-00002-of-00005.gguf` -> ("name", 2, 5); None for a file that is not a part."""
    m = _SPLIT_RE.match(filename)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


def strip_name(stem: str) -> str:
    """Drop quantization, format and `-4bit` style suffixes from a file stem or directory
    name, keeping the case: `Meta-Llama-3.1-8B-Instruct-Q4_K_M` -> `Meta-Llama-3.1-8B-Instruct`."""
    name = stem
    while True:
        m = _SUFFIX_RE.search(name)
        if m is None or m.start() == 0:
            return name
        name = name[: m.start()]


def model_key(stem: str) -> str:
    """The key for a GGUF file stem (split suffix already removed) or MLX directory name."""
    return strip_name(stem).lower()


def quant_from_name(stem: str) -> str | None:
    """The quantization token ending a name, uppercased (`...-q4_k_m` -> `Q4_K_M`)."""
    m = _QUANT_SUFFIX_RE.search(stem)
    return m.group(1).upper() if m else None


def display_name(base: str) -> str:
    """`Meta-Llama-3.1-8B-Instruct` -> `Meta Llama 3.1 8B Instruct`."""
    return re.sub(r"[-_ ]+", " ", base).strip() or base


def quant_bits(quant: str) -> int | None:
    """The bit width a quantization name states: Q4_K_M -> 4, IQ2_XXS -> 2, BF16 -> 16,
    4bit -> 4."""
    m = _DIGITS_RE.search(quant)
    return int(m.group()) if m else None


def bits_per_weight(quant: str) -> float | None:
    upper = quant.upper()
    if upper in _BPW:
        return _BPW[upper]
    bits = quant_bits(quant)
    return float(bits) if bits is not None else None


def variant_rank(quant: str | None, error: str | None = None) -> tuple[int, float]:
    """Sort key for variants of one key, best first: Q4_K_M; else the highest-quality
    quantization under 8 bits per weight; else the smallest (Q8_0 before F16 before F32);
    then unknown quantizations; broken files last."""
    if error is not None:
        return (9, 0.0)
    if quant is None:
        return (8, 0.0)
    if quant.upper() == DEFAULT_QUANT:
        return (0, 0.0)
    bpw = bits_per_weight(quant)
    if bpw is None:
        return (7, 0.0)
    return (1, -bpw) if bpw < 8 else (2, bpw)


def format_params(n: int) -> str | None:
    """134_515_008 -> `135M`, 8_030_261_248 -> `8B`, 1_543_714_304 -> `1.5B`."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            value = n / scale
            text = f"{value:.0f}" if value >= 10 else f"{value:.1f}".removesuffix(".0")
            return text + unit
    return str(n) if n > 0 else None


def params_from_name(name: str) -> str | None:
    """`Llama-3.2-1B-Instruct-4bit` -> `1B`; for models whose weights don't tell (MLX
    packs quantized weights, so tensor shapes undercount)."""
    m = _PARAMS_RE.search(name)
    return m.group(1).lower() + m.group(2).upper() if m else None


def mentions_tools(template: str) -> bool:
    return _TOOLS_RE.search(template) is not None


def mlx_quant_name(config: dict[str, object]) -> str | None:
    """An MLX model's quantization from its config.json: "4bit"/"8bit" from the
    quantization block, else the weights' dtype ("bfloat16")."""
    for key in ("quantization", "quantization_config"):
        block = config.get(key)
        if isinstance(block, dict) and isinstance(block.get("bits"), int):
            return f"{block['bits']}bit"
    dtype = config.get("torch_dtype", config.get("dtype"))
    return dtype if isinstance(dtype, str) else None
