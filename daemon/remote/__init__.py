"""Remote backends: OpenAI-compatible servers (another lmsd, llama-server, vLLM, SGLang)
behind the daemon's API, as one more engine behind the engine boundary.

    config    UpstreamConfig, validation, the upstreams file (keys kept like our own: 0600)
    breaker   a circuit breaker per upstream (pure, clock injected)
    policy    local vs remote routing per model (pure)
    translate engine requests <-> OpenAI bodies and chunks (pure)
    stream    bounded reading of an upstream's body and SSE stream (sizes and times)
    pool      the owner of upstream state: discovery, health, breakers, in-flight, metrics
    engine    RemoteHandle, the EngineHandle of a remote model (failover between upstreams)
    router    one lease for a model name: local (the manager's) or remote, per policy

See docs/scale-out.md.
"""
