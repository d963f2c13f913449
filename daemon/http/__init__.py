"""Everything aiohttp: the app factory, route modules, SSE helpers, the error middleware."""
