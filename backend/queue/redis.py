"""Redis queue: one queue shared by every process of a deployment.

The fair order is ``backend.scheduling.fairness``'s, computed by Lua scripts on the server: every
operation is one script, which Redis runs alone, so claims from many workers never
take the same job. The time is the server's (``TIME`` inside each script), never the
caller's: hosts whose clocks disagree still agree on when a lease expires and how long
a job has waited. Scripts build key names from the namespace, so the backend needs a
single Redis node, not a cluster.

Every script may run twice when a reply is lost and the client retries: renew, ack,
requeue and cancel repeat harmlessly, a repeated enqueue reports the job as known, and
a repeated claim leaves a lease nobody holds, which expires and is reclaimed.

Keys, all under ``{namespace}:q:``:

* ``job:{id}``: hash of one known job: its JSON payload, the fields fair queuing reads
  (lane, user, tier, cap, cost in microseconds, start and finish tags, enqueue time,
  sequence) and
  its lease (token, worker, expiry, attempt), the cancelled flag and the checkpoint as
  raw bytes. The token of the latest claim stays after its lease is reclaimed: that
  holder may still ack or requeue until the next claim replaces it. Expires
  :data:`JOB_TTL_S` after it was last touched, so a job nothing refers to any more
  (its sorted-set entry lost in a crash) cannot linger forever.
* ``tag:{lane}``: sorted set of the lane's queued jobs, score the finish tag, member the
  sequence number as 16 zero-padded digits then ``:`` and the id. Members of equal
  score sort by their bytes, so the order is (finish tag, sequence) as in ``FairQueue``.
* ``age:{lane}``: the same members scored by enqueue time: the aging order.
* ``leased``: sorted set of leased job ids by lease expiry, for the lazy reclaim.
* ``running:{user}``: the user's leased jobs, for ``max_running``. Expires
  :data:`JOB_TTL_S` after its last claim or renew, which heals a count left behind by a
  job whose hash expired while leased.
* ``fresh:{lane}:{user}``: sorted set of the user's queued jobs of the lane that never
  ran, scored by cost in microseconds (members as in ``tag:{lane}``, so equal costs go
  in sequence order): the order ``FairQueue`` lays the user's tags out in. Expires
  with the job hashes.
* ``finish:{lane}``: sorted set of user finish tags. A tag at or below the lane's
  virtual time changes nothing (``max(V, F) = V``), so claims prune those: the set holds
  only users who are ahead of the lane, without a TTL.
* ``vtime``, ``cost`` (queued microseconds) and ``seq``: one value per lane, one counter.
* ``epoch``: a random id set when a queue first finds it missing. Its loss tells that
  Redis lost the queue's data (restarted without persistence, flushed):
  :meth:`RedisQueue.lost_data`.

The sorted sets hold only live jobs and the hashes a few fields, so nothing but the job
hashes and running counters needs a TTL; the epoch has none, as it must outlive the rest.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from backend.errors import LeaseLostError, QueueError, QueueUnavailableError
from backend.models import Job, Lane
from backend.queue.base import Head, Lease, LostBecause
from backend.queue.memory import DEFAULT_AGING
from backend.scheduling.fairness import EVERYTHING, LANE_ORDER, MIN_COST_S, AgingPolicy, ClaimFilter

__all__ = [
    "COMMAND_TIMEOUT_S",
    "CONNECT_TIMEOUT_S",
    "JOB_TTL_S",
    "POLL_INTERVAL_S",
    "SCAN_LIMIT",
    "RedisQueue",
]

# A week: far beyond any lane's max wait and any lease, so only true orphans expire.
JOB_TTL_S = 7 * 24 * 3600
# How far a claim looks past ineligible jobs (user at their cap, excluded tier) in one
# lane and order before it treats the lane as having nothing for this caller. It bounds
# the time a script holds the server; the in-process queue has no bound, so the two
# differ only when more than this many ineligible jobs queue ahead of an eligible one.
SCAN_LIMIT = 256
# Members fetched per round of that scan: the head is usually eligible.
SCAN_CHUNK = 16
# A claim waiting for work re-checks this often, for jobs queued by other processes;
# this process's own enqueues, acks and requeues wake it at once.
POLL_INTERVAL_S = 0.05
# A client of :meth:`RedisQueue.from_url` gives up on a connection attempt, and on a
# reply, after these: a call while Redis is down or frozen fails within seconds, never
# hangs. Every script answers in milliseconds.
CONNECT_TIMEOUT_S = 2.0
COMMAND_TIMEOUT_S = 3.0
# Retries of a call whose connection failed, which bridge a connection Redis closed
# (a restart). A timeout is not retried: it would only multiply the wait.
RETRIES = 2

# ARGV[1..3] of every script: key prefix, now (ms; empty: the server's TIME), job TTL
# (s). Then its own arguments.
_PRELUDE = """
local prefix = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local ttl_s = tonumber(ARGV[3])
local SEQ_OFFSET = 1e15
local MIN_COST = MIN_COST_S

