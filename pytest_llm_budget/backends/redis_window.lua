-- One bucket's sliding window, kept in Redis as ONE MessagePack blob and changed atomically.
--
-- This is a line-by-line port of pytest_llm_budget/window.py (WindowState): the same entries,
-- leases, FIFO waiters and pause, the same admission rules. MessagePack (cmsgpack) rather than
-- cjson because cjson rounds numbers to 14 significant digits, which would blur epoch times.
--
-- KEYS[1]  the bucket's state key ({prefix}:{bucket}:state)
-- ARGV[1]  op: admit | settle | cancel | release | penalize | calibrate | snapshot | reap
-- ARGV[2]  now (the caller's clock, seconds)      ARGV[3]  '1': use the server's TIME instead
-- ARGV[4]  span (window + margin, seconds)        ARGV[5]  lease_ttl (seconds, > 0)
-- ARGV[6…] the op's own arguments (see each op below)
--
-- Times are returned as strings ('%.17g'): Redis would truncate a Lua number to an integer.
-- The key expires (PX) when nothing in it can matter any more: after 2 spans, the pause, the
-- newest lease's lease_ttl and every waiter's expiry, plus 60 s.

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

local raw = redis.call('GET', key)
local st = {}
if raw then st = cmsgpack.unpack(raw) end
local E = st.e or {}  -- entries: {id, time, charge, counts_as_request}
local L = st.l or {}  -- leases: ticket -> {owner, since}
local W = st.w or {}  -- waiters: ticket -> {enqueued, expires, estimate}
local P = st.p or 0   -- paused_until
-- The bucket's clock: the latest `now` it has seen. Callers read their clock before their
-- script runs, so scripts can run out of time order; a late `now` must not be applied to a
-- window that a later one already pruned (it could admit into a full window). Clamping keeps
-- decisions in time order and only ever dates a charge a little later (the safe side).
if st.t and st.t > now then now = st.t end

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

local function prune()
  local horizon = now - span
  local kept = {}
  for _, e in ipairs(E) do
    if e[2] > horizon then kept[#kept + 1] = e end
  end
  E = kept
  for k, w in pairs(W) do
    if w[2] < now then W[k] = nil end
  end
end

local function used()
  local s = 0
  for _, e in ipairs(E) do s = s + e[3] end
  return s
end

local function save()
  prune()  -- nothing older than the span matters to any rule; keep the blob small
  local life = 2 * span
  if P - now > life then life = P - now end
  for _, l in pairs(L) do
    if l[2] + lease_ttl - now > life then life = l[2] + lease_ttl - now end
  end
  for _, w in pairs(W) do
    if w[2] - now > life then life = w[2] - now end
  end
  local ms = math.ceil((life + 60) * 1000)
  redis.call('SET', key, cmsgpack.pack({e = E, l = L, w = W, p = P, t = now}), 'PX',
    string.format('%d', ms))
end

local function time_to_free(list, excess, unit)
  local freed = 0
  for _, e in ipairs(list) do
    if unit then freed = freed + 1 else freed = freed + e[3] end
    if freed >= excess then return math.max(e[2] + span - now, 1e-6) end
  end
  if span == math.huge then return 1.0 end
  return math.max(span, 1e-6)
end

local function wait_for(tokens, requests, concurrency, poll, estimate, ahead_tokens, ahead_count)
  if P > now then return P - now, 'paused' end
  table.sort(E, function(a, b) return a[2] < b[2] end)
  local excess = used() + ahead_tokens + estimate - tokens
  if excess > 0 then return time_to_free(E, excess, false), 'tokens' end
  if requests >= 0 then
    local reqs = {}
    for _, e in ipairs(E) do
      if e[4] then reqs[#reqs + 1] = e end
    end
    excess = #reqs + ahead_count + 1 - requests
    if excess > 0 then return time_to_free(reqs, excess, true), 'requests' end
  end
  if concurrency >= 0 and count(L) + 1 > concurrency then return poll, 'concurrency' end
  return 0, ''
end

if op == 'admit' then
  -- ARGV[6] ticket, [7] estimate, [8] owner, [9] tokens, [10] requests (-1: none),
  -- [11] concurrency (-1: none), [12] poll, [13] waiter_grace
  local ticket, estimate, owner = ARGV[6], tonumber(ARGV[7]), ARGV[8]
  if L[ticket] then return {'1', fmt(L[ticket][2])} end  -- a retried admit that already got in
  for k, l in pairs(L) do
    if now - l[2] > lease_ttl then L[k] = nil end
  end
  prune()
  local waiter = W[ticket]
  local enqueued = now
  if waiter then enqueued = waiter[1] end
  local ahead_tokens, ahead_count = 0, 0
  for k, w in pairs(W) do
    if k ~= ticket and (w[1] < enqueued or (w[1] == enqueued and bytes_lt(k, ticket))) then
      ahead_tokens = ahead_tokens + w[3]
      ahead_count = ahead_count + 1
    end
  end
  local wait, reason = wait_for(tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]),
    tonumber(ARGV[12]), estimate, ahead_tokens, ahead_count)
  if wait > 0 then
    W[ticket] = {enqueued, now + wait + tonumber(ARGV[13]), estimate}
    save()
    local reply = {'0', fmt(wait), reason}
    if reason == 'concurrency' then
      for _, l in pairs(L) do reply[#reply + 1] = l[1] end
    end
    return reply
  end
  W[ticket] = nil
  E[#E + 1] = {ticket, now, estimate, true}
  L[ticket] = {owner, now}
  save()
  return {'1', fmt(now)}
elseif op == 'settle' then
  -- ARGV[6] ticket, [7] estimate, [8] charge. Charging max(entry, estimate + debt) instead of
  -- adding the debt gives WindowState.settle's result and makes a retried settle harmless.
  -- Pruning first: a reservation that already left the window is charged its overrun from now.
  local ticket, estimate, charge = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
  prune()
  L[ticket] = nil
  local debt = math.max(0, charge - estimate)
  for _, e in ipairs(E) do
    if e[1] == ticket then
      if e[3] < estimate + debt then e[3] = estimate + debt end
      save()
      return debt
    end
  end
  if debt > 0 then
    local id = ticket .. ':debt'
    local found = false
    for _, e in ipairs(E) do
      if e[1] == id then found = true end
    end
    if not found then E[#E + 1] = {id, now, debt, false} end
  end
  save()
  return debt
elseif op == 'cancel' then
  -- ARGV[6] ticket: its request never left (connection failed); take its charge back
  local ticket = ARGV[6]
  L[ticket] = nil
  W[ticket] = nil
  local freed = 0
  for i, e in ipairs(E) do
    if e[1] == ticket and e[4] then
      freed = e[3]
      table.remove(E, i)
      break
    end
  end
  save()
  return freed
elseif op == 'release' then
  -- ARGV[6] ticket
  L[ARGV[6]] = nil
  W[ARGV[6]] = nil
  save()
  return 0
elseif op == 'penalize' then
  -- ARGV[6] ticket, [7] tokens, [8] pause_until (the caller's clock; shifted to the server's)
  local tokens, pause_until = tonumber(ARGV[7]), tonumber(ARGV[8])
  if tokens > 0 then E[#E + 1] = {ARGV[6] .. ':429', now, tokens, false} end
  if pause_until > 0 then pause_until = pause_until + shift end
  if pause_until > P then P = pause_until end
  save()
  return 0
elseif op == 'calibrate' then
  -- ARGV[6] ticket, [7] server_used
  prune()
  local gap = tonumber(ARGV[7]) - used()
  if gap <= 0 then
    save()
    return 0
  end
  E[#E + 1] = {ARGV[6] .. ':calibration', now, gap, false}
  save()
  return gap
elseif op == 'snapshot' then
  prune()
  local requests = 0
  for _, e in ipairs(E) do
    if e[4] then requests = requests + 1 end
  end
  return {used(), requests, count(L), count(W), fmt(math.max(0, P - now))}
elseif op == 'reap' then
  -- ARGV[6…] owners whose process is known to be dead
  local dead = {}
  for i = 6, #ARGV do dead[ARGV[i]] = true end
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
