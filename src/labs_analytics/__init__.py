"""Labs Analytics: asynchronous analytics ingestion, HTTP → Redis Stream → PostgreSQL."""

__version__ = "0.1.0"
