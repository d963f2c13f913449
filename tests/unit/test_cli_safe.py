"""Names shown by the CLI (lms/cli/output.safe): control characters escaped, everything
else unchanged; `lms ps`'s table keeps one line per instance whatever the names."""

from typing import Any

from lms.cli.lifecycle import ps_table
from lms.cli.models import render_listing
from lms.cli.output import safe

EVIL = "evil\x1b[31m\nforged\trow\r\x07\x7f\x9b\u202etxt"


def test_safe_escapes_control_characters_only() -> None:
    assert safe(EVIL) == "evil\\x1b[31m\\nforged\\trow\\r\\x07\\x7f\\x9b\\u202etxt"
    for good in ("smollm2-135m-instruct", "pub/repo/é 日本-Q4_K_M.gguf", "a\\x1b", ""):
        assert safe(good) == good


def instance(identifier: str, key: str) -> dict[str, Any]:
    return {
        "identifier": identifier,
        "modelKey": key,
        "status": "idle",
        "sizeBytes": 1000,
        "contextLength": 1024,
        "type": "llm",
        "parallel": 2,
        "device": "CPU",
        "ttlMs": None,
        "ttlRemainingMs": None,
    }


def test_ps_table_cannot_be_forged() -> None:
    table = ps_table([instance(EVIL, EVIL), instance("plain", "plain")])  # type: ignore[list-item]
    lines = table.splitlines()
    assert len(lines) == 3 and "\x1b" not in table
    assert lines[1].startswith("evil\\x1b[31m\\nforged")


def test_ls_listing_cannot_be_forged() -> None:
    model: dict[str, Any] = {
        "modelKey": EVIL,
        "type": "llm",
        "sizeBytes": 1000,
        "architecture": "llama",
        "paramsString": "1B\n",
        "loaded": 0,
    }
    broken: dict[str, Any] = {"path": EVIL, "error": "bad\x1b[2J", "type": "llm", "sizeBytes": 0}
    text = render_listing([model, broken], llm=False, embedding=False)  # type: ignore[list-item]
    assert "\x1b" not in text and "\x07" not in text
    assert not any(line.startswith("forged") for line in text.splitlines())
