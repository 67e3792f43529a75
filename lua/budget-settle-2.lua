--[[ budget-settle: end a reservation on one period of a dollar budget and add what the call
really cost; each alert threshold the spending reaches fires once per period across the
fleet. With no spend this gives a reservation back; with no reservation and no spend it
only reads the totals. Lapsed reservations give their amounts back as in
budget-reserve-2.lua (at most 100 per call).

KEYS  as for budget-reserve-2.lua: [1] the period's totals  [2] its live reservations
ARGV  [1] the reservation ("<id>|<nano-dollars>", or "" for none)
      [2] spend to add (nano-dollars, 0 for none)  [3] how long the keys live (seconds)
      then pairs: an alert's percent, and the spend (nano-dollars) at which it fires
Returns {spent, reserved, held, fired_1 .. fired_k}: held = 1 when the reservation was still
live (0: it had lapsed or was already ended), fired = the percents of the alerts this call
fired. ]]

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local held = 0
if ARGV[1] ~= '' and redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then
  held = 1
  local amount = string.match(ARGV[1], '|(%d+)$')
  if tonumber(amount) > 0 then  -- HINCRBY refuses "-0": a hold of $0 has nothing to give back
    redis.call('HINCRBY', KEYS[1], 'reserved', '-' .. amount)
  end
end

local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
if #lapsed > 0 then
  local sum = 0
  for _, member in ipairs(lapsed) do
    sum = sum + tonumber(string.match(member, '|(%d+)$'))
  end
  redis.call('ZREM', KEYS[2], unpack(lapsed))
  if sum > 0 then
    redis.call('HINCRBY', KEYS[1], 'reserved', string.format('%.0f', -sum))
  end
end

local reply = {0, 0, held}
local totals = redis.call('HMGET', KEYS[1], 'spent', 'reserved')
reply[1], reply[2] = tonumber(totals[1]) or 0, tonumber(totals[2]) or 0
if tonumber(ARGV[2]) > 0 then
  reply[1] = redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  for i = 4, #ARGV, 2 do
    if reply[1] >= tonumber(ARGV[i + 1]) and redis.call('HSETNX', KEYS[1], 'a' .. ARGV[i], '1') == 1 then
      reply[#reply + 1] = tonumber(ARGV[i])
    end
  end
end
return reply
