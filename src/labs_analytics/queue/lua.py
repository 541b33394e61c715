"""The Lua scripts that change the stream, the backlog counter and the rate buckets.

Each runs atomically in Redis. Every script names its KEYS and ARGV as locals
first, so what it touches is read off its top lines.

**The backlog counter** (``<prefix>backlog``) holds the events in the stream:
the append script counts an entry's events in, the ack and dead-letter
scripts count out those of the entries they really deleted. It never goes
below zero (an entry that reached the stream uncounted, written by something
other than this service, would otherwise take it there) and is zero whenever
the stream is empty. ``RECOUNT_SCRIPT`` repairs whatever drift is left, in
bounded steps: it counts the entries that were in the stream when it began,
and compares that with the counter as it was then; appends and acks since
moved the counter and the stream alike, so the difference is the counter's
error still, and is taken off at the last step. For the entries deleted
before it reached them, the ack and dead-letter scripts add their events to
its total, so it ends however long it took and however busy the stream.

An entry's events are its ``n`` field, read by the same rule here
(``entry_events``) and in Python (``labs_analytics.queue.entries.entry_events``):
one to nine ASCII digits, else 1.
"""

from __future__ import annotations

from labs_analytics.queue.entries import ENTRY_FORMAT_VERSION

# Helpers shared by the scripts below (Lua scripts cannot import each other).
_HELPERS = """
-- The events an entry holds, from its `n` field: the rule of
-- labs_analytics.queue.entries.entry_events.
local function entry_events(n)
  if n ~= nil and #n <= 9 and string.match(n, '^%d+$') then
    return tonumber(n)
  end
  return 1
end

-- A stream id ("<ms>-<seq>", or "<ms>" for "<ms>-0") as two numbers.
local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)%-?(%d*)$')
  return tonumber(ms) or 0, tonumber(seq) or 0
end

-- Whether stream id `id` is at or before stream id `other`.
local function at_or_before(id, other)
  local id_ms, id_seq = id_parts(id)
  local other_ms, other_seq = id_parts(other)
  return id_ms < other_ms or (id_ms == other_ms and id_seq <= other_seq)
end

-- A recount under way: the last entry it counted, and the last it will count.
local function recount_progress(recount_key)
  local progress = redis.call('HMGET', recount_key, 'cursor', 'last')
  return progress[1], progress[2]
end

-- An entry deleted that a recount under way has yet to reach: it was in the
-- stream when the recount began, so its events go into the recount's total.
local function deleted_ahead_of_recount(recount_key, cursor, last, entry_id, events)
  if cursor and at_or_before(entry_id, last) and not at_or_before(entry_id, cursor) then
    redis.call('HINCRBY', recount_key, 'events', events)
  end
end

-- Take `events` off the backlog counter, never below zero; true if it stopped
-- at zero. Under pcall: a counter someone overwrote with a non-number must
-- not fail an ack (the append script refuses requests over it, loudly).
local function take_off_backlog(backlog_key, events)
  local left = redis.pcall('DECRBY', backlog_key, events)
  if type(left) == 'number' and left < 0 then
    redis.call('SET', backlog_key, 0)
    return true
  end
  return false
end

-- An empty stream holds no events: the counter is zero (or missing, as good).
-- True if it was not.
local function zero_if_empty(stream_key, backlog_key)
  if redis.call('XLEN', stream_key) == 0 then
    local counter = redis.call('GET', backlog_key)
    if counter and counter ~= '0' then
      redis.call('SET', backlog_key, 0)
      return true
    end
  end
  return false
end

-- The counter moved otherwise than by the events deleted: a recount under way
-- measured its error against what it was, so it starts over at its next step.
local function restart_recount(recount_key, cursor)
  if cursor then
    redis.call('DEL', recount_key)
  end
end
"""

