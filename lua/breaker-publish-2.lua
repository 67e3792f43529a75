--[[ breaker-publish: write one pod's breaker transition for the fleet and, if that pod
held the breaker's half-open round, end the round in the same step, so that no pod can
find the round free before the verdict is readable (it would probe a round of its own).

KEYS  [1] the fleet's breaker hash  [2] the breaker's prober key
ARGV  [1] the breaker's name  [2] the record to write ('' to only end the round)
      [3] the publishing pod's id
Returns 1 when a round this pod held was ended, else 0. ]]

if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
if redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
