"""The OpenAI-compatible gateway: a pure ASGI app and its request pipeline."""
