--[[ dedup-publish: the pod that made a shared call publishes its answer for the pods
waiting on the same request, and gives up its claim, in one step (so a waiter never sees
the claim gone before the answer is there).

KEYS  [1] the request's claim  [2] the request's answer (a hash)
ARGV  [1] the publishing pod's token  [2] status  [3] headers (JSON)  [4] body
      [5] how long the answer is kept, in milliseconds
Returns 1 when published, 0 when the claim was no longer this pod's (it expired and
another pod took it: that pod publishes). ]]

if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 's', ARGV[2], 'h', ARGV[3], 'b', ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('DEL', KEYS[1])
return 1