local function job_key(id) return prefix .. 'job:' .. id end
local function member_of(seq, id)
  return string.format('%016.0f', SEQ_OFFSET + seq) .. ':' .. id
end
local function id_of(member) return string.sub(member, 18) end
local function seq_of(member) return tonumber(string.sub(member, 1, 16)) - SEQ_OFFSET end

-- Queued microseconds of a lane; reset when it empties, so a job hash that expired
-- while queued cannot leave its cost counted for good.
local function add_cost(lane, cost_us)
  local key = prefix .. 'cost'
  redis.call('HINCRBY', key, lane, string.format('%d', cost_us))  -- never '-0'
  if redis.call('ZCARD', prefix .. 'tag:' .. lane) == 0 then
    redis.call('HSET', key, lane, 0)
    redis.call('DEL', prefix .. 'backlog:' .. lane, prefix .. 'bweight:' .. lane)
    redis.call('HSET', prefix .. 'wsum', lane, 0)
  end
end

-- FairQueue's backlog: users with queued jobs in a lane, and their weights' sum.
local function backlog_add(lane, user, weight)
  if redis.call('HINCRBY', prefix .. 'backlog:' .. lane, user, 1) == 1 then
    redis.call('HSET', prefix .. 'bweight:' .. lane, user, weight)
    redis.call('HINCRBYFLOAT', prefix .. 'wsum', lane, weight)
  end
end

local function backlog_remove(lane, user)
  local key = prefix .. 'backlog:' .. lane
  if redis.call('HINCRBY', key, user, -1) > 0 then return end
  redis.call('HDEL', key, user)
  local weights = prefix .. 'bweight:' .. lane
  local weight = redis.call('HGET', weights, user) or '0'
  redis.call('HDEL', weights, user)
  local sum = tonumber(redis.call('HINCRBYFLOAT', prefix .. 'wsum', lane, '-' .. weight))
  if sum < 0 or redis.call('HLEN', key) == 0 then redis.call('HSET', prefix .. 'wsum', lane, 0) end
end

local function release(user)
  if not user then return end
  local key = prefix .. 'running:' .. user
  if redis.call('DECR', key) <= 0 then redis.call('DEL', key) end
end

-- A leased job leaves its lease: its user has one running job fewer, unless it was
-- paused in place (then it was counted out already).
local function release_job(key, user)
  if redis.call('HGET', key, 'paused') == '1' then
    redis.call('HDEL', key, 'paused')
  else
    release(user)
  end
end

-- FairQueue.restore: back to its lane with its finish tag and a fresh negative sequence
-- number, so it goes before jobs of the same tag that never ran. Its aging clock
-- restarts at ``waited_since`` (a preempted job) or keeps its enqueue time (nil). A job
-- queued before finish tags were kept ('ftag' missing) goes by its start tag.
local function restore(id, key, waited_since)
  local f = redis.call('HMGET', key, 'lane', 'user', 'ftag', 'enq', 'cost_us', 'tag', 'weight')
  f[3] = f[3] or f[6]
  release_job(key, f[2])
  backlog_add(f[1], f[2], f[7] or '1')
  local seq = -redis.call('INCR', prefix .. 'seq')
  local member = member_of(seq, id)
  local enq = f[4]
  if waited_since then
    enq = waited_since
    redis.call('HSET', key, 'enq', enq)
  end
  redis.call('ZADD', prefix .. 'tag:' .. f[1], f[3], member)
  redis.call('ZADD', prefix .. 'age:' .. f[1], enq, member)
  add_cost(f[1], tonumber(f[5]))
  redis.call('HSET', key, 'state', 'queued', 'seq', seq, 'member', member)
  redis.call('HDEL', key, 'worker', 'expires')
  redis.call('EXPIRE', key, ttl_s)
  redis.call('ZREM', prefix .. 'leased', id)
