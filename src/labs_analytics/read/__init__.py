"""The read side: exact answers out of the ``events`` table (query, and more to come)."""
