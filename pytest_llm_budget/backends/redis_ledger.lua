-- Cost ledger (see backends/ledger.py), one hash per ledger: spent, refused, touched, h:<id>.
-- Amounts are whole nano-dollars. KEYS[1] = the ledger's key.
-- ARGV: op, now, idle_ttl_seconds, then per op:
--   hold    hold_id amount cap(-1 = none)  -> {admitted 0/1, spent, held}
--   settle  hold_id actual                 -> {spent, held}
--   state                                  -> {spent, held, refused, touched, id1, amount1, ...}
local key = KEYS[1]
local op = ARGV[1]
local now = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])

local touched = tonumber(redis.call('HGET', key, 'touched') or '0')
if touched > 0 and now - touched > ttl then
  redis.call('DEL', key)
end
redis.call('HSET', key, 'touched', ARGV[2])
redis.call('PEXPIRE', key, math.ceil(ttl * 1000))

local spent = tonumber(redis.call('HGET', key, 'spent') or '0')
local held = 0
local holds = {}
local all = redis.call('HGETALL', key)
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 'h:' then
    held = held + tonumber(all[i + 1])
    table.insert(holds, string.sub(all[i], 3))
    table.insert(holds, all[i + 1])
  end
end

if op == 'hold' then
  local amount = tonumber(ARGV[5])
  local cap = tonumber(ARGV[6])
  if cap >= 0 and spent + held + amount > cap then
    redis.call('HINCRBY', key, 'refused', 1)
    return {0, tostring(spent), tostring(held)}
  end
  redis.call('HINCRBY', key, 'h:' .. ARGV[4], amount)
  return {1, tostring(spent), tostring(held)}
elseif op == 'settle' then
  local mine = tonumber(redis.call('HGET', key, 'h:' .. ARGV[4]) or '0')
  redis.call('HDEL', key, 'h:' .. ARGV[4])
  local actual = tonumber(ARGV[5])
  if actual > 0 then
    spent = tonumber(redis.call('HINCRBY', key, 'spent', actual))
  end
  return {tostring(spent), tostring(held - mine)}
elseif op == 'state' then
  local refused = redis.call('HGET', key, 'refused') or '0'
  local out = {tostring(spent), tostring(held), refused, ARGV[2]}
  for _, v in ipairs(holds) do table.insert(out, v) end
  return out
end
return redis.error_reply('unknown ledger op ' .. tostring(op))