# Appends one script call's appends to the stream: for each, check the
# backlog bound and the API key's token bucket, then add its events.
# KEYS: the stream, the backlog counter.
# ARGV: the number of appends, then for each a header
#   "kind events rate burst backlog_limit fields bucket_key" (rate 0 = unlimited,
#   backlog_limit 0 = none; one argument rather than seven, as packing arguments
#   is a measurable share of the hot path), then
#   - kind 'e' (an entry of its own: replays, dead-letter replays): its fields
#     as name, value pairs;
#   - kind 's' (shared: ingest requests): one argument, its events as the items
#     of a JSON array without the brackets. Every 's' append that passes its
#     checks goes into one entry for the whole call, written after the loop in
#     the format of ``labs_analytics.queue.entries``: one XADD, and one entry
#     for the flushers to read, ack and delete, instead of one per request
#     (those per-entry steps were most of what Redis and the flushers spent
#     on a single-event request: BENCHMARKS.md).
# Returns three values per append: 'ok', entry id, backlog | 'rate', seconds to
#   wait, '' | 'backlog', backlog, '' | 'error', the error reply, ''.
# The bucket keys are passed as arguments, not KEYS, because one call serves
# many API keys; that is fine on a single Redis (not on Redis Cluster). Within
# a call a bucket is read once and its state carried from append to append.
# A bucket is written only once the XADD holding the append succeeded: a
# failed append costs no tokens. Each command runs under pcall: one append's
# error is its own verdict (or, for the shared entry's XADD, the verdict of
# the appends in it) and never aborts the call.
_APPEND_SCRIPT_TEMPLATE = """
local stream_key = KEYS[1]
local backlog_key = KEYS[2]
local append_count = tonumber(ARGV[1])

local results = {}
local backlog = tonumber(redis.call('GET', backlog_key) or '0')
if backlog == nil or backlog ~= math.floor(backlog) then
  -- Checked before any XADD: a failing INCRBY at the end would fail the
  -- whole call after its entries were added.
  return redis.error_reply('ERR the backlog counter is not an integer')
end
local added = 0
local now = nil
-- Token buckets as this call left them: bucket_key -> {tokens, rate, burst, dirty}.
local buckets = {}
-- The shared entry: its events' JSON items, their count, and the result slots
-- of the appends in it.
local shared_items = {}
local shared_events = 0
local shared_slots = {}

local function write_bucket(bucket_key, bucket)
  redis.pcall('HSET', bucket_key, 'tokens', tostring(bucket.tokens), 'ts', tostring(now))
  redis.pcall('PEXPIRE', bucket_key, math.ceil(bucket.burst / bucket.rate * 1000) + 1000)
end

local i = 2
for _ = 1, append_count do
  local kind, n, rate, burst, max_backlog, fields, bucket_key =
    string.match(ARGV[i], '^(%S) (%S+) (%S+) (%S+) (%S+) (%S+) (.*)$')
  n, rate, burst, max_backlog = tonumber(n), tonumber(rate), tonumber(burst), tonumber(max_backlog)
  local first = i + 1
  local last = first
  if kind == 'e' then
    last = first + 2 * tonumber(fields) - 1
  end
  i = last + 1
  local verdict = 'ok'
  local detail = ''
  local bucket = nil
  if max_backlog > 0 and backlog + added + shared_events + n > max_backlog then
    verdict, detail = 'backlog', tostring(backlog + added + shared_events)
  elseif rate > 0 then
    if now == nil then
      local t = redis.call('TIME')
      now = tonumber(t[1]) + tonumber(t[2]) / 1000000
    end
    bucket = buckets[bucket_key]
    if bucket == nil then
      local stored = redis.pcall('HMGET', bucket_key, 'tokens', 'ts')
      if stored.err then
        verdict, detail = 'error', stored.err
      else
        local tokens = tonumber(stored[1]) or burst
        local ts = tonumber(stored[2]) or now
        tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
        bucket = {tokens = tokens, rate = rate, burst = burst, dirty = false}
        buckets[bucket_key] = bucket
      end
    end
    if bucket ~= nil and bucket.tokens < n then
      verdict, detail = 'rate', tostring((n - bucket.tokens) / rate)
    end
  end
  if verdict == 'ok' and kind == 's' then
    if ARGV[first] ~= '' then  -- no events: nothing to join
      shared_items[#shared_items + 1] = ARGV[first]
    end
    shared_events = shared_events + n
    shared_slots[#shared_slots + 1] = #results + 1
    if bucket ~= nil then
      bucket.tokens = bucket.tokens - n
      bucket.dirty = true
    end
    -- Its id and backlog once the entry is in (or, if no append of the call
    -- had events, the backlog as it stands).
    results[#results + 1] = 'ok'
    results[#results + 1] = ''
    results[#results + 1] = tostring(backlog + added + shared_events)
  elseif verdict == 'ok' then
    local id = redis.pcall('XADD', stream_key, '*', unpack(ARGV, first, last))
    if type(id) == 'table' and id.err then
      verdict, detail = 'error', id.err
    else
      if bucket ~= nil then
        bucket.tokens = bucket.tokens - n
        write_bucket(bucket_key, bucket)
      end
      added = added + n
      results[#results + 1] = 'ok'
      results[#results + 1] = id
      results[#results + 1] = tostring(backlog + added)
    end
  end
  if verdict ~= 'ok' then
    results[#results + 1] = verdict
    results[#results + 1] = detail
    results[#results + 1] = ''
  end
end
if #shared_items > 0 then
  local id = redis.pcall('XADD', stream_key, '*', 'v', '{version}', 'n', tostring(shared_events),
    'events', '[' .. table.concat(shared_items, ',') .. ']')
  local failed = type(id) == 'table' and id.err
  if not failed then
    added = added + shared_events
    for bucket_key, bucket in pairs(buckets) do
      if bucket.dirty then
        write_bucket(bucket_key, bucket)
      end
    end
  end
  for _, slot in ipairs(shared_slots) do
    if failed then
      results[slot], results[slot + 1] = 'error', id.err
    else
      results[slot + 1], results[slot + 2] = id, tostring(backlog + added)
    end
  end
end
if added > 0 then
  redis.call('INCRBY', backlog_key, added)
end
return results
"""
APPEND_SCRIPT = _APPEND_SCRIPT_TEMPLATE.replace("{version}", ENTRY_FORMAT_VERSION.decode())

