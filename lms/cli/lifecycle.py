"""`lms load`, `lms unload` and `lms ps`: models in memory."""

import sys
import time
from typing import Annotated

import typer

from lms.api.lifecycle import EstimateReply, GpuSetting, InstanceInfo, LoadRequest
from lms.cli import load_flags, output
from lms.cli.common import (
    EXIT_FAILURE,
    HostOption,
    JsonOption,
    PortOption,
    handle_errors,
    make_client,
)
from lms.cli.load_progress import load_with_progress
from lms.cli.models import COLUMN_GAP, format_size
from lms.client import Client
from lms.units import format_bytes


def format_duration(value: float) -> str:
    seconds = round(value)
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    if seconds >= 60:
        return f"{seconds // 60}m" + (f" {seconds % 60}s" if seconds % 60 else "")
    return f"{seconds}s"


def _parse_gpu(value: str | None) -> GpuSetting | None:
    if value is None:
        return None
    if value == "off":
        return "off"
    if value == "max":
        return "max"
    try:
        ratio = float(value)
    except ValueError:
        raise typer.BadParameter("use off, max or a number between 0 and 1") from None
    if not 0 <= ratio <= 1:
        raise typer.BadParameter("use off, max or a number between 0 and 1")
    return ratio


def _pick(client: Client, key: str | None, *, exact: bool, yes: bool) -> str:
    """The model key to load: an exact match, the only fuzzy match, or the user's pick."""
    if key is None and (yes or not sys.stdin.isatty()):
        output.error("name a model to load (see `lms ls`)")
        raise typer.Exit(EXIT_FAILURE)
    found = client.match(key or "", exact=exact)
    if found["exact"] is not None:
        return found["exact"]["modelKey"] if not exact else found["exact"]["path"]
    candidates = found["candidates"]
    if not candidates:
        output.error(f"no model matches {output.safe(repr(key))}; see `lms ls` for what is on disk")
        raise typer.Exit(EXIT_FAILURE)
    if len(candidates) == 1:
        return candidates[0]["modelKey"]
    names = [c["modelKey"] for c in candidates]
    shown = [output.safe(name) for name in names]
    if yes or not sys.stdin.isatty():
        output.error(
            f"{len(names)} models match {output.safe(repr(key))}: {', '.join(shown)}; "
            "name one exactly"
        )
        raise typer.Exit(EXIT_FAILURE)
    for number, name in enumerate(shown, 1):
        output.info(f"  {number}. {name}")
    choice = typer.prompt("Load which model", type=int, default=1)
    if not 1 <= choice <= len(names):
        output.error("no such choice")
        raise typer.Exit(EXIT_FAILURE)
    return str(names[choice - 1])


@handle_errors
def load(
    key: Annotated[str | None, typer.Argument(help="Model key, alias or key@quant.")] = None,
    ttl: Annotated[
        int | None, typer.Option("--ttl", min=1, help="Unload after this many idle seconds.")
    ] = None,
    context_length: Annotated[
        int | None, typer.Option("--context-length", "-c", min=1, help="Context length.")
    ] = None,
    gpu: Annotated[str | None, typer.Option("--gpu", help="GPU offload: off, max or 0..1.")] = None,
    parallel: Annotated[
        int | None, typer.Option("--parallel", min=1, help="Parallel request slots.")
    ] = None,
    identifier: Annotated[
        str | None, typer.Option("--identifier", help="Name of the instance in the API.")
    ] = None,
    estimate_only: Annotated[
        bool, typer.Option("--estimate-only", help="Print the memory estimate; do not load.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Load even if the memory guardrail says no.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Never ask.")] = False,
    exact: Annotated[
        bool, typer.Option("--exact", help="KEY must be a model's path exactly.")
    ] = False,
    kv_pool: load_flags.KvPoolOption = None,
    flash_attention: load_flags.FlashAttentionOption = None,
    kv_cache_type_k: load_flags.KvTypeKOption = None,
    kv_cache_type_v: load_flags.KvTypeVOption = None,
    threads: load_flags.ThreadsOption = None,
    mmap: load_flags.MmapOption = None,
    keep_in_memory: load_flags.MlockOption = None,
    seed: load_flags.SeedOption = None,
    offload_kv_cache: load_flags.OffloadKvOption = None,
    json: JsonOption = False,
    host: HostOption = None,
    port: PortOption = None,
) -> None:
    """Load a model into memory."""
    gpu_setting = _parse_gpu(gpu)  # a bad value is a usage error (exit 2), daemon or not
    settings: LoadRequest = {"model": ""}
    load_flags.add_engine_settings(
        settings,
        kv_pool=kv_pool,
        flash_attention=flash_attention,
        kv_cache_type_k=kv_cache_type_k,
        kv_cache_type_v=kv_cache_type_v,
        threads=threads,
        use_mmap=mmap,
        keep_model_in_memory=keep_in_memory,
        seed=seed,
        offload_kv_cache_to_gpu=offload_kv_cache,
    )
    client = make_client(host, port, timeout=600)
    model = _pick(client, key, exact=exact, yes=yes)
    body: LoadRequest = {**settings, "model": model}
    if ttl is not None:
        body["ttl"] = ttl
    if context_length is not None:
        body["context_length"] = context_length
    if gpu_setting is not None:
        body["gpu"] = gpu_setting
    if parallel is not None:
        body["parallel"] = parallel
    if identifier is not None:
        body["identifier"] = identifier
    if estimate_only:
        _print_estimate(
            client.estimate(body),
            json=json,
            context_given=context_length is not None,
            gpu=gpu,
        )
        return
    if force:
        body["force"] = True
    started = time.monotonic()
    reply = load_with_progress(client, body, model, json=json)
    if json:
        output.json_out(reply)
        return
    instance = reply["instance"]
    if reply["already_loaded"]:
        output.info(
            f'{output.safe(model)} is already loaded as "{output.safe(reply["instance_id"])}".'
        )
    else:
        seconds = reply["load_time_seconds"] or time.monotonic() - started
        output.info(
            f"Model loaded successfully in {seconds:.2f}s. ({format_size(instance['sizeBytes'])})"
        )
    output.info(
        "To use the model in the API/SDK, use the identifier "
        f'"{output.safe(reply["instance_id"])}".'
    )