end

local function drop(id, key)
  release_job(key, redis.call('HGET', key, 'user'))
  redis.call('DEL', key)
  redis.call('ZREM', prefix .. 'leased', id)
end

local function fresh_key(lane, user) return prefix .. 'fresh:' .. lane .. ':' .. user end

-- Forget a queued job: out of its lane's sets and its cost.
local function unqueue(key)
  local f = redis.call('HMGET', key, 'lane', 'member', 'cost_us', 'user')
  redis.call('ZREM', prefix .. 'tag:' .. f[1], f[2])
  redis.call('ZREM', prefix .. 'age:' .. f[1], f[2])
  if f[4] then
    redis.call('ZREM', fresh_key(f[1], f[4]), f[2])
    backlog_remove(f[1], f[4])
  end
  redis.call('DEL', key)
  add_cost(f[1], -tonumber(f[3]))
end

-- Where a token stands with its job: 'leased' (expired or not) or 'queued' (its lease
-- was reclaimed, nobody claimed the job since) when it may still act on it; else
-- 'superseded' (a later claim or enqueue) or 'unknown' (no such job).
local function standing(key, token)
  local f = redis.call('HMGET', key, 'state', 'token')
  if not f[1] then return 'unknown' end
  if f[2] ~= token then return 'superseded' end
  return f[1]
end
"""

# ARGV: id, payload, lane, user, tier, cost_s, weight, max_running, cost_us, min_cost_s.
# The tag arithmetic is FairQueue.push's, in the same double precision: the user's
# queued jobs that never ran are laid out again from the first one's start tag,
# cheapest first.
_ENQUEUE = """
local id, lane, user = ARGV[4], ARGV[6], ARGV[7]
local key = job_key(id)
if redis.call('EXISTS', key) == 1 then return 0 end
local min_cost = tonumber(ARGV[13])
local finish_key = prefix .. 'finish:' .. lane
local fresh = fresh_key(lane, user)
local start
for _, m in ipairs(redis.call('ZRANGE', fresh, 0, -1)) do
  local tag = redis.call('HGET', job_key(id_of(m)), 'tag')
  if tag then
    start = tonumber(tag)
    break
  end
  redis.call('ZREM', fresh, m)  -- its hash expired: an orphan
end
if not start then
  local vtime = tonumber(redis.call('HGET', prefix .. 'vtime', lane)) or 0
  start = math.max(vtime, tonumber(redis.call('ZSCORE', finish_key, user)) or 0)
end
local seq = redis.call('INCR', prefix .. 'seq')
local member = member_of(seq, id)
redis.call('HSET', key, 'payload', ARGV[5], 'lane', lane, 'user', user, 'tier', ARGV[8],
  'max_running', ARGV[11], 'cost_us', ARGV[12], 'cost', ARGV[9], 'weight', ARGV[10],
  'enq', now, 'seq', seq, 'order', seq, 'member', member, 'state', 'queued', 'attempt', 0)
redis.call('EXPIRE', key, ttl_s)
redis.call('ZADD', prefix .. 'age:' .. lane, now, member)
redis.call('ZADD', fresh, ARGV[12], member)
redis.call('EXPIRE', fresh, ttl_s)
backlog_add(lane, user, ARGV[10])
for _, m in ipairs(redis.call('ZRANGE', fresh, 0, -1)) do
  local k = job_key(id_of(m))
  local f = redis.call('HMGET', k, 'cost', 'weight')
  if f[1] then
    local finish = start + math.max(tonumber(f[1]), min_cost) / math.max(tonumber(f[2]), 1e-9)
    local finish_text = string.format('%.17g', finish)
    redis.call('HSET', k, 'tag', string.format('%.17g', start), 'ftag', finish_text)
    redis.call('ZADD', prefix .. 'tag:' .. lane, finish_text, m)
    start = finish
  else
    redis.call('ZREM', fresh, m)
  end
