"""The engine layer: each loaded model instance runs in its own worker process.

- base.py: the Engine interface (used inside a worker) and the plain data both sides share
- streaming.py: stop strings, limits and timing, shared by every engine
- runtime.py: engines by name, imported lazily
- fake_impl.py, llama_cpp_impl.py: the engines
- protocol.py: length-prefixed JSON frames on the worker's private socket
- worker.py: the worker process (`python -m daemon.engines.worker`)
- host.py: the daemon's side, WorkerHandle (asyncio)

Kept import-free so that starting a worker imports only what it needs.
"""
