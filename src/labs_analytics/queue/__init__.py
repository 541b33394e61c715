"""The Redis Stream between the API and the flushers.

- ``producer``: appending accepted events (rate limit, backlog bound), batched.
- ``wire``: the producer's one-write exchanges on redis-py's connection objects
  (the only code that relies on redis-py internals).
- ``lua``: every Lua script, with its KEYS and ARGV named.
- ``consumer``: the consumer-group operations the flusher needs.
- ``backlog``: the backlog counter, never negative, recounted from the stream.
- ``service``: Redis first, the spool while it is away; maintenance.
- ``spool``, ``buckets``: the local spool and its per-key rate limits.
- ``entries``: how events are laid out in a stream entry (one request's, or several
  requests' that shared an append call).
- ``connection``: building Redis clients.
"""