end
redis.call('ZADD', finish_key, string.format('%.17g', start), user)
add_cost(lane, tonumber(ARGV[12]))
return 1
"""

# ARGV: mode ('claim' or 'peek'), worker, token, lease_ms, scan limit and chunk, then
# per lane in LANE_ORDER: name, allowed (1/0), aged after (ms), max wait (ms); then the
# aged jobs' yield ratio (0: none), the size slack, then the excluded tiers.
# Reclaims expired leases first (in enqueue order, as MemoryQueue walks its entries),
# then picks as FairQueue.peek does; a claim then applies FairQueue.pop.
_TAKE = """
local mode, worker, token, lease_ms = ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
local SCAN_LIMIT, SCAN_CHUNK = tonumber(ARGV[8]), tonumber(ARGV[9])
local lanes, allowed, aged_after, max_wait = {}, {}, {}, {}
for i = 0, 2 do
  local lane = ARGV[10 + i * 4]
  lanes[i + 1] = lane
  allowed[lane] = ARGV[11 + i * 4] == '1'
  aged_after[lane] = tonumber(ARGV[12 + i * 4])
  max_wait[lane] = tonumber(ARGV[13 + i * 4])
end
local yield_ratio = tonumber(ARGV[22])
local size_slack = tonumber(ARGV[23])
local excluded = {}
for i = 24, #ARGV do excluded[ARGV[i]] = true end

local expired = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', prefix .. 'leased', '-inf', now)) do
  local order = tonumber(redis.call('HGET', job_key(id), 'order'))
  if order then
    table.insert(expired, {id, order})
  else
    redis.call('ZREM', prefix .. 'leased', id)
  end
end
table.sort(expired, function(a, b) return a[2] < b[2] end)
for _, item in ipairs(expired) do
  local key = job_key(item[1])
  if redis.call('HGET', key, 'cancelled') == '1' then
    drop(item[1], key)
  else
    restore(item[1], key)
  end
end

local running, orphans = {}, {}
local function eligible(member, lane)
  local f = redis.call('HMGET', job_key(id_of(member)), 'tier', 'user', 'max_running')
  if not f[1] then
    table.insert(orphans, {lane, member})
    return false
  end
  if excluded[f[1]] then return false end
  local cap = tonumber(f[3])
  if cap <= 0 then return true end
  local count = running[f[2]]
  if count == nil then
    count = tonumber(redis.call('GET', prefix .. 'running:' .. f[2])) or 0
    running[f[2]] = count
  end
  return count < cap
end

-- The first eligible member of a sorted set (with its score), by score up to cutoff
-- when one is given, looking at SCAN_LIMIT members at most.
local function first_eligible(key, lane, cutoff)
  local offset = 0
  while offset < SCAN_LIMIT do
    local n = math.min(SCAN_CHUNK, SCAN_LIMIT - offset)
    local found
    if cutoff then
      found = redis.call('ZRANGEBYSCORE', key, '-inf', cutoff, 'WITHSCORES', 'LIMIT', offset, n)
    else
      found = redis.call('ZRANGE', key, offset, offset + n - 1, 'WITHSCORES')
    end
    for j = 1, #found, 2 do
      if eligible(found[j], lane) then return found[j], tonumber(found[j + 1]) end
    end
    if #found < 2 * n then return nil end
    offset = offset + n
  end
  return nil
end

local chosen, chosen_lane, best_deadline, best_seq
for _, lane in ipairs(lanes) do
  if allowed[lane] then
    local member, enq = first_eligible(prefix .. 'age:' .. lane, lane, now - aged_after[lane])
    if member then
      local deadline, seq = enq + max_wait[lane], seq_of(member)
      if not chosen or deadline < best_deadline
          or (deadline == best_deadline and seq < best_seq) then
        chosen, chosen_lane, best_deadline, best_seq = member, lane, deadline, seq
      end
    end
  end
end
local function cost_of(member)
  local f = redis.call('HMGET', job_key(id_of(member)), 'cost', 'cost_us')
  return tonumber(f[1]) or (tonumber(f[2]) or 0) / 1e6
end
-- FairQueue._first: the cheapest eligible member with a tag at most size_slack after
-- the first eligible one's (ties in tag order), looking at SCAN_LIMIT members at most.
local function cheapest_within(key, lane, first, score)
  local best, best_cost = first, cost_of(first)
  local cutoff = string.format('%.17g', score + size_slack)
  local found = redis.call('ZRANGEBYSCORE', key, string.format('%.17g', score), cutoff,
    'LIMIT', 0, SCAN_LIMIT)
  for _, member in ipairs(found) do
    if member ~= first and eligible(member, lane) then
      local cost = cost_of(member)
      if cost < best_cost then best, best_cost = member, cost end
    end
  end
  return best
