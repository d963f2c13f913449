"""Pure translators between wire shapes (OpenAI, LM Studio v0) and internal types.
No aiohttp here: every function is tested as a plain function."""
