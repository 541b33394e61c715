"""API keys: generation, hashing, storage and the in-process cache ingest reads."""
