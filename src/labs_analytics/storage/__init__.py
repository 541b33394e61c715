"""PostgreSQL: schema, connections, the bulk writer and partitions. All SQL lives here."""
