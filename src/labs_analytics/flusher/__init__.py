"""The consumer loop that moves stream entries into PostgreSQL."""

from labs_analytics.flusher.batch import Batch
from labs_analytics.flusher.flusher import Flusher

__all__ = ["Batch", "Flusher"]
