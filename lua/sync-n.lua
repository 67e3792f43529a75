--[[ sync: make one quota's shared view claim no more room than upstream reports, as read
from OpenAI's x-ratelimit-remaining-* and x-ratelimit-reset-* headers. Another client of
the same organization may be spending the same quota.

KEYS  one key (token bucket state) or two (sliding window sums, then log), as acquire-n.lua.
ARGV  [1] algorithm ("tb" | "sw")  [2] requests per minute  [3] request capacity
      [4] tokens per minute  [5] token capacity
      [6] remaining requests (-1 = not reported)  [7] seconds until requests reset
      [8] remaining tokens (-1 = not reported)    [9] seconds until tokens reset
Returns 1 when the view was lowered, 0 when it already claimed no more than reported. ]]

local alg = ARGV[1]
local rpm, rcap = tonumber(ARGV[2]), tonumber(ARGV[3])
local tpm, tcap = tonumber(ARGV[4]), tonumber(ARGV[5])
local rem_r, reset_r = tonumber(ARGV[6]), tonumber(ARGV[7])
local rem_t, reset_t = tonumber(ARGV[8]), tonumber(ARGV[9])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local WINDOW = 60

if alg == 'tb' then
  local k = KEYS[1]
  local s = redis.call('HMGET', k, 'r', 't', 'ts', 'lw')
  local ts = tonumber(s[3])
  local r, t = rcap, tcap
  if ts ~= nil then
    local elapsed = math.max(now - ts, 0)
    if rcap > 0 then r = math.min(rcap, tonumber(s[1]) + elapsed * rpm / 60) end
    if tcap > 0 then t = math.min(tcap, tonumber(s[2]) + elapsed * tpm / 60) end
  end
  local lowered = 0
  if rcap > 0 and rem_r >= 0 and rem_r < r then r = rem_r; lowered = 1 end
  if tcap > 0 and rem_t >= 0 and rem_t < t then t = rem_t; lowered = 1 end
  if lowered == 0 then return 0 end
  redis.call('HSET', k, 'r', string.format('%.17g', r), 't', string.format('%.17g', t),
    'ts', string.format('%.17g', math.max(now, ts or now)))
  local full_in = 2 * (tonumber(s[4]) or 0)  -- kept while leases count (acquire-n.lua)
  if rcap > 0 then full_in = math.max(full_in, (rcap - r) / (rpm / 60)) end
  if tcap > 0 then full_in = math.max(full_in, (tcap - t) / (tpm / 60)) end
  redis.call('PEXPIRE', k, math.ceil(full_in * 1000) + 1000)
  return 1
end

local sums, log = KEYS[1], KEYS[2]
local s = redis.call('HMGET', sums, 'r', 't')
local used_r, used_t = tonumber(s[1]) or 0, tonumber(s[2]) or 0
local add_r, add_t = 0, 0
if rcap > 0 and rem_r >= 0 then add_r = math.max(math.floor(rpm - rem_r - used_r), 0) end
if tcap > 0 and rem_t >= 0 then add_t = math.max(math.floor(tpm - rem_t - used_t), 0) end
if add_r == 0 and add_t == 0 then return 0 end
-- Backdate the entry so it leaves the window when upstream says its window resets, but
-- never before the newest entry, keeping the log in time order.
local at = now + math.min(math.max(reset_r, reset_t), WINDOW) - WINDOW
local newest = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
if #newest > 0 then at = math.max(at, tonumber(newest[2])) end
local seq = redis.call('HINCRBY', sums, 'seq', 1)
redis.call('ZADD', log, at, seq .. '|' .. add_r .. '|' .. add_t)
redis.call('HINCRBY', sums, 'r', add_r)
redis.call('HINCRBY', sums, 't', add_t)
redis.call('PEXPIRE', log, (WINDOW + 1) * 1000)
redis.call('PEXPIRE', sums, (WINDOW + 1) * 1000)
return 1
