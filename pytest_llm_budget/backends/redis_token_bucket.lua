-- One token-bucket bucket (requests, input and output tokens), kept in Redis as ONE MessagePack
-- blob and changed atomically.
--
-- This is a line-by-line port of pytest_llm_budget/limiting/token_bucket.py (TokenBucketState):
-- the same spent amounts per dimension, leases with their charges, strictly first-come-first-
-- served waiters, pause, learned input factor and output ratio, and clock. The blob's one-letter
-- fields hold what TokenBucketState.to_json names in full; no Python code reads the blob.
--
-- KEYS[1]  the bucket's key ({prefix}:{bucket}:tb)
-- ARGV[1]  op: admit | settle | cancel | release | penalize | observe | snapshot | reap
-- ARGV[2]  now (the caller's clock, seconds)      ARGV[3]  '1': use the server's TIME instead
-- ARGV[4]  span (window + margin, seconds)        ARGV[5]  lease_ttl (seconds, > 0)
-- ARGV[6]  capacity of requests, [7] of input tokens, [8] of output tokens (-1: not limited)
-- ARGV[9]  '1': charge max_tokens at admission (TokenBucketLimits.charge_max_tokens)
-- ARGV[10…] the op's own arguments (see each op below)
--
-- Times are returned as strings ('%.17g'): Redis would truncate a Lua number to an integer.
-- The key expires (PX) once every dimension has refilled, the pause is over, the newest lease
-- is past lease_ttl and every waiter has expired, plus 60 s: a missing key is a full bucket.

local key = KEYS[1]
local op = ARGV[1]
local now = tonumber(ARGV[2])
local shift = 0
if ARGV[3] == '1' then
  local t = redis.call('TIME')
  local server_now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  shift = server_now - now
  now = server_now
end
local span = tonumber(ARGV[4])
local lease_ttl = tonumber(ARGV[5])
local CAPS = {}
for d = 1, 3 do
  local cap = tonumber(ARGV[5 + d])
  if cap >= 0 then CAPS[d] = cap else CAPS[d] = false end
end
local CHARGE_MAX = ARGV[9] == '1'
local DIMENSIONS = {'requests', 'input_tokens', 'output_tokens'}
local EPS = 1e-6  -- token_bucket._EPS
local RATIO_FLOOR = 0.05     -- token_bucket.RATIO_FLOOR
local RATIO_STEP_DOWN = 0.3  -- token_bucket.RATIO_STEP_DOWN
local STEP_DOWN = 0.3        -- correction.FACTOR_STEP_DOWN

local raw = redis.call('GET', key)
local st = {}
if raw then st = cmsgpack.unpack(raw) end
local S = st.s or {0, 0, 0} -- spent per dimension, as of the clock
local L = st.l or {}        -- leases: ticket -> {owner, since, input, max_tokens, output_charge,
                            --                    expected_output, fixed, uncertain}
local W = st.w or {}        -- waiters: ticket -> {enqueued, expires, input, output_charge, expected}
local P = st.p or 0         -- paused_until
local F = st.f or 1.0       -- the learned factor on the uncertain part of input estimates
local R = st.r or 1.0       -- the learned ratio of output produced to max_tokens
local T = st.t or 0         -- the clock (TokenBucketState.clock)
if T > now then now = T end

local function fmt(x)
  return string.format('%.17g', x)
end

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

-- Python compares str by code point; for UTF-8 that is byte order (Lua '<' follows the locale).
local function bytes_lt(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

-- TokenBucketState._tick
local function tick()
  if now > T then
    for d = 1, 3 do
      local cap = CAPS[d]
      if (not cap) or S[d] <= 0 then
        S[d] = 0
      elseif T ~= 0 then
        S[d] = math.max(0, S[d] - cap / span * (now - T))
      else
        S[d] = 0
      end
    end
    T = now
    for k, w in pairs(W) do
      if w[2] < now then W[k] = nil end
    end
  end
end

local function in_flight_output()
  local e = 0
  for _, l in pairs(L) do e = e + l[6] end
  return e
end

-- TokenBucketState._take
local function take(amounts)
  for d = 1, 3 do
    if CAPS[d] and amounts[d] ~= 0 then S[d] = math.max(0, S[d] + amounts[d]) end
  end
end

local function save()
  local life = 0
  for d = 1, 3 do
    if CAPS[d] and CAPS[d] > 0 and S[d] > 0 then
      local refill = S[d] / CAPS[d] * span
      if refill > life then life = refill end
    end
  end
  if P - now > life then life = P - now end
  for _, l in pairs(L) do
    if l[2] + lease_ttl - now > life then life = l[2] + lease_ttl - now end
  end
  for _, w in pairs(W) do
    if w[2] - now > life then life = w[2] - now end
  end
  local ms = math.ceil((life + 60) * 1000)
  redis.call('SET', key, cmsgpack.pack({s = S, l = L, w = W, p = P, f = F, r = R, t = T}),
    'PX', string.format('%d', ms))
end

-- correction.learned
local function learn(bound, floor, cap)
  if bound >= F then
    F = math.min(cap, bound)
  else
    F = math.max(floor, F - STEP_DOWN * (F - bound))
  end
end

-- token_bucket._learned_ratio
local function learn_ratio(seen)
  if seen >= R then
    R = math.min(1.0, seen)
  else
    R = math.max(RATIO_FLOOR, R - RATIO_STEP_DOWN * (R - seen))
  end
end

-- TokenBucketState._wait_for
local function wait_for(charge, out_charge, ahead, poll, concurrency)
  if P > now then return P - now, 'paused' end
  local spent = {S[1], S[2], S[3]}
  local in_flight = in_flight_output()
  local t = 0
  local reason = ''
  local queue = {}
  for i, w in ipairs(ahead) do queue[i] = {w[3], w[4], w[5]} end
  queue[#queue + 1] = {charge, out_charge, 0}
  for _, item in ipairs(queue) do
    local wait, why = 0, ''
    local needs = {1, item[1], item[2]}
    for d = 1, 3 do
      local cap = CAPS[d]
      if cap then
        local excess, drainable
        if d == 3 and not CHARGE_MAX then
          excess = spent[3] + in_flight + 1 - cap
          drainable = spent[3]
        else
          excess = spent[d] + needs[d] - cap
          drainable = spent[d]
        end
        if excess > EPS then
          local dt
          if excess > drainable + EPS then dt = poll else dt = excess / (cap / span) end
          if dt > wait then
            wait = dt
            why = DIMENSIONS[d]
          end
        end
      end
    end
    if wait > 0 then
      t = t + wait
      reason = why
      for d = 1, 3 do
        if CAPS[d] then spent[d] = math.max(0, spent[d] - CAPS[d] / span * wait) end
      end
    end
    for d = 1, 3 do
      if CAPS[d] then spent[d] = spent[d] + needs[d] end
    end
    in_flight = in_flight + item[3]
  end
  if t > 0 then return math.max(t, 1e-6), reason end
  if concurrency >= 0 and count(L) + 1 > concurrency then return poll, 'concurrency' end
  return 0, ''
end

if op == 'admit' then
  -- ARGV[10] ticket, [11] estimate, [12] owner, [13] uncertain, [14] max_tokens,
  -- [15] concurrency (-1: none), [16] poll, [17] waiter_grace
  local ticket, estimate, owner = ARGV[10], tonumber(ARGV[11]), ARGV[12]
  local uncertain, declared = tonumber(ARGV[13]), math.max(0, tonumber(ARGV[14]))
  if L[ticket] then  -- a retried admit that already got in
    return {'1', fmt(L[ticket][2]), L[ticket][3]}
  end
  for k, l in pairs(L) do
    if now - l[2] > lease_ttl then L[k] = nil end
  end
  tick()
  local charge = estimate
  if uncertain > 0 and F ~= 1.0 then
    charge = math.max(1, math.min(CAPS[2] or estimate, estimate - uncertain + math.ceil(uncertain * F)))
  end
  local out_cap = CAPS[3]
  local out_charge, expected = 0, 0
  if CHARGE_MAX then
    out_charge = declared
    if out_cap and out_cap < declared then out_charge = out_cap end
  else
    expected = math.ceil(declared * R)
    if out_cap and out_cap < expected then expected = out_cap end
  end
  local waiter = W[ticket]
  local enqueued = now
  if waiter then enqueued = waiter[1] end
  local order = {}
  for k, w in pairs(W) do
    if k ~= ticket and (w[1] < enqueued or (w[1] == enqueued and bytes_lt(k, ticket))) then
      order[#order + 1] = {k, w}
    end
  end
  table.sort(order, function(a, b)
    if a[2][1] ~= b[2][1] then return a[2][1] < b[2][1] end
    return bytes_lt(a[1], b[1])
  end)
  local ahead = {}
  for i, o in ipairs(order) do ahead[i] = o[2] end
  local wait, reason = wait_for(charge, out_charge, ahead, tonumber(ARGV[16]), tonumber(ARGV[15]))
  if wait > 0 then
    W[ticket] = {enqueued, now + wait + tonumber(ARGV[17]), charge, out_charge, expected}
    save()
    local reply = {'0', fmt(wait), reason}
    if reason == 'concurrency' then
      for _, l in pairs(L) do reply[#reply + 1] = l[1] end
    end
    return reply
  end
  W[ticket] = nil
  take({1, charge, out_charge})
  local fixed = 0
  if uncertain > 0 then fixed = estimate - uncertain end
  L[ticket] = {owner, now, charge, declared, out_charge, expected, fixed, math.max(0, uncertain)}
  save()
  return {'1', fmt(now), charge, fmt(S[1]), fmt(S[2]), fmt(S[3] + in_flight_output())}
elseif op == 'settle' then
  -- ARGV[10] ticket, [11] input charge, [12] refund ('1'/'0'), [13] output_tokens ('': unknown),
  -- [14] factor floor, [15] factor cap
  local ticket, actual = ARGV[10], tonumber(ARGV[11])
  tick()
  local lease = L[ticket]
  if not lease then
    save()
    return 0
  end
  L[ticket] = nil
  local charged, declared, out_charged = lease[3], lease[4], lease[5]
  local fixed, uncertain = lease[7], lease[8]
  local delta
  if ARGV[12] == '1' then
    if uncertain > 0 then learn((actual - fixed) / uncertain, tonumber(ARGV[14]), tonumber(ARGV[15])) end
    delta = actual - charged
  else
    delta = math.max(0, actual - charged)
  end
  local reported = tonumber(ARGV[13] or '')
  local produced = declared
  if reported then
    produced = math.max(0, reported)
    if declared > 0 then learn_ratio(produced / declared) end
  end
  take({0, delta, produced - out_charged})
  save()
  return delta
elseif op == 'cancel' then
  -- ARGV[10] ticket: its request never left (connection failed); give its charges back
  local ticket = ARGV[10]
  tick()
  W[ticket] = nil
  local lease = L[ticket]
  if not lease then
    save()
    return 0
  end
  L[ticket] = nil
  take({-1, -lease[3], -lease[5]})
  save()
  return lease[3]
elseif op == 'release' then
  -- ARGV[10] ticket
  L[ARGV[10]] = nil
  W[ARGV[10]] = nil
  save()
  return 0
elseif op == 'penalize' then
  -- ARGV[10] tokens, [11] pause_until (the caller's clock; shifted to the server's)
  local tokens, pause_until = tonumber(ARGV[10]), tonumber(ARGV[11])
  tick()
  if tokens > 0 then take({0, tokens, 0}) end
  if pause_until > 0 then pause_until = pause_until + shift end
  if pause_until > P then P = pause_until end
  save()
  return 0
elseif op == 'observe' then
  -- ARGV[10] server_used, [11] dimension index (1 requests, 2 input, 3 output)
  local server_used, d = tonumber(ARGV[10]), tonumber(ARGV[11])
  tick()
  if not CAPS[d] then
    save()
    return 0
  end
  local gap = server_used - math.ceil(S[d])
  if gap <= 0 then
    save()
    return 0
  end
  S[d] = S[d] + gap
  save()
  return gap
elseif op == 'snapshot' then
  tick()
  save()  -- the refill and expired waiters, as TokenBucketState.snapshot keeps them
  local reply = {count(L), count(W), fmt(math.max(0, P - now)), fmt(F), fmt(in_flight_output())}
  for d = 1, 3 do reply[#reply + 1] = fmt(S[d]) end
  return reply
elseif op == 'reap' then
  -- ARGV[10…] owners whose process is known to be dead
  local dead = {}
  for i = 10, #ARGV do dead[ARGV[i]] = true end
  local n = 0
  for k, l in pairs(L) do
    if dead[l[1]] then
      L[k] = nil
      n = n + 1
    end
  end
  if n > 0 then save() end
  return n
end
return redis.error_reply('llm-budget: unknown op ' .. tostring(op))
