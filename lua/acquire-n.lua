--[[ acquire: reserve requests and tokens on every quota given, or on none.
The token bucket and sliding window rules are those of rust/core/src/limit/state.rs.

KEYS  per quota, in ARGV order: a token bucket uses one key (its state hash: r, t, ts);
      a sliding window uses two (its sums hash: r, t, seq; then its log, a sorted set of
      "seq|requests|tokens" scored by time). All keys of one call share one hash tag.
ARGV  [1] requests  [2] tokens  [3] n, the number of quotas
      then 5 values per quota: algorithm ("tb" | "sw"), requests per minute,
      request capacity, tokens per minute, token capacity (0 = dimension not limited)
      then [4 + 5n] (optional) the lease shelf in seconds: absent or 0 for an admission, above 0 for a pod's
      lease on token buckets, which the pod may admit from until that long after the grant
A token bucket also keeps what leases were granted in the last two shelves (fields ls, lw,
lr, lt, pr, pt): room a pod holds and has not sent yet. The bucket refills only up to its
capacity less that room, so the room in the bucket and the room in leases together never
exceed the burst upstream allows; otherwise a lease granted from a nearly full bucket
would be spent after the bucket refilled to full, and upstream would see more than a burst.
Returns {1, remaining_requests, remaining_tokens, mark_1 .. mark_n} when admitted
        (remaining -1 where no quota limits that dimension; mark = the sliding window log
        member, or "" for a token bucket), or {0, retry_after_us, refusing quota index}.
Time is Redis server time, so pods' clocks never matter. ]]

local requests = tonumber(ARGV[1])
local tokens = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local shelf = tonumber(ARGV[4 + 5 * n]) or 0
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local WINDOW = 60

local function level(stored, elapsed, per_minute, cap)
  if cap == 0 then return 0 end
  return math.min(cap, stored + elapsed * per_minute / 60)
end

local function bucket_wait(per_minute, cap, have, cost)
  if cap == 0 or cost <= 0 then return 0 end
  local need = math.min(cost, cap)
  if have >= need then return 0 end
  return (need - have) / (per_minute / 60)
end

local function over(used, cost, limit)
  if limit == 0 or cost <= 0 then return 0 end
  return used + math.min(cost, limit) - limit
end

local function expire_window(sums, log)
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', now - WINDOW)
  if #old == 0 then return end
  local r, t = 0, 0
  for _, member in ipairs(old) do
    local _, mr, mt = string.match(member, '^(%d+)|(%d+)|(%d+)$')
    r = r + tonumber(mr)
    t = t + tonumber(mt)
  end
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - WINDOW)
  redis.call('HINCRBY', sums, 'r', -r)
  redis.call('HINCRBY', sums, 't', -t)
end

-- Seconds until enough of the log has left the window on both dimensions.
local function window_wait(log, over_r, over_t)
  local freed_r, freed_t, start = 0, 0, 0
  while true do
    local page = redis.call('ZRANGE', log, start, start + 99, 'WITHSCORES')
    if #page == 0 then return WINDOW end
    for i = 1, #page, 2 do
      local _, mr, mt = string.match(page[i], '^(%d+)|(%d+)|(%d+)$')
      freed_r = freed_r + tonumber(mr)
      freed_t = freed_t + tonumber(mt)
      if freed_r >= over_r and freed_t >= over_t then
        return math.max(tonumber(page[i + 1]) + WINDOW - now, 0.001)
      end
    end
    start = start + 100
  end
end

-- What leases of a bucket granted in its current and previous shelf of `width` seconds
-- (0: never leased), {requests, tokens}, and the current shelf's own grants.
local NONE = {0, 0}
local function leased(k, width)
  if width <= 0 then return NONE, NONE end
  local s = redis.call('HMGET', k, 'ls', 'lr', 'lt', 'pr', 'pt')
  local age = math.floor(now / width) - tonumber(s[1])
  if age == 0 then
    local cur = {tonumber(s[2]), tonumber(s[3])}
    return {cur[1] + tonumber(s[4]), cur[2] + tonumber(s[5])}, cur
  elseif age == 1 then
    return {tonumber(s[2]), tonumber(s[3])}, NONE
  end
  return NONE, NONE
end

local quotas = {}
local key = 1
local rem_r, rem_t = -1, -1
local function tighter(current, value)
  if current < 0 then return value end
  return math.min(current, value)
end

-- Pass 1: check every quota; write nothing. A refusal reports the longest wait.
local worst, worst_index = 0, 0
for i = 1, n do
  local a = 3 + (i - 1) * 5
  local q = {
    alg = ARGV[a + 1],
    rpm = tonumber(ARGV[a + 2]), rcap = tonumber(ARGV[a + 3]),
    tpm = tonumber(ARGV[a + 4]), tcap = tonumber(ARGV[a + 5]),
    -- filled in below; named here so the table is sized once
    key = false, r = 0, t = 0, width = 0, out = NONE, cur = NONE,
  }
  local wait = 0
  if q.alg == 'tb' then
    q.key = KEYS[key]
    key = key + 1
    local s = redis.call('HMGET', q.key, 'r', 't', 'ts', 'lw')
    local ts = tonumber(s[3])
    q.width = tonumber(s[4]) or 0
    q.out, q.cur = leased(q.key, q.width)
    local out = q.out
    if ts == nil then
      q.r, q.t = q.rcap, q.tcap
    else
      local elapsed = math.max(now - ts, 0)
      q.r = math.min(level(tonumber(s[1]), elapsed, q.rpm, q.rcap), math.max(q.rcap - out[1], 0))
      q.t = math.min(level(tonumber(s[2]), elapsed, q.tpm, q.tcap), math.max(q.tcap - out[2], 0))
    end
    wait = math.max(bucket_wait(q.rpm, q.rcap, q.r, requests), bucket_wait(q.tpm, q.tcap, q.t, tokens))
    if wait == 0 then
      if q.rcap > 0 then rem_r = tighter(rem_r, q.r - requests) end
      if q.tcap > 0 then rem_t = tighter(rem_t, q.t - tokens) end
    end
  else
    q.sums, q.log = KEYS[key], KEYS[key + 1]
    key = key + 2
    expire_window(q.sums, q.log)
    local s = redis.call('HMGET', q.sums, 'r', 't')
    local used_r, used_t = tonumber(s[1]) or 0, tonumber(s[2]) or 0
    local over_r, over_t = over(used_r, requests, q.rcap), over(used_t, tokens, q.tcap)
    if over_r > 0 or over_t > 0 then
      wait = window_wait(q.log, over_r, over_t)
    else
      if q.rcap > 0 then rem_r = tighter(rem_r, q.rcap - used_r - requests) end
      if q.tcap > 0 then rem_t = tighter(rem_t, q.tcap - used_t - tokens) end
    end
  end
  if wait > worst then
    worst, worst_index = wait, i
  end
  quotas[i] = q
end
if worst > 0 then
  return {0, math.ceil(worst * 1000000), worst_index}
end

-- Pass 2: every quota has room; take it.
local reply = {1, math.floor(rem_r), math.floor(rem_t)}
for i = 1, n do
  local q = quotas[i]
  if q.alg == 'tb' then
    local r, t = q.r, q.t
    if q.rcap > 0 then r = r - requests end
    if q.tcap > 0 then t = t - tokens end
    redis.call('HSET', q.key, 'r', string.format('%.17g', r), 't', string.format('%.17g', t),
      'ts', string.format('%.17g', now))
    local held_for = 2 * q.width
    if shelf > 0 then
      -- A grant joins the current shelf's (a bucket leased with another shelf length
      -- starts its count over, keeping what is outstanding as the previous shelf's).
      local cur, prev = q.cur, {q.out[1] - q.cur[1], q.out[2] - q.cur[2]}
      if q.width ~= shelf then
        prev, cur = {prev[1] + cur[1], prev[2] + cur[2]}, {0, 0}
      end
      redis.call('HSET', q.key, 'ls', math.floor(now / shelf), 'lw', string.format('%.17g', shelf),
        'lr', cur[1] + requests, 'lt', cur[2] + tokens, 'pr', prev[1], 'pt', prev[2])
      held_for = math.max(held_for, 2 * shelf)
    end
    -- Gone once full again and no lease counts: an absent key reads as a full bucket.
    local full_in = held_for
    if q.rcap > 0 then full_in = math.max(full_in, (q.rcap - r) / (q.rpm / 60)) end
    if q.tcap > 0 then full_in = math.max(full_in, (q.tcap - t) / (q.tpm / 60)) end
    redis.call('PEXPIRE', q.key, math.ceil(full_in * 1000) + 1000)
    reply[#reply + 1] = ''
  else
    local seq = redis.call('HINCRBY', q.sums, 'seq', 1)
    local member = seq .. '|' .. requests .. '|' .. tokens
    redis.call('ZADD', q.log, now, member)
    redis.call('HINCRBY', q.sums, 'r', requests)
    redis.call('HINCRBY', q.sums, 't', tokens)
    redis.call('PEXPIRE', q.log, (WINDOW + 1) * 1000)
    redis.call('PEXPIRE', q.sums, (WINDOW + 1) * 1000)
    reply[#reply + 1] = member
  end
end
return reply
