"""One settings model and one loader.

Precedence, lowest first (docs/config.md):
    defaults < remembered HTTP port (state dir) < config file (YAML) < LMS_* env < flags

Each setting's environment variable is `LMS_` + its name in upper case; `LMS_SERVER_HOST`
(LM Studio's name) is accepted for `bind` too. Unknown keys and wrong types raise
ConfigError naming the key and where the value came from.
"""

import dataclasses
import json
import math
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from daemon.errors import ConfigError, StateNotSaved
from lms.api.load_settings import settings_problem

LOG_LEVELS = ("debug", "info", "warning", "error")
GUARDRAILS = ("off", "relaxed", "balanced", "strict")
ENGINE_CHOICES = ("auto", "fake")
ENV_ALIASES = {"LMS_SERVER_HOST": "bind"}


# The longest duration a setting may name (ten years): more is a typo or an overflow.
MAX_SECONDS = 10 * 365 * 24 * 3600.0
# A fetch holds a request (and a fetch slot) for its whole time limit: keep it short.
MAX_IMAGE_URL_SECONDS = 300.0


def _finite(value: Any) -> bool:
    """Whether a number is one a duration can be: not NaN, not infinite, fits a float."""
    try:
        return math.isfinite(value)
    except (OverflowError, TypeError):
        return False


