"""`lms ls` and `lms import`: the models on disk."""

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from lms.api.models import ImportMode, ListedModel
from lms.cli import output
from lms.cli.common import (
    EXIT_FAILURE,
    HostOption,
    JsonOption,
    PortOption,
    handle_errors,
    local_client,
    make_client,
)

ARCH_NAMES = {
    "llama": "Llama",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "qwen2_vl": "Qwen2-VL",
    "gemma": "Gemma",
    "gemma2": "Gemma2",
    "gemma3": "Gemma3",
    "mistral": "Mistral",
    "phi3": "Phi-3",
    "bert": "BERT",
    "nomic-bert": "Nomic BERT",
    "gpt-oss": "GPT-OSS",
}
COLUMN_GAP = "    "


def format_size(size: int) -> str:
    """Base-1000 sizes, as LM Studio prints them."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _table(title: str, rows: list[list[str]]) -> list[str]:
    header = [title, "PARAMS", "ARCH", "SIZE", "DEVICE", ""]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        COLUMN_GAP.join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def _loaded_marker(count: int) -> str:
    return "" if count == 0 else "✓ LOADED" if count == 1 else f"✓ LOADED ({count})"


def _device(model: ListedModel) -> str:
    remote = ", ".join(model.get("remote", []))
    if not remote:
        return "Local"
    if model.get("format") == "remote":
        return output.safe(f"Remote ({remote})")
    return output.safe(f"Local + remote ({remote})")


def _row(model: ListedModel) -> list[str]:
    arch = model.get("architecture") or ""
    loaded = _loaded_marker(model["loaded"])
    return [
        output.safe(model["modelKey"]),
        output.safe(model.get("paramsString") or ""),
        output.safe(ARCH_NAMES.get(arch, arch)),
        format_size(model["sizeBytes"]),
        _device(model),
        # LM Studio's app marks a model that takes images; lms ls --json has `vision`.
        "  ".join(m for m in ("vision" if model.get("vision") else "", loaded) if m),
    ]


def render_listing(models: list[ListedModel], *, llm: bool, embedding: bool) -> str:
    usable = [m for m in models if "error" not in m and m.get("format") != "remote"]
    remote = [m for m in models if m.get("format") == "remote"]
    broken = [m for m in models if "error" in m]
    if not models:
        return "You have not downloaded any models yet."
    total = sum(m["sizeBytes"] for m in usable)
    lines = [
        f"You have {len(usable)} model{'s' if len(usable) != 1 else ''}, "
        f"taking up {format_size(total)} of disk space."
        + (f" Upstreams serve {len(remote)} more." if remote else ""),
    ]
    show_all = not llm and not embedding
    llms = [_row(m) for m in usable + remote if m["type"] == "llm"]
    embeddings = [_row(m) for m in usable + remote if m["type"] == "embedding"]
    if (llm or show_all) and llms:
        lines += ["", *_table("LLM", llms)]
    if (embedding or show_all) and embeddings:
        lines += ["", *_table("EMBEDDING", embeddings)]
    if show_all and broken:
        lines += ["", "UNUSABLE"]
        lines += [f"{output.safe(m['path'])}{COLUMN_GAP}{output.safe(m['error'])}" for m in broken]
    return "\n".join(lines)


@handle_errors
def ls(
    llm: Annotated[bool, typer.Option("--llm", help="Only LLMs.")] = False,
    embedding: Annotated[bool, typer.Option("--embedding", help="Only embedding models.")] = False,
    json: JsonOption = False,
    host: HostOption = None,
    port: PortOption = None,
) -> None:
    """List the models on disk."""
    models = make_client(host, port).models()["models"]
    if json:
        wanted = (
            {"llm"}
            if llm and not embedding
            else {"embedding"}
            if embedding and not llm
            else {"llm", "embedding"}
        )
        output.json_out([m for m in models if m["type"] in wanted])
        return
    output.data(render_listing(models, llm=llm, embedding=embedding))


@handle_errors
def import_(
    file: Annotated[Path, typer.Argument(help="The GGUF file to import.")],
    copy: Annotated[bool, typer.Option("--copy", "-c", help="Copy instead of move.")] = False,
    hard_link: Annotated[
        bool, typer.Option("--hard-link", "-L", help="Hard-link instead of move.")
    ] = False,
    symbolic_link: Annotated[
        bool, typer.Option("--symbolic-link", "-l", help="Symlink instead of move.")
    ] = False,
    user_repo: Annotated[
        str | None,
        typer.Option("--user-repo", help="Where to file it: <publisher>/<repo>."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would happen; change nothing.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Bring a GGUF file into the models folder (moves it unless told otherwise)."""
    chosen = [
        name
        for name, on in (("copy", copy), ("hard-link", hard_link), ("symbolic-link", symbolic_link))
        if on
    ]
    if len(chosen) > 1:
        output.error("choose at most one of --copy, --hard-link and --symbolic-link")
        raise typer.Exit(EXIT_FAILURE)
    mode: ImportMode = chosen[0] if chosen else "move"  # type: ignore[assignment]
    client = local_client()
    path = os.path.abspath(file)
    plan = client.import_model(path, mode=mode, user_repo=user_repo, dry_run=True)
    verb = {"move": "move", "copy": "copy", "hard-link": "hard-link", "symbolic-link": "symlink"}[
        mode
    ]
    source, target = output.safe(plan["source"]), output.safe(plan["target"])
    if dry_run:
        output.data(f"Would {verb} {source} to {target}")
        return
    if (
        not yes
        and sys.stdin.isatty()
        and not typer.confirm(f"{verb.capitalize()} {source} to {target}?", default=True)
    ):
        raise typer.Exit(EXIT_FAILURE)
    done = client.import_model(path, mode=mode, user_repo=user_repo, dry_run=False)
    for warning in done["warnings"]:
        output.warn(output.safe(warning))
    past = {
        "move": "Moved",
        "copy": "Copied",
        "hard-link": "Hard-linked",
        "symbolic-link": "Symlinked",
    }[mode]
    output.info(f"{past} {output.safe(done['source'])} to {output.safe(done['target'])}")
