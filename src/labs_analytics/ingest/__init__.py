"""Turning a request body into durable queue entries."""