# Charges refused work to an API key's token bucket.
# KEYS: the key's bucket. ARGV: cost, rate, burst.
# Takes ``cost`` tokens whatever the bucket holds (refused work was done
# already), down to at most -burst, and returns the tokens left. The bucket
# expires only once it would have refilled, so a debt is never forgotten early.
DEBIT_SCRIPT = """
local bucket_key = KEYS[1]
local cost = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local bucket = redis.call('HMGET', bucket_key, 'tokens', 'ts')
local tokens = tonumber(bucket[1]) or burst
local ts = tonumber(bucket[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
tokens = math.max(-burst, tokens - cost)
redis.call('HSET', bucket_key, 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', bucket_key, math.ceil((burst - tokens) / rate * 1000) + 1000)
return tostring(tokens)
"""

# Acknowledges and deletes flushed entries, and counts their events out.
# KEYS: the stream, the backlog counter, the recount's progress.
# ARGV: the consumer group, then entry id, event count pairs.
# Returns the events of the entries this call deleted. XDEL does not clear
# the pending list, hence XACK first. Only entries this call really deleted
# count: a late ack from a flusher that was frozen while another took over
# its batch must not take the same events off twice.
ACK_SCRIPT = (
    _HELPERS
    + """
local stream_key = KEYS[1]
local backlog_key = KEYS[2]
local recount_key = KEYS[3]
local group = ARGV[1]

local cursor, last = recount_progress(recount_key)
local entry_ids = {}
for i = 2, #ARGV, 2 do
  entry_ids[#entry_ids + 1] = ARGV[i]
end
redis.call('XACK', stream_key, group, unpack(entry_ids))
local deleted_events = 0
for i = 2, #ARGV, 2 do
  local entry_id, events = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('XDEL', stream_key, entry_id) == 1 then
    deleted_events = deleted_events + events
    deleted_ahead_of_recount(recount_key, cursor, last, entry_id, events)
  end
end
local stopped_at_zero = deleted_events > 0 and take_off_backlog(backlog_key, deleted_events)
if zero_if_empty(stream_key, backlog_key) or stopped_at_zero then
  restart_recount(recount_key, cursor)
end
return deleted_events
"""
)

# Moves poison entries out of the stream into the dead-letter stream, in one
# step, and counts their events out.
# KEYS: the stream, the backlog counter, the dead-letter stream, the recount's progress.
# ARGV: the consumer group, then per entry: id, events, error, deliveries, payload.
# Returns how many entries it moved.
DEAD_LETTER_SCRIPT = (
    _HELPERS
    + """
local stream_key = KEYS[1]
local backlog_key = KEYS[2]
local dead_letter_key = KEYS[3]
local recount_key = KEYS[4]
local group = ARGV[1]

local cursor, last = recount_progress(recount_key)
local stopped_at_zero = false
local moved = 0
for i = 2, #ARGV, 5 do
  local entry_id, events = ARGV[i], tonumber(ARGV[i + 1])
  redis.call('XADD', dead_letter_key, '*', 'stream_id', entry_id, 'error', ARGV[i + 2],
             'deliveries', ARGV[i + 3], 'payload', ARGV[i + 4])
  redis.call('XACK', stream_key, group, entry_id)
  if redis.call('XDEL', stream_key, entry_id) == 1 then
    stopped_at_zero = take_off_backlog(backlog_key, events) or stopped_at_zero
    deleted_ahead_of_recount(recount_key, cursor, last, entry_id, events)
  end
  moved = moved + 1
end
if zero_if_empty(stream_key, backlog_key) or stopped_at_zero then
  restart_recount(recount_key, cursor)
end
return moved
"""
)