@dataclass(frozen=True)
class Settings:
    port: int = field(default=1234, metadata={"help": "TCP port of the HTTP API"})
    bind: str = field(default="127.0.0.1", metadata={"help": "address the HTTP API binds to"})
    cors: list[str] = field(
        default_factory=list,
        metadata={
            "help": "origins allowed to call the API from a browser ('*': any); off when empty",
            "separator": ",",
        },
    )
    require_api_key: bool = field(
        default=False,
        metadata={"help": "require an API key on TCP even on loopback (always off the loopback)"},
    )
    insecure: bool = field(
        default=False,
        metadata={"help": "allow binding beyond loopback without any API key"},
    )
    metrics: bool = field(default=False, metadata={"help": "serve Prometheus metrics at /metrics"})
    http: bool = field(default=True, metadata={"help": "start the TCP listener with the daemon"})
    sdk_discovery: bool = field(
        default=True,
        metadata={
            "help": "also listen on 127.0.0.1:41343 so LM Studio's SDKs find us (docs/sdk.md)"
        },
    )
    log_level: str = field(default="info", metadata={"help": "one of " + ", ".join(LOG_LEVELS)})
    shutdown_timeout: float = field(
        default=10.0, metadata={"help": "seconds in-flight requests get to finish on shutdown"}
    )
    max_body_bytes: int = field(
        default=32 * 1024 * 1024, metadata={"help": "largest request body accepted (413 above)"}
    )
    max_image_bytes: int = field(
        default=16 * 1024 * 1024,
        metadata={"help": "largest image (file bytes) a request may send a model (413 above)"},
    )
    # Image URLs (docs/vision.md, "Image URLs"): off, the server never makes a request
    # on a client's behalf; on, only to public hosts unless the last one says otherwise.
    image_urls: bool = field(
        default=False,
        metadata={"help": "fetch http(s) image URLs sent in requests (off: a 400 says so)"},
    )
    image_urls_max_bytes: int = field(
        default=16 * 1024 * 1024,
        metadata={"help": "largest image fetched from a URL (413 above; max_image_bytes too)"},
    )
    image_urls_timeout: float = field(
        default=10.0,
        metadata={"help": "seconds fetching one image URL may take, redirects included"},
    )
    image_urls_allow_private: bool = field(
        default=False,
        metadata={
            "help": "let image URLs reach loopback, private and link-local addresses "
            "(off: public hosts only)"
        },
    )
    jit_loading: bool = field(
        default=True,
        metadata={"help": "load a model on the first request that names it"},
    )
    jit_ttl: float = field(
        default=3600.0, metadata={"help": "idle seconds before a JIT-loaded model unloads"}
    )
    auto_evict: bool = field(
        default=True,
        metadata={"help": "JIT-loading a model first unloads the previous JIT-loaded ones"},
    )
    guardrail: str = field(
        default="balanced",
        metadata={"help": "memory guardrail for loads: off, relaxed, balanced, strict"},
    )
    max_model_memory: int = field(
        default=0,
        metadata={
            "help": "bytes all loaded models may use together (0: no cap beyond the guardrail)"
        },
    )
    default_context_length: int = field(
        default=4096,
        metadata={"help": "context length of a load that names none (capped by the model's)"},
    )
    default_parallel: int = field(
        default=4, metadata={"help": "parallel request slots of a load that names none"}
    )
    # Engine settings of a load that names none (docs/engines.md, `lms load --help`).
    default_kv_pool: str = field(
        default="shared",
        metadata={
            "help": "KV cache of a load: shared (one pool of context_length cells for all "
            "its slots) or per_slot (each slot its own: parallel x the memory)"
        },
    )
    default_flash_attention: str = field(
        default="on", metadata={"help": "flash attention of a load: on, off or auto"}
    )
    default_kv_cache_type_k: str = field(
        default="f16", metadata={"help": "KV cache K type of a load: f16, q8_0 or q4_0"}
    )
    default_kv_cache_type_v: str = field(
        default="f16",
        metadata={"help": "KV cache V type of a load: f16, q8_0 or q4_0 (quantized: needs flash)"},
    )
    default_threads: int = field(
        default=0, metadata={"help": "CPU threads of a load (0: one per physical core)"}
    )
    default_use_mmap: bool = field(
        default=True, metadata={"help": "map model files into memory instead of reading them"}
    )
    default_keep_model_in_memory: bool = field(
        default=False, metadata={"help": "lock a loaded model's weights in RAM (mlock)"}
    )
    default_seed: int = field(
        default=-1,
        metadata={"help": "seed for requests that bring none, per load (-1: random)"},
    )
    default_offload_kv_cache_to_gpu: bool = field(
        default=True, metadata={"help": "put the KV cache on the GPU with the offloaded layers"}
    )
    max_queue: int = field(
        default=16,
        metadata={
            "help": "requests that may wait per instance beyond its parallel slots (503 above)"
        },
    )
    restore_on_restart: bool = field(
        default=True,
        metadata={"help": "load again at start-up what `lms load` had loaded before"},
    )
    preload: list[dict[str, Any]] = field(
        default_factory=list,
        metadata={
            "help": "models to load at start: [{model, identifier?, context_length?, "
            "ttl?, parallel?, gpu?}]"
        },
    )
    models_dirs: list[str] = field(
        default_factory=list,
        metadata={"help": "folders holding models (default: ~/.lmstudio/models or data dir)"},
    )
    engine: str = field(
        default="auto",
        metadata={
            "help": "engine for every load: auto (llama.cpp for GGUF, mlx-lm for MLX, each "
            "in a worker process) or fake (the test engine, in the daemon's process)"
        },
    )
    separate_reasoning: bool = field(
        default=True,
        metadata={
            "help": "send a thinking model's <think> reasoning apart from its answer "
            "(reasoning_content); false keeps it inline in the content"
        },
    )

    def __post_init__(self) -> None:
        for name in ("shutdown_timeout", "jit_ttl", "image_urls_timeout"):
            if not _finite(getattr(self, name)):
                raise InvalidSetting(name, "must be a finite number of seconds")
        if self.jit_ttl > MAX_SECONDS:
            raise InvalidSetting("jit_ttl", f"must be at most {MAX_SECONDS:.0f} (ten years)")
        if self.shutdown_timeout > MAX_SECONDS:
            raise InvalidSetting(
                "shutdown_timeout", f"must be at most {MAX_SECONDS:.0f} (ten years)"
            )
        if not 0 <= self.port <= 65535:
            raise InvalidSetting("port", f"must be between 0 and 65535, got {self.port}")
        if self.log_level not in LOG_LEVELS:
            choices = ", ".join(LOG_LEVELS)
            raise InvalidSetting("log_level", f"must be one of {choices}, got {self.log_level!r}")
        if self.shutdown_timeout < 0:
            raise InvalidSetting("shutdown_timeout", "must not be negative")
        if self.guardrail not in GUARDRAILS:
            choices = ", ".join(GUARDRAILS)
            raise InvalidSetting("guardrail", f"must be one of {choices}, got {self.guardrail!r}")
        if self.jit_ttl < 0:
            raise InvalidSetting("jit_ttl", "must not be negative")
        if self.max_model_memory < 0:
            raise InvalidSetting("max_model_memory", "must not be negative")
        if self.default_context_length < 16:
            raise InvalidSetting("default_context_length", "must be at least 16")
        if self.max_queue < 0:
            raise InvalidSetting("max_queue", "must not be negative")
        if self.default_parallel < 1:
            raise InvalidSetting("default_parallel", "must be at least 1")
        problem = settings_problem(
            kv_pool=self.default_kv_pool,
            flash_attention=self.default_flash_attention,
            kv_cache_type_k=self.default_kv_cache_type_k,
            kv_cache_type_v=self.default_kv_cache_type_v,
            threads=self.default_threads or None,
            seed=None if self.default_seed == -1 else self.default_seed,
        )
        if problem is not None:
            raise InvalidSetting(f"default_{problem[0]}", problem[1])
        if self.engine not in ENGINE_CHOICES:
            choices = ", ".join(ENGINE_CHOICES)
            raise InvalidSetting("engine", f"must be one of {choices}, got {self.engine!r}")
        if self.max_body_bytes < 1024:
            raise InvalidSetting("max_body_bytes", "must be at least 1024")
        if self.image_urls_max_bytes < 1:
            raise InvalidSetting("image_urls_max_bytes", "must be at least 1")
        if not 0 < self.image_urls_timeout <= MAX_IMAGE_URL_SECONDS:
            raise InvalidSetting(
                "image_urls_timeout",
                f"must be more than 0 and at most {MAX_IMAGE_URL_SECONDS:.0f} seconds",
            )


