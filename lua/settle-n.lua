--[[ settle: change what a reservation holds once the real cost is known, or give a
reservation back whole. The rules are those of rust/core/src/limit/state.rs.

KEYS  as for acquire-n.lua: per quota one key (token bucket) or two (sliding window).
ARGV  [1] requests to give back  [2] tokens to give back (negative: charge more)
      [3] n, then 6 values per quota: algorithm ("tb" | "sw"), requests per minute,
      request capacity, tokens per minute, token capacity, and the mark acquire returned
Returns the number of quotas adjusted (a sliding window admission that has already left
the window no longer counts, and is not adjusted). ]]

local give_r = tonumber(ARGV[1])
local give_t = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000

-- What leases granted in a bucket's current and previous shelf still hold, {requests,
-- tokens} (s = its fields r, t, ts, ls, lw, lr, lt, pr, pt): the bucket refills only up
-- to its capacity less that (acquire-n.lua).
local function leased(s)
  local width = tonumber(s[5]) or 0
  if width <= 0 then return {0, 0} end
  local age = math.floor(now / width) - tonumber(s[4])
  if age == 0 then return {tonumber(s[6]) + tonumber(s[8]), tonumber(s[7]) + tonumber(s[9])} end
  if age == 1 then return {tonumber(s[6]), tonumber(s[7])} end
  return {0, 0}
end

local adjusted = 0
local key = 1
for i = 1, n do
  local a = 3 + (i - 1) * 6
  local alg = ARGV[a + 1]
  local rpm, rcap = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local tpm, tcap = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  if alg == 'tb' then
    local k = KEYS[key]
    key = key + 1
    local s = redis.call('HMGET', k, 'r', 't', 'ts', 'ls', 'lw', 'lr', 'lt', 'pr', 'pt')
    local ts = tonumber(s[3])
    -- An expired bucket is full: a refund cannot add to it, a charge starts from full.
    local out = leased(s)
    local rtop, ttop = math.max(rcap - out[1], 0), math.max(tcap - out[2], 0)
    local r, t = rcap, tcap
    if ts ~= nil then
      local elapsed = math.max(now - ts, 0)
      if rcap > 0 then r = math.min(rtop, tonumber(s[1]) + elapsed * rpm / 60) end
      if tcap > 0 then t = math.min(ttop, tonumber(s[2]) + elapsed * tpm / 60) end
    end
    if rcap > 0 then r = math.min(rtop, r + give_r) end
    if tcap > 0 then t = math.min(ttop, t + give_t) end
    redis.call('HSET', k, 'r', string.format('%.17g', r), 't', string.format('%.17g', t),
      'ts', string.format('%.17g', math.max(now, ts or now)))
    local full_in = 2 * (tonumber(s[5]) or 0)  -- kept while leases count
    if rcap > 0 then full_in = math.max(full_in, (rcap - r) / (rpm / 60)) end
    if tcap > 0 then full_in = math.max(full_in, (tcap - t) / (tpm / 60)) end
    redis.call('PEXPIRE', k, math.ceil(full_in * 1000) + 1000)
    adjusted = adjusted + 1
  else
    local sums, log = KEYS[key], KEYS[key + 1]
    key = key + 2
    local member = ARGV[a + 6]
    local score = redis.call('ZSCORE', log, member)
    if score then
      local seq, mr, mt = string.match(member, '^(%d+)|(%d+)|(%d+)$')
      local new_r = math.max(tonumber(mr) - give_r, 0)
      local new_t = math.max(tonumber(mt) - give_t, 0)
      redis.call('ZREM', log, member)
      if new_r > 0 or new_t > 0 then
        redis.call('ZADD', log, score, seq .. '|' .. new_r .. '|' .. new_t)
      end
      redis.call('HINCRBY', sums, 'r', new_r - tonumber(mr))
      redis.call('HINCRBY', sums, 't', new_t - tonumber(mt))
      adjusted = adjusted + 1
    end
  end
end
return adjusted
