"""The Redis Stream between the API and the flushers: producer, consumer-group helpers."""