class InvalidSetting(ConfigError):
    """A value of the right type that is out of range; `load_settings` adds its source."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key!r} {problem}")
        self.key = key


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(Settings))
SEPARATORS = {
    f.name: f.metadata["separator"]
    for f in dataclasses.fields(Settings)
    if "separator" in f.metadata
}
_TYPES: dict[str, Any] = get_type_hints(Settings)


def env_var(name: str) -> str:
    return "LMS_" + name.upper()


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, "a list of strings"
    )


def coerce(name: str, value: Any, source: str, *, from_text: bool = False) -> Any:
    """`value` checked against the type of setting `name`; with `from_text` (environment
    variables, flags), a string is parsed into that type first."""
    if name not in _TYPES:
        known = ", ".join(SETTING_NAMES)
        raise ConfigError(f"{source}: unknown setting {name!r} (known settings: {known})")
    tp = _TYPES[name]
    if get_origin(tp) in (Union, types.UnionType):
        tp = next(a for a in get_args(tp) if a is not type(None))
    bad = ConfigError(f"{source}: {name!r} must be {_type_name(tp)}, got {value!r}")
    if from_text and isinstance(value, str) and tp is not str:
        value = _parse_string(tp, value, bad, SEPARATORS.get(name, os.pathsep))
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        if not _finite(value):
            raise ConfigError(f"{source}: {name!r} must be a finite number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise bad
    elif get_args(tp) and get_args(tp)[0] is str:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad
    else:  # a list of load specifications: `preload`
        value = _check_preload(value, source)
    return value


PRELOAD_FIELDS = {
    "model": str,
    "identifier": str,
    "context_length": int,
    "ttl": float,
    "parallel": int,
    "gpu": (str, float),
}


def _check_preload(value: Any, source: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise ConfigError(f"{source}: 'preload' must be a list of {{model: ..., ...}} entries")
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise ConfigError(f"{source}: 'preload[{i}]' must be a mapping with a 'model' key")
        for key, item in entry.items():
            kind = PRELOAD_FIELDS.get(key)
            if kind is None:
                known = ", ".join(PRELOAD_FIELDS)
                raise ConfigError(f"{source}: unknown key 'preload[{i}].{key}' (known: {known})")
            kinds = kind if isinstance(kind, tuple) else (kind,)
            numeric = isinstance(item, int | float) and not isinstance(item, bool)
            if not (isinstance(item, kinds) and not isinstance(item, bool)) and not (
                float in kinds and numeric
            ):
                raise ConfigError(f"{source}: 'preload[{i}].{key}' has the wrong type")
            if numeric and float in kinds and not _finite(item):
                raise ConfigError(f"{source}: 'preload[{i}].{key}' must be a finite number")
    return value


def yaml_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _parse_string(tp: Any, text: str, bad: ConfigError, separator: str) -> Any:
    try:
        if tp is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise bad
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if get_origin(tp) is list:
            if get_args(tp)[0] is not str:
                return yaml_value(text)
            return [part.strip() for part in text.split(separator) if part.strip()]
    except ValueError:
        raise bad from None
    raise bad


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a YAML config file; {} when it does not exist."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config file must be a mapping of setting: value")
    return {str(k): coerce(str(k), v, str(path)) for k, v in data.items()}


def read_remembered_port(path: Path) -> dict[str, Any]:
    """The last port the HTTP listener ran on (ignored when the file is unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        port = data.get("port")
    except (OSError, ValueError, AttributeError):
        return {}
    return {"port": port} if isinstance(port, int) and 0 < port <= 65535 else {}


def read_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for alias, name in ENV_ALIASES.items():
        if env.get(alias):
            values[name] = coerce(name, env[alias], f"environment variable {alias}", from_text=True)
    for name in SETTING_NAMES:
        var = env_var(name)
        if var in env and env[var] != "":
            values[name] = coerce(name, env[var], f"environment variable {var}", from_text=True)
    return values


def load_settings(
    *,
    config_file: Path,
    server_state_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def layer(values: Mapping[str, Any], source: str) -> None:
        merged.update(values)
        sources.update(dict.fromkeys(values, source))

    if server_state_file is not None:
        layer(read_remembered_port(server_state_file), str(server_state_file))
    layer(read_config_file(config_file), str(config_file))
    environment = os.environ if env is None else env
    for name, value in read_env(environment).items():
        layer({name: value}, f"environment variable {env_var(name)}")
    for name, value in (flags or {}).items():
        if value is not None:
            source = f"command-line flag --{name.replace('_', '-')}"
            layer({name: coerce(name, value, source, from_text=True)}, source)
    try:
        return Settings(**merged)
    except InvalidSetting as exc:
        raise ConfigError(f"{sources.get(exc.key, 'default')}: {exc}") from None


def save_setting(config_file: Path, key: str, value: Any) -> None:
    """Write one setting into the YAML config file, keeping the others (comments are not
    kept). Atomic: the file is replaced, never half-written; StateNotSaved when it cannot
    be written (the file is then as it was)."""
    import yaml

    from daemon.fsutil import atomic_write_text, os_reason

    current: dict[str, Any] = {}
    try:
        loaded = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        if isinstance(loaded, dict):
            current = loaded
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StateNotSaved(
            f"cannot save {key!r} in the config file {config_file}: {os_reason(exc)}"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config_file}: cannot update the config file: {exc}") from exc
    current[key] = value
    try:
        atomic_write_text(config_file, yaml.safe_dump(current, sort_keys=False), mode=0o644)
    except OSError as exc:
        raise StateNotSaved(
            f"cannot save {key!r} in the config file {config_file}: {os_reason(exc)}"
        ) from exc