end
local first, first_lane
for _, lane in ipairs(lanes) do
  if allowed[lane] then
    local score
    first, score = first_eligible(prefix .. 'tag:' .. lane, lane, nil)
    if first then
      first_lane = lane
      if size_slack > 0 and seq_of(first) >= 0 then  -- a job given back keeps its place
        first = cheapest_within(prefix .. 'tag:' .. lane, lane, first, score)
      end
      break
    end
  end
end
-- FairQueue.peek: an aged job lets a job of at most 1/yield_ratio its cost go first.
if not chosen or (first and yield_ratio > 0
    and cost_of(first) * yield_ratio <= cost_of(chosen)) then
  chosen, chosen_lane = first, first_lane
end
for _, orphan in ipairs(orphans) do
  redis.call('ZREM', prefix .. 'tag:' .. orphan[1], orphan[2])
  redis.call('ZREM', prefix .. 'age:' .. orphan[1], orphan[2])
end
if not chosen then return false end

local id = id_of(chosen)
local key = job_key(id)
local f = redis.call('HMGET', key, 'payload', 'user', 'tag', 'enq', 'cost_us', 'checkpoint')
if mode == 'peek' then
  return {id, f[1], (now - tonumber(f[4]) >= aged_after[chosen_lane]) and 1 or 0}
end
redis.call('ZREM', prefix .. 'tag:' .. chosen_lane, chosen)
redis.call('ZREM', prefix .. 'age:' .. chosen_lane, chosen)
redis.call('ZREM', fresh_key(chosen_lane, f[2]), chosen)
-- FairQueue.pop: V moves on by the work served over the waiting users' weight, and
-- at least to the served job's start tag.
local vtime_key = prefix .. 'vtime'
local cost = tonumber(redis.call('HGET', key, 'cost')) or tonumber(f[5]) / 1e6
local wsum = tonumber(redis.call('HGET', prefix .. 'wsum', chosen_lane)) or 0
local vtime = tonumber(redis.call('HGET', vtime_key, chosen_lane)) or 0
vtime = math.max(vtime + math.max(cost, MIN_COST) / math.max(wsum, 1e-9), tonumber(f[3]))
local vtime_text = string.format('%.17g', vtime)
redis.call('HSET', vtime_key, chosen_lane, vtime_text)
redis.call('ZREMRANGEBYSCORE', prefix .. 'finish:' .. chosen_lane, '-inf', vtime_text)
backlog_remove(chosen_lane, f[2])
add_cost(chosen_lane, -tonumber(f[5]))
local running_key = prefix .. 'running:' .. f[2]
redis.call('INCR', running_key)
redis.call('EXPIRE', running_key, ttl_s)
local attempt = redis.call('HINCRBY', key, 'attempt', 1)
local expires = now + lease_ms
redis.call('HSET', key, 'state', 'leased', 'token', token, 'worker', worker, 'expires', expires)
redis.call('EXPIRE', key, ttl_s)
redis.call('ZADD', prefix .. 'leased', expires, id)
return {id, f[1], attempt, expires, f[6]}
"""

# ARGV: id, token, lease_ms. Returns the new expiry, or why the lease is not held.
_RENEW = """
local id = ARGV[4]
local key = job_key(id)
local held = standing(key, ARGV[5])
if held == 'queued' then return 'reclaimed' end
if held ~= 'leased' then return held end
local expires = now + tonumber(ARGV[6])
redis.call('HSET', key, 'expires', expires)
redis.call('EXPIRE', key, ttl_s)
redis.call('ZADD', prefix .. 'leased', expires, id)
redis.call('EXPIRE', prefix .. 'running:' .. redis.call('HGET', key, 'user'), ttl_s)
return expires
"""

# ARGV: id, token. An unknown job is already gone: nothing to do.
_ACK = """
local key = job_key(ARGV[4])
local held = standing(key, ARGV[5])
if held == 'leased' then
  drop(ARGV[4], key)
elseif held == 'queued' then
  unqueue(key)
elseif held == 'superseded' then
  return held
end
return 'ok'
"""

# ARGV: id, token, has checkpoint (1/0), checkpoint bytes. A cancelled job is dropped;
# a reclaimed one keeps its place and takes the checkpoint.
_REQUEUE = """
local id = ARGV[4]
local key = job_key(id)
local held = standing(key, ARGV[5])
if held ~= 'leased' and held ~= 'queued' then return held end
if held == 'leased' and redis.call('HGET', key, 'cancelled') == '1' then
  drop(id, key)
  return 'ok'