def _print_estimate(
    reply: EstimateReply, *, json: bool, context_given: bool, gpu: str | None
) -> None:
    if json:
        output.json_out(reply)
        return
    lines = [f"Model: {output.safe(reply['model'])}"]
    if context_given:
        lines.append(f"Context Length: {reply['context_length']:,}")
    if gpu is not None:
        lines.append(f"GPU Offload: {reply['gpu_ratio']:.0%}")
    estimate = reply["estimate"]
    cells = f"{reply['kv_cells']:,} cells, {reply['kv_pool'].replace('_', '-')}"
    types = f"K {reply['kv_cache_type_k']}, V {reply['kv_cache_type_v']}"
    lines += [
        f"Parallel: {reply['parallel']}",
        f"Estimated Weights:      {format_bytes(estimate['weights_bytes'])}",
        f"Estimated KV Cache:     {format_bytes(estimate['kv_cache_bytes'])} ({cells}; {types})",
        f"Estimated Compute:      {format_bytes(estimate['compute_bytes'])}",
        f"Estimated Runtime:      {format_bytes(estimate['runtime_bytes'])}",
        f"Estimated Total Memory: {format_bytes(estimate['total_bytes'])}",
        f"Available Memory:       {format_bytes(reply['available_bytes'])}"
        f" ({reply['guardrail']} guardrail)",
        "",
    ]
    if reply["passes_guardrails"]:
        lines.append(
            "Estimate: This model may be loaded based on your resource guardrails settings."
        )
    else:
        lines.append(
            "Estimate: This model will fail to load based on your resource guardrails settings."
        )
    output.data("\n".join(lines))


@handle_errors
def unload(
    identifier: Annotated[str | None, typer.Argument(help="Identifier of the instance.")] = None,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Unload every model.")] = False,
    host: HostOption = None,
    port: PortOption = None,
) -> None:
    """Unload a model from memory (requests in flight finish first)."""
    client = make_client(host, port, timeout=600)
    if all_ and identifier:
        output.error("give an identifier or --all, not both")
        raise typer.Exit(EXIT_FAILURE)
    if all_:
        unloaded = client.unload_all()["unloaded"]
        output.info(f"Unloaded {len(unloaded)} model{'s' if len(unloaded) != 1 else ''}.")
        return
    if identifier is None:
        loaded = [i["identifier"] for i in client.instances()]
        if not loaded:
            output.error('You don\'t have any models loaded. Use "lms load" to load a model.')
            raise typer.Exit(EXIT_FAILURE)
        if len(loaded) > 1:
            names = ", ".join(output.safe(i) for i in loaded)
            output.error(f"several models are loaded ({names}); name one, or use --all")
            raise typer.Exit(EXIT_FAILURE)
        identifier = loaded[0]
    client.unload(identifier)
    output.info(f'Model "{output.safe(identifier)}" unloaded.')


def ps_table(instances: list[InstanceInfo]) -> str:
    header = ["IDENTIFIER", "MODEL", "STATUS", "SIZE", "CONTEXT", "PARALLEL", "DEVICE", "TTL"]
    rows = [header]
    for inst in instances:
        ttl = ""
        ttl_ms, remaining_ms = inst["ttlMs"], inst["ttlRemainingMs"]
        if ttl_ms is not None and remaining_ms is not None:  # both or neither
            ttl = f"{format_duration(remaining_ms / 1000)} / {format_duration(ttl_ms / 1000)}"
        rows.append(
            [
                output.safe(inst["identifier"]),
                output.safe(inst["modelKey"]),
                inst["status"].upper(),
                format_size(inst["sizeBytes"]),
                str(inst["contextLength"]),
                "-" if inst["type"] == "embedding" else str(inst["parallel"]),
                output.safe(inst["device"]),
                ttl,
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        COLUMN_GAP.join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


@handle_errors
def ps(json: JsonOption = False, host: HostOption = None, port: PortOption = None) -> None:
    """List the models loaded in memory."""
    instances = make_client(host, port).instances()
    if json:
        output.json_out(instances)
    elif not instances:
        output.data("No models are currently loaded. To load a model, run: lms load <model>")
    else:
        output.data(ps_table(instances))
