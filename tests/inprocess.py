"""The whole daemon in the test's own process: the real `Daemon` (its core, its app, every
route and middleware) with `engine: fake`, driven through aiohttp's test client. No
listener is opened and no worker process is started: the fake engine runs on a thread
of the test process, behind the same engine boundary as llama.cpp's workers.

The models are small GGUF files written by tests/fixtures/gguf_factory.py, so the real
catalog lists them; each carries the fake engine's options in its `fake.options` key.
Their weights are meaningless on purpose: these tests check the plumbing, not wording.
"""

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from daemon.config import Settings
from daemon.engines.fake_impl import GGUF_OPTIONS_KEY
from daemon.server import Daemon
from lms.paths import Paths
from tests.fixtures.gguf_factory import PLAIN_TEMPLATE, TOOL_TEMPLATE, write_gguf

PARIS_CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
THINKING_TEMPLATE = PLAIN_TEMPLATE + "{% if add_generation_prompt %}<think>\n{% endif %}</think>"

# key -> (type of model, chat template, fake engine options)
MODELS: Mapping[str, tuple[str, str | None, dict[str, Any]]] = {
    "echo": ("llm", PLAIN_TEMPLATE, {}),
    "toolsmith": (  # a native tool call (the template handles tools)
        "llm",
        TOOL_TEMPLATE,
        {"reply": f"<tool_call>\n{PARIS_CALL}\n</tool_call>"},
    ),
    "fallback-tools": (
        "llm",
        PLAIN_TEMPLATE,
        {
            "reply": 'Checking. [TOOL_REQUEST]{"name": "get_weather", '
            '"arguments": {"city": "Oslo"}}[END_TOOL_REQUEST]'
        },
    ),
    "thinker": ("llm", THINKING_TEMPLATE, {"reply": "<think>Two and two.</think>\n\nFour."}),
    "endless": ("llm", PLAIN_TEMPLATE, {"reply": "on and", "endless": True, "token_delay": 0.01}),
    "crashy": ("llm", PLAIN_TEMPLATE, {"reply": "one two three four", "crash_after_tokens": 2}),
    "tiny": ("llm", PLAIN_TEMPLATE, {"context_length": 16}),
    "embedder": ("embedding", None, {"embedding_dim": 8}),
}


def write_models(models_dir: Path) -> None:
    for key, (kind, template, options) in MODELS.items():
        write_gguf(
            models_dir / "test" / key / f"{key}-Q4_K_M.gguf",
            arch="bert" if kind == "embedding" else "llama",
            name=key,
            chat_template=template,
            context_length=options.get("context_length", 4096),
            extra={GGUF_OPTIONS_KEY: json.dumps(options)},
        )


def isolated_paths(root: Path) -> Paths:
    paths = Paths(
        config_dir=root / "config",
        state_dir=root / "state",
        log_dir=root / "log",
        runtime_dir=root / "run",
        data_dir=root / "data",
    )
    for folder in (paths.config_dir, paths.state_dir, paths.data_dir):
        folder.mkdir(parents=True, exist_ok=True)
    return paths


def in_process_daemon(root: Path, **settings: Any) -> Daemon:
    models = root / "models"
    write_models(models)
    values: dict[str, Any] = {
        "engine": "fake",
        "models_dirs": [str(models)],
        "default_context_length": 1024,
        "default_parallel": 2,
        **settings,
    }
    paths = isolated_paths(root)
    return Daemon(Settings(**values), paths, paths.config_file)


@contextlib.asynccontextmanager
async def running_daemon(root: Path, **settings: Any) -> AsyncIterator[Daemon]:
    """An in-process daemon, started (TTL reaper) and always closed (engines stopped)."""
    daemon = in_process_daemon(root, **settings)
    daemon.core.start()
    try:
        yield daemon
    finally:
        await daemon.core.close()


async def sse_events(response: Any) -> list[Any]:
    """Every `data:` payload of an SSE response, parsed; "[DONE]" for the end marker."""
    events: list[Any] = []
    async for raw in response.content:
        line = raw.decode().strip()
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append("[DONE]" if data == "[DONE]" else json.loads(data))
    return events


def admin_headers(daemon: Daemon) -> dict[str, str]:
    """A new admin key's header: over TCP the admin routes (load/unload, instances, the
    log stream, the admin model listing) need one (docs/security.md, "Threat model")."""
    _, secret = daemon.keys.create(None, "admin")
    return {"Authorization": f"Bearer {secret}"}


Client = TestClient[Any, Any]
