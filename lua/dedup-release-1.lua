--[[ dedup-release: a pod gives up its claim on a shared call without an answer to share
(the call failed, or its answer is not for sharing); a waiting pod then makes the call.

KEYS  [1] the request's claim
ARGV  [1] the releasing pod's token
Returns 1 when released, 0 when the claim was not this pod's. ]]

if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
