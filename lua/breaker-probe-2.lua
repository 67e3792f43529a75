--[[ breaker-probe: one pod of the fleet probes a half-open circuit breaker per round, so
the fleet sends `half_open_probes` probes, not that many per pod. The first pod to ask
holds the round until its probes end (publishing the verdict ends it: breaker-publish) or
the lease lapses (a pod that died mid-round); each probe of the holder renews the lease.
A pod that has not seen the fleet's latest record is told it instead of being given a
round: the round it asks for may already have ended with a verdict (closed, open again).

KEYS  [1] the breaker's prober key  [2] the fleet's breaker hash
ARGV  [1] the asking pod's id  [2] lease in milliseconds  [3] the breaker's name
      [4] the record the asking pod knows for this breaker ('' if none)
Returns {1} when the asking pod holds the round, {0, lease left in ms} when another pod
does, {2, record} when the fleet's record is news to the asking pod. ]]

local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1}
end
if holder then return {0, redis.call('PTTL', KEYS[1])} end
local record = redis.call('HGET', KEYS[2], ARGV[3])
if record and record ~= ARGV[4] and string.sub(record, 1, 10) ~= 'half_open|' then
  return {2, record}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1}
