"""The consumer loop that moves stream entries into PostgreSQL."""

from labs_analytics.flusher.flusher import Batch, Flusher

__all__ = ["Batch", "Flusher"]
