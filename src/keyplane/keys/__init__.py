"""API keys: the secret format, the key record, and authentication with a cache."""