end
if ARGV[6] == '1' then
  redis.call('HSET', key, 'checkpoint', ARGV[7])
else
  redis.call('HDEL', key, 'checkpoint')
end
if held == 'leased' then
  restore(id, key, now)
else
  redis.call('EXPIRE', key, ttl_s)
end
return 'ok'
"""

# ARGV: id, token, paused (1/0). A leased job paused in place is counted out of its
# user's running cap, and back in (even over the cap) when it runs again.
_PAUSE = """
local key = job_key(ARGV[4])
if standing(key, ARGV[5]) ~= 'leased' then return 'ignored' end
local paused = redis.call('HGET', key, 'paused') == '1'
if paused == (ARGV[6] == '1') then return 'ok' end
local user = redis.call('HGET', key, 'user')
if ARGV[6] == '1' then
  redis.call('HSET', key, 'paused', 1)
  release(user)
else
  redis.call('HDEL', key, 'paused')
  local running_key = prefix .. 'running:' .. user
  redis.call('INCR', running_key)
  redis.call('EXPIRE', running_key, ttl_s)
end
return 'ok'
"""

# ARGV: id. A queued job is dropped, a leased one flagged; 0 if unknown.
_CANCEL = """
local key = job_key(ARGV[4])
local state = redis.call('HGET', key, 'state')
if not state then return 0 end
if state == 'queued' then
  unqueue(key)
else
  redis.call('HSET', key, 'cancelled', 1)
  redis.call('EXPIRE', key, ttl_s)
