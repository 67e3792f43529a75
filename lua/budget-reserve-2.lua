--[[ budget-reserve: hold an amount on one period of a dollar budget, if spent + reserved +
amount stays within the limit. A reservation lapses at its expiry (its pod died before it
settled): the next call on the budget gives its amount back, oldest first, at most 100 per
call (a backlog beyond that still counts until a later call: it can refuse early, never
admit too much).

KEYS  [1] the period's totals (a hash: spent, reserved, a<percent> for each alert fired)
      [2] the period's live reservations (a sorted set of "<id>|<nano-dollars>" scored by
      expiry, in server milliseconds)
ARGV  [1] amount (nano-dollars)  [2] limit (nano-dollars)  [3] lease (milliseconds)
      [4] the reservation's id  [5] how long the keys live (seconds)
Returns {1, spent, reserved} when held (reserved counting this amount), or
        {0, spent, reserved} when refused. A refusal fires no alert: alerts follow what is
        spent (budget-settle-2.lua), and a refusal says only that worst cases filled it.
Time is Redis server time, so pods' clocks never matter. ]]

local amount, limit, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
if #lapsed > 0 then
  local sum = 0
  for _, member in ipairs(lapsed) do
    sum = sum + tonumber(string.match(member, '|(%d+)$'))
  end
  redis.call('ZREM', KEYS[2], unpack(lapsed))
  if sum > 0 then  -- HINCRBY refuses "-0"
    redis.call('HINCRBY', KEYS[1], 'reserved', string.format('%.0f', -sum))
  end
end

local totals = redis.call('HMGET', KEYS[1], 'spent', 'reserved')
local spent, reserved = tonumber(totals[1]) or 0, tonumber(totals[2]) or 0
if spent + reserved + amount > limit then
  return {0, spent, reserved}
end

redis.call('ZADD', KEYS[2], now + lease, ARGV[4] .. '|' .. ARGV[1])
reserved = redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return {1, spent, reserved}
