"""LM Studio's SDK protocol (`lmstudio` on PyPI, `@lmstudio/sdk` on npm): JSON frames over
one WebSocket per namespace. protocol.py frames and validates, translate.py turns SDK
shapes into our internal ones and back, endpoints.py (with loads.py and predict.py, on
context.py) answers each endpoint through the manager and the prediction service,
remote.py shows the upstreams' models (docs/scale-out.md) as served models, session.py
runs one connection's calls and channels. No aiohttp here: daemon/http/sdk_routes.py
carries the frames (docs/sdk.md)."""