end
return 1
"""

# ARGV: id. The 0-based rank in its lane's (finish tag, sequence) order, or nil.
_POSITION = """
local f = redis.call('HMGET', job_key(ARGV[4]), 'state', 'lane', 'member')
if f[1] ~= 'queued' then return false end
return redis.call('ZRANK', prefix .. 'tag:' .. f[2], f[3])
"""

# ARGV: a new epoch. The queue's epoch, set to the new one if there was none.
_EPOCH = """
local key = prefix .. 'epoch'
local epoch = redis.call('GET', key)
if epoch then return epoch end
redis.call('SET', key, ARGV[4])
return ARGV[4]
"""


class RedisQueue:
    """The :class:`~backend.queue.base.JobQueue` contract over Redis, with the memory
    backend's semantics; several processes may share one namespace."""

    def __init__(
        self,
        client: Redis,
        *,
        namespace: str,
        aging: AgingPolicy = DEFAULT_AGING,
        fake_now_ms: Callable[[], int] | None = None,
    ) -> None:
        """``fake_now_ms`` is for tests alone: the scripts read it instead of the
        server's ``TIME``, so a test can move time. Left ``None`` everywhere else: a
        caller's clock must never time leases."""
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            # Checkpoints are raw bytes; a decoding client would mangle them.
            raise QueueError("RedisQueue needs a client with decode_responses=False")
        self._client = client
        self._owns_client = False
        self._namespace = namespace
        self._prefix = f"{namespace}:q:"
        self._aging = aging
        self._fake_now_ms = fake_now_ms
        self._changed = asyncio.Event()
        # The epoch this queue last saw (None before its first lost_data call).
        self._epoch: bytes | None = None
        register = client.register_script
        prelude = _PRELUDE.replace("MIN_COST_S", repr(MIN_COST_S))
        self._enqueue = register(prelude + _ENQUEUE)
        self._take = register(prelude + _TAKE)
        self._renew = register(prelude + _RENEW)
        self._ack = register(prelude + _ACK)
        self._requeue = register(prelude + _REQUEUE)
        self._cancel = register(prelude + _CANCEL)
        self._pause = register(prelude + _PAUSE)
        self._position = register(prelude + _POSITION)
        self._mark_epoch = register(prelude + _EPOCH)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str,
        aging: AgingPolicy = DEFAULT_AGING,
        fake_now_ms: Callable[[], int] | None = None,
    ) -> RedisQueue:
        """A queue over its own client of ``url``, closed by :meth:`close`. The client
        reconnects after Redis comes back, and gives up on a call within seconds while
        it is away (:data:`CONNECT_TIMEOUT_S`, :data:`COMMAND_TIMEOUT_S`)."""
        client = Redis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=COMMAND_TIMEOUT_S,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), RETRIES, (RedisConnectionError,)),
        )
        queue = cls(client, namespace=namespace, aging=aging, fake_now_ms=fake_now_ms)
        queue._owns_client = True
        return queue

    @property
    def namespace(self) -> str:
        """The key prefix this queue lives under (before ``:q:``)."""
        return self._namespace

    @property
    def aging(self) -> AgingPolicy:
        """The wait bounds the claim script ages jobs by."""
        return self._aging

    def key(self, suffix: str) -> str:
        """The full Redis key of ``suffix`` (``"job:<id>"``, ``"tag:realtime"``...)."""
        return self._prefix + suffix

    async def enqueue(self, job: Job) -> bool:
        """Queue ``job``; False (and no change) if a job with its id is already known."""
        added = await self._run(
            self._enqueue,
            job.id,
            job.to_json(),
            job.lane.value,
            str(job.user_id),
            job.tier,
            repr(float(job.cost_s)),
            repr(float(job.weight)),
            job.max_running,
            _micros(job.cost_s),
            repr(MIN_COST_S),
        )
        if added:
            self._notify()
        return bool(added)

    async def claim(
        self,
        worker_id: str,
        *,
        lease_s: float,
        wait_s: float = 0.0,
        allow: ClaimFilter = EVERYTHING,
    ) -> Lease | None:
        """Lease the next job in fair order that ``allow`` permits, waiting up to ``wait_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            changed = self._changed  # taken first: a change during the take still wakes us
            token = secrets.token_hex(8)
            reply = await self._run(
                self._take, "claim", worker_id, token, int(lease_s * 1000), *self._filter(allow)
            )
            remaining = deadline - loop.time()
            if reply or remaining <= 0:
                return _lease(reply, worker_id, token) if reply else None
            try:
                await asyncio.wait_for(changed.wait(), timeout=min(remaining, POLL_INTERVAL_S))
            except TimeoutError:
                continue

    async def peek(self, allow: ClaimFilter = EVERYTHING) -> Head | None:
        """The job :meth:`claim` would take now, left queued."""
        reply = await self._run(self._take, "peek", "", "", 0, *self._filter(allow))
        if not reply:
            return None
        _, payload, aged = reply
        return Head(Job.from_json(payload.decode()), bool(aged))

    async def renew(self, lease: Lease, *, lease_s: float) -> Lease:
        """Extend a lease to ``lease_s`` from now, also an expired one nobody reclaimed;
        LeaseLostError once it was reclaimed or superseded, or the job is gone."""
        reply = await self._run(self._renew, lease.job.id, lease.token, int(lease_s * 1000))
        _check_held(lease, reply)
        return replace(lease, expires_at_ms=int(reply))

    async def ack(self, lease: Lease) -> None:
        """Forget a finished job, also after its lease expired; LeaseLostError if another
        claim superseded the lease. A job already gone stays gone."""
        _check_held(lease, await self._run(self._ack, lease.job.id, lease.token))
        self._notify()  # the user may be under their running cap again

    async def requeue(self, lease: Lease, *, checkpoint: bytes | None = None) -> None:
        """Queue a leased job again with ``checkpoint``; a cancelled one is dropped
        instead, a reclaimed one only takes the checkpoint. LeaseLostError if another
        claim superseded the lease or the job is gone."""
        has = "0" if checkpoint is None else "1"
        reply = await self._run(self._requeue, lease.job.id, lease.token, has, checkpoint or b"")
        _check_held(lease, reply)
        self._notify()

    async def set_paused(self, lease: Lease, paused: bool) -> None:
        """Count a leased job out of (or back into) its user's running cap while it is
        paused in place; ignored once the lease no longer holds the job."""
        await self._run(self._pause, lease.job.id, lease.token, "1" if paused else "0")

    async def cancel(self, job_id: str) -> bool:
        """Drop a queued job or flag a leased one to stop; True if the job was known."""
        return bool(await self._run(self._cancel, job_id))

    async def is_cancelled(self, job_id: str) -> bool:
        """Whether the job was flagged to stop while leased."""
        flag = await self._command(self._client.hget(self.key(f"job:{job_id}"), "cancelled"))
        return bool(flag == b"1")

    async def depth(self, lane: Lane | None = None) -> int:
        """Number of queued (not leased) jobs, in ``lane`` or in all lanes."""
        lanes = LANE_ORDER if lane is None else (lane,)
        pipe = self._client.pipeline(transaction=False)
        for one in lanes:
            pipe.zcard(self.key(f"tag:{one.value}"))
        return sum(await self._command(pipe.execute()))

    async def position(self, job_id: str) -> int | None:
        """0-based place of a queued job in its lane's fair order; None if not queued."""
        rank = await self._run(self._position, job_id)
        return None if rank is None else int(rank)

    async def queued_cost_s(self, lane: Lane | None = None) -> float:
        """Estimated device-seconds of the queued jobs, in ``lane`` or in all lanes."""
        lanes = LANE_ORDER if lane is None else (lane,)
        values = await self._command(
            self._client.hmget(self.key("cost"), [one.value for one in lanes])
        )
        return sum(max(0, int(value or 0)) for value in values) / 1e6

    async def lost_data(self) -> bool:
        """Whether Redis lost this queue's data (restarted without persistence, or
        flushed) since the last call: the ``epoch`` key it saw then is gone, or another
        process already set a new one. A missing epoch is set again, so the next call
        answers False. The first call only reads the epoch (setting it on a fresh Redis)
        and answers False: what was lost before it cannot be told from a fresh start."""
        seen = await self._run(self._mark_epoch, secrets.token_hex(8))
        lost = self._epoch is not None and seen != self._epoch
        self._epoch = seen
        return lost

    async def purge(self) -> int:
        """Delete every key of this namespace's queue (benchmarks, tests); how many."""
        keys = [key async for key in self._client.scan_iter(match=f"{self._prefix}*", count=1000)]
        for start in range(0, len(keys), 1000):
            await self._command(self._client.delete(*keys[start : start + 1000]))
        return len(keys)

    async def close(self) -> None:
        """Wake the waiting claims and close the client if this queue opened it."""
        self._notify()
        if self._owns_client:
            await self._client.aclose()

    def _filter(self, allow: ClaimFilter) -> list[str | int]:
        args: list[str | int] = [SCAN_LIMIT, SCAN_CHUNK]
        for lane in LANE_ORDER:
            args += [
                lane.value,
                "1" if lane in allow.lanes else "0",
                self._aging.aged_after_ms(lane),
                self._aging.max_wait_ms[lane],
            ]
        ratio = self._aging.yield_ratio
        args.append(repr(ratio) if math.isfinite(ratio) else "0")  # 0: aged jobs never yield
        slack = self._aging.size_slack
        args.append(repr(slack) if math.isfinite(slack) else "1e300")
        return args + sorted(allow.exclude_tiers)

    async def _run(self, script: AsyncScript, *args: str | int | bytes) -> Any:
        # A restarted server has lost its script cache: the script re-sends its source
        # on NOSCRIPT, so this works again as soon as Redis is back.
        now: str | int = "" if self._fake_now_ms is None else self._fake_now_ms()
        return await self._command(script(args=[self._prefix, now, JOB_TTL_S, *args]))

    async def _command(self, pending: Any) -> Any:
        try:
            return await pending
        except (AuthenticationError, AuthorizationError) as exc:
            raise QueueError(f"queue {self._namespace!r}: Redis refused us: {exc}") from exc
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise QueueUnavailableError(self._namespace, str(exc) or type(exc).__name__) from exc
        except RedisError as exc:
            raise QueueError(f"queue {self._namespace!r}: Redis failed: {exc}") from exc

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


def _micros(seconds: float) -> int:
    return round(seconds * 1_000_000)


def _lease(reply: Sequence[Any], worker_id: str, token: str) -> Lease:
    _, payload, attempt, expires_at_ms, checkpoint = reply
    return Lease(
        job=Job.from_json(payload.decode()),
        worker_id=worker_id,
        token=token,
        attempt=int(attempt),
        expires_at_ms=int(expires_at_ms),
        checkpoint=checkpoint,
    )


def _check_held(lease: Lease, reply: Any) -> None:
    """Raise LeaseLostError for a script's refusal (``b"superseded"``, ``b"reclaimed"``,
    ``b"unknown"``); anything else is its answer."""
    if isinstance(reply, bytes) and reply != b"ok":
        reason = LostBecause[reply.decode().upper()]
        raise LeaseLostError(lease.job.id, lease.worker_id, reason)