# One step of a recount of the stream's events; the last step corrects the
# backlog counter.
# KEYS: the stream, the backlog counter, the recount's progress (a hash:
#   last = the newest entry when the recount began, counter = the counter
#   then, cursor = the last entry counted so far, events = their events plus
#   those of the entries deleted ahead of the cursor; or resting = 1 between
#   recounts).
# ARGV: entries at most, bytes of field values at most (per step; at least
#   one entry is read), milliseconds to rest after a recount, milliseconds
#   after which a recount no process stepped is forgotten.
# Returns {'resting'} | {'counting', entries read this step} |
#   {'done', the counter now, the counter before ('' if missing)} |
#   {'invalid', events counted, the counter}: not an integer, left alone, as
#   the append script refuses requests over it rather than guess.
# When the recount began, the counter was off by (counter - events in the
# stream). Appends and acks since moved counter and stream alike, so at the
# last step it is off by the same still: that is taken off. Only a write by
# something other than this service during the recount escapes it (the next
# recount catches it); a counter stopped at zero or zeroed for an empty
# stream restarts it (the ack and dead-letter scripts see to that).
RECOUNT_SCRIPT = (
    _HELPERS
    + """
local stream_key = KEYS[1]
local backlog_key = KEYS[2]
local recount_key = KEYS[3]
local max_entries = tonumber(ARGV[1])
local max_bytes = tonumber(ARGV[2])
local rest_ms = tonumber(ARGV[3])
local forgotten_ms = tonumber(ARGV[4])

-- The counter as a number; nil if it is not an integer.
local function integer(raw)
  local number = tonumber(raw or '0')
  if number ~= nil and number == math.floor(number) then
    return number
  end
  return nil
end

local function finish(status, events, raw)
  redis.call('DEL', recount_key)
  redis.call('HSET', recount_key, 'resting', 1)
  redis.call('PEXPIRE', recount_key, math.max(1, rest_ms))
  return {status, events, raw or ''}
end

local progress = redis.call('HMGET', recount_key, 'resting', 'cursor', 'last', 'counter', 'events')
if progress[1] then
  return {'resting'}
end
local cursor, last = progress[2], progress[3]
local counter_then, events = tonumber(progress[4]), tonumber(progress[5])
if not cursor then
  -- A new recount: of the entries in the stream now, against the counter now.
  local raw = redis.call('GET', backlog_key)
  counter_then = integer(raw)
  if counter_then == nil then
    return finish('invalid', 0, raw)
  end
  local newest = redis.call('XREVRANGE', stream_key, '+', '-', 'COUNT', 1)
  if #newest == 0 then
    if counter_then ~= 0 then
      redis.call('SET', backlog_key, 0)
    end
    return finish('done', 0, raw)
  end
  cursor, last, events = '0-0', newest[1][1], 0
end
local seen, bytes = 0, 0
while seen < max_entries and bytes < max_bytes do
  -- One entry per XRANGE, so the byte bound holds whatever the entries weigh.
  local found = redis.call('XRANGE', stream_key, '(' .. cursor, last, 'COUNT', 1)
  if #found == 0 then
    local raw = redis.call('GET', backlog_key)
    local counter_now = integer(raw)
    if counter_now == nil then
      return finish('invalid', events, raw)
    end
    local corrected = math.max(0, counter_now - (counter_then - events))
    if corrected ~= counter_now then
      redis.call('SET', backlog_key, corrected)
    end
    return finish('done', corrected, raw)
  end
  local entry_id, fields = found[1][1], found[1][2]
  local n = nil
  for j = 1, #fields, 2 do
    bytes = bytes + #fields[j + 1]
    if fields[j] == 'n' then
      n = fields[j + 1]
    end
  end
  events = events + entry_events(n)
  cursor = entry_id
  seen = seen + 1
end
redis.call('HSET', recount_key, 'cursor', cursor, 'last', last, 'counter', counter_then,
           'events', events)
redis.call('PEXPIRE', recount_key, forgotten_ms)
return {'counting', seen}
"""
)
