--[[ spend-add: add a call's cost to one day's spend records, for reports.

KEYS  [1] the day's records (a hash: model, feature, user and team joined by "\31" →
      nano-dollars)
ARGV  [1] the labels (joined)  [2] cost (nano-dollars)  [3] how long the day is kept (seconds)
Returns the labels' total for the day. ]]

local total = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return total
