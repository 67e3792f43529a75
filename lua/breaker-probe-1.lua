--[[ breaker-probe: one pod of the fleet probes a half-open circuit breaker per round, so
the fleet never sends a herd of probes. The first pod to ask holds the round until its
probes end (it then deletes the key) or the lease runs out (a pod that died mid-round).

KEYS  [1] the breaker's prober key
ARGV  [1] the asking pod's id  [2] lease in milliseconds
Returns 1 when the asking pod holds the round, 0 when another pod does. ]]

local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return 1 end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
