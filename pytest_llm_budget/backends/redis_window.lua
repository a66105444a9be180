-- One bucket's sliding window, kept in Redis as ONE MessagePack blob and changed atomically.
--
-- This is a line-by-line port of pytest_llm_budget/limiting/window.py (WindowState), admission.py (when a
-- charge fits) and correction.py (the learned factor): the same entries, leases, waiters (first
-- come, first served, with overtaking that delays no one), pause, learned factor and clock, the
-- same admission, settling and learning rules. The blob's one-letter fields hold what
-- WindowState.to_json names in full (t: clock); no Python code reads the blob. MessagePack
-- (cmsgpack) rather than cjson because cjson rounds numbers to 14 significant digits, which
-- would blur epoch times. Settled charges are folded into time slots as WindowState._fold does
-- (`fold`), so the blob, and the cost of every call, stay bounded however many charges the
-- window holds.
--
-- KEYS[1]  the bucket's state key ({prefix}:{bucket}:state)
-- ARGV[1]  op: admit | settle | cancel | release | restamp | penalize | observe | calibrate |
--          snapshot | reap
-- ARGV[2]  now (the caller's clock, seconds)      ARGV[3]  '1': use the server's TIME instead
-- ARGV[4]  span (window + margin, seconds)        ARGV[5]  lease_ttl (seconds, > 0)
-- ARGV[6]  window (seconds)
-- ARGV[7…] the op's own arguments (see each op below)
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
local WINDOW = tonumber(ARGV[6])

local raw = redis.call('GET', key)
local st = {}
if raw then st = cmsgpack.unpack(raw) end
local E = st.e or {}  -- entries: {id, time, charge, counts_as_request}
local L = st.l or {}  -- leases: ticket -> {owner, since}
local W = st.w or {}  -- waiters: ticket -> {enqueued, expires, charge}
local P = st.p or 0   -- paused_until
local F = st.f or 1.0 -- the learned factor on the uncertain part of estimates
local Q = st.q or {}  -- probes: ticket -> {time, fixed, uncertain, admit_seq, seen_seq}
local N = st.n or 0   -- the sequence of admissions and first observations
local G = st.g or {}  -- while learning, entries that left: {time, charge}
local STEP_DOWN = 0.3 -- correction.FACTOR_STEP_DOWN
local SLOTS, FOLD_AT, SLOT, PROBES_KEPT = 64, 192, '~slot:', 256 -- window.SLOTS, ...
-- The bucket's clock (WindowState.clock, _tick): the latest `now` it has seen. Callers read
-- their clock before their script runs, so scripts can run out of time order; a late `now` must
-- not be applied to a window that a later one already pruned (it could admit into a full
-- window). Clamping keeps decisions in time order and only ever dates a charge a little later
-- (the safe side).
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

-- An entry's request count: true for a request, a number for a folded slot.
local function nreq(e)
  if e[4] == true then return 1 end
  if e[4] then return e[4] end
  return 0
end

-- WindowState._fold: charges no leased ticket can address, one entry per slot.
local function fold()
  if not (span > 0 and span < math.huge) then return end
  local width = span / SLOTS
  local kept, slots, cells = {}, {}, {}
  for _, e in ipairs(E) do
    if e[4] == true and L[e[1]] then
      kept[#kept + 1] = e
    else
      local cell = math.floor(e[2] / width)
      local s = slots[cell]
      if not s then
        s = {SLOT .. string.format('%d', cell), e[2], e[3], nreq(e)}
        slots[cell] = s
        cells[#cells + 1] = s
      else
        if e[2] > s[2] then s[2] = e[2] end
        s[3] = s[3] + e[3]
        s[4] = s[4] + nreq(e)
      end
    end
  end
  for _, s in ipairs(cells) do kept[#kept + 1] = s end
  table.sort(kept, function(a, b) return a[2] < b[2] end)
  E = kept
end

-- `fold`: only where WindowState.prune runs (at the start of an op), not when saving.
local function prune(folding)
  local horizon = now - span
  local kept = {}
  local learning = next(Q) ~= nil
  for _, e in ipairs(E) do
    if e[2] > horizon then
      kept[#kept + 1] = e
    elseif learning then
      G[#G + 1] = {e[2], e[3]}
    end
  end
  E = kept
  for k, q in pairs(Q) do
    if q[1] <= horizon then Q[k] = nil end
  end
  if #G > 0 and G[1][1] <= horizon - span then
    local g = {}
    for _, x in ipairs(G) do
      if x[1] > horizon - span then g[#g + 1] = x end
    end
    G = g
  end
  for k, w in pairs(W) do
    if w[2] < now then W[k] = nil end
  end
  if folding then
    if #E > FOLD_AT + count(L) then fold() end
    if count(Q) > PROBES_KEPT then
      local all = {}
      for k, q in pairs(Q) do all[#all + 1] = {k, q} end
      table.sort(all, function(a, b) return a[2][4] > b[2][4] end)
      Q = {}
      for i = 1, PROBES_KEPT do Q[all[i][1]] = all[i][2] end
    end
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
  redis.call('SET', key, cmsgpack.pack({e = E, l = L, w = W, p = P, t = now, f = F, q = Q, n = N, g = G}),
    'PX', string.format('%d', ms))
end

local function time_to_free(list, excess, unit)
  local freed = 0
  for _, e in ipairs(list) do
    if unit then freed = freed + nreq(e) else freed = freed + e[3] end
    if freed >= excess then return math.max(e[2] + span - now, 1e-6) end
  end
  if span == math.huge then return 1.0 end
  return math.max(span, 1e-6)
end

-- correction.learned
local function learn(bound, floor, cap)
  if bound >= F then
    F = math.min(cap, bound)
  else
    F = math.max(floor, F - STEP_DOWN * (F - bound))
  end
end

-- admission._plan: when each waiter ahead will be admitted (entries sorted by time).
local function plan_for(tokens, ahead)
  local plan, queued = {}, {}
  for i, e in ipairs(E) do queued[i] = e end
  local total = used()
  local t = now
  for _, w in ipairs(ahead) do
    local excess = total + w - tokens
    if excess > 0 then t = math.max(t, now + time_to_free(queued, excess, false)) end
    plan[#plan + 1] = {t, w}
    queued[#queued + 1] = {false, t, w, false}
    total = total + w
  end
  return plan
end

-- admission._alive
local function alive(plan, t)
  local horizon = t - span
  local a = used()
  for _, e in ipairs(E) do
    if e[2] > horizon then break end
    a = a - e[3]
  end
  for _, p in ipairs(plan) do
    if horizon < p[1] and p[1] <= t then a = a + p[2] end
  end
  return a
end

-- admission._fits
local function fits(tokens, plan, t, charge)
  if alive(plan, t) + charge > tokens then return false end
  for _, p in ipairs(plan) do
    if t < p[1] and p[1] < t + span and alive(plan, p[1]) + charge > tokens then return false end
  end
  return true
end

-- WindowState._answered: the request reached the server by now.
local function answered(ticket, tokens)
  local margin = span - WINDOW
  if margin <= 0 or used() * 2 <= tokens then return end
  for _, e in ipairs(E) do
    if e[1] == ticket and e[4] then
      if now - margin < e[2] then e[2] = now - margin end
      return
    end
  end
end

local function wait_for(tokens, requests, concurrency, poll, charge, ahead)
  if P > now then return P - now, 'paused' end
  table.sort(E, function(a, b) return a[2] < b[2] end)
  if #ahead == 0 then
    local excess = used() + charge - tokens
    if excess > 0 then return time_to_free(E, excess, false), 'tokens' end
  else
    local plan = plan_for(tokens, ahead)
    if not fits(tokens, plan, now, charge) then
      local alone = now + time_to_free(E, used() + charge - tokens, false)
      local last = plan[#plan][1]
      local queued = {}
      for i, e in ipairs(E) do queued[i] = e end
      local total = used()
      for _, p in ipairs(plan) do
        queued[#queued + 1] = {false, p[1], p[2], false}
        total = total + p[2]
      end
      local after = math.max(last, now + time_to_free(queued, total + charge - tokens, false))
      if alone < after and fits(tokens, plan, alone, charge) then return alone - now, 'tokens' end
      return math.max(after - now, 1e-6), 'tokens'
    end
  end
  if requests >= 0 then
    local reqs = {}
    local n = 0
    for _, e in ipairs(E) do
      if nreq(e) > 0 then
        reqs[#reqs + 1] = e
        n = n + nreq(e)
      end
    end
    local excess = n + #ahead + 1 - requests
    if excess > 0 then return time_to_free(reqs, excess, true), 'requests' end
  end
  if concurrency >= 0 and count(L) + 1 > concurrency then return poll, 'concurrency' end
  return 0, ''
end

if op == 'admit' then
  -- ARGV[7] ticket, [8] estimate, [9] owner, [10] tokens, [11] requests (-1: none),
  -- [12] concurrency (-1: none), [13] poll, [14] waiter_grace, [15] uncertain
  local ticket, estimate, owner = ARGV[7], tonumber(ARGV[8]), ARGV[9]
  local tokens, uncertain = tonumber(ARGV[10]), tonumber(ARGV[15] or '0')
  if L[ticket] then  -- a retried admit that already got in
    local charge = -1
    for _, e in ipairs(E) do
      if e[1] == ticket then charge = e[3] end
    end
    return {'1', fmt(L[ticket][2]), charge}
  end
  for k, l in pairs(L) do
    if now - l[2] > lease_ttl then L[k] = nil end
  end
  prune(true)
  -- correction.corrected
  local charge = estimate
  if uncertain > 0 and F ~= 1.0 then
    charge = math.max(1, math.min(tokens, estimate - uncertain + math.ceil(uncertain * F)))
  end
  local waiter = W[ticket]
  local enqueued = now
  if waiter then enqueued = waiter[1] end
  local order = {}
  for k, w in pairs(W) do
    if k ~= ticket and (w[1] < enqueued or (w[1] == enqueued and bytes_lt(k, ticket))) then
      order[#order + 1] = {w[1], k, w[3]}
    end
  end
  table.sort(order, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    return bytes_lt(a[2], b[2])
  end)
  local ahead = {}
  for i, o in ipairs(order) do ahead[i] = o[3] end
  local wait, reason = wait_for(tokens, tonumber(ARGV[11]), tonumber(ARGV[12]),
    tonumber(ARGV[13]), charge, ahead)
  if wait > 0 then
    W[ticket] = {enqueued, now + wait + tonumber(ARGV[14]), charge}
    save()
    local reply = {'0', fmt(wait), reason}
    if reason == 'concurrency' then
      for _, l in pairs(L) do reply[#reply + 1] = l[1] end
    end
    return reply
  end
  W[ticket] = nil
  E[#E + 1] = {ticket, now, charge, true}
  L[ticket] = {owner, now}
  if uncertain > 0 then
    N = N + 1
    Q[ticket] = {now, estimate - uncertain, uncertain, N, 0}
  end
  save()
  return {'1', fmt(now), charge}
elseif op == 'settle' then
  -- ARGV[7] ticket, [8] estimate, [9] charge, [10] refund ('1'/'0'), [11] floor, [12] cap,
  -- [13] tokens.
  -- Without refund, charging max(entry, estimate + debt) instead of adding the debt gives
  -- WindowState.settle's result and makes a retried settle harmless; with refund the entry
  -- becomes the charge. Pruning first: a reservation that already left the window is charged
  -- its overrun from now.
  local ticket, estimate, charge = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
  prune(true)
  L[ticket] = nil
  answered(ticket, tonumber(ARGV[13]))
  if ARGV[10] == '1' then
    local q = Q[ticket]
    Q[ticket] = nil
    if q and q[3] > 0 then learn((charge - q[2]) / q[3], tonumber(ARGV[11]), tonumber(ARGV[12])) end
    for _, e in ipairs(E) do
      if e[1] == ticket then
        local delta = charge - e[3]
        e[3] = charge
        save()
        return delta
      end
    end
  end
  local debt = math.max(0, charge - estimate)
  if debt == 0 then
    save()
    return 0
  end
  for _, e in ipairs(E) do
    if e[1] == ticket then
      if e[3] < estimate + debt then e[3] = estimate + debt end
      save()
      return debt
    end
  end
  local id = ticket .. ':debt'
  local found = false
  for _, e in ipairs(E) do
    if e[1] == id then found = true end
  end
  if not found then E[#E + 1] = {id, now, debt, false} end
  save()
  return debt
elseif op == 'cancel' then
  -- ARGV[7] ticket: its request never left (connection failed); take its charge back
  local ticket = ARGV[7]
  prune(true)
  L[ticket] = nil
  W[ticket] = nil
  Q[ticket] = nil
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
  -- ARGV[7] ticket
  L[ARGV[7]] = nil
  W[ARGV[7]] = nil
  save()
  return 0
elseif op == 'restamp' then
  -- ARGV[7] ticket: its request left only now; date its charge from now (window.restamp)
  local ticket = ARGV[7]
  prune(true)
  for i, e in ipairs(E) do
    if e[1] == ticket and e[4] then
      if now > e[2] then
        table.remove(E, i)
        e[2] = now
        local j = #E + 1
        while j > 1 and E[j - 1][2] > now do j = j - 1 end
        table.insert(E, j, e)
        if Q[ticket] then Q[ticket][1] = now end
      end
      break
    end
  end
  save()
  return 0
elseif op == 'penalize' then
  -- ARGV[7] ticket, [8] tokens, [9] pause_until (the caller's clock; shifted to the server's)
  local tokens, pause_until = tonumber(ARGV[8]), tonumber(ARGV[9])
  if tokens > 0 then E[#E + 1] = {ARGV[7] .. ':429', now, tokens, false} end
  if pause_until > 0 then pause_until = pause_until + shift end
  if pause_until > P then P = pause_until end
  save()
  return 0
elseif op == 'observe' or op == 'calibrate' then
  -- ARGV[7] ticket, [8] server_used, [9] server_limit (0: unknown), [10] window, [11] floor,
  -- [12] cap, [13] reset_s ('': unknown), [14] tokens. WindowState.observe (calibrate: no limit).
  local ticket, server_used = ARGV[7], tonumber(ARGV[8])
  local server_limit = tonumber(ARGV[9] or '0')
  local window = tonumber(ARGV[10] or '1')
  local floor, cap = tonumber(ARGV[11] or '0.5'), tonumber(ARGV[12] or '2')
  local reset_s = tonumber(ARGV[13] or '')
  prune(true)
  answered(ticket, tonumber(ARGV[14]))
  local probe = Q[ticket]
  local gap, arrived
  if not probe then
    gap = server_used - used()
  else
    arrived = math.min(now, probe[1] + (span - window))
    if probe[5] == 0 then
      N = N + 1
      probe[5] = N
    end
    local before = 0
    for _, x in ipairs(G) do
      if x[1] > probe[1] - span then before = before + x[2] end
    end
    gap = server_used - used() - before
  end
  if gap > 0 then
    E[#E + 1] = {ticket .. ':calibration', now, gap, false}
    local uncertain = 0
    for _, q in pairs(Q) do uncertain = uncertain + q[3] end
    if uncertain > 0 then learn(F + gap / uncertain, floor, cap) end
    save()
    return gap
  end
  if probe and server_limit > 0 and probe[3] > 0 then
    local rate = server_limit / window
    if reset_s and reset_s >= 0.9 * window and server_used < 0.85 * server_limit then rate = 0 end
    local horizon = arrived - window
    local known = {}
    for k, q in pairs(Q) do
      if k ~= ticket and q[5] > 0 and q[5] < probe[4] and q[1] > horizon then
        known[#known + 1] = q
      end
    end
    table.sort(known, function(a, b)
      if a[1] ~= b[1] then return a[1] > b[1] end
      return a[4] > b[4]
    end)
    table.insert(known, 1, probe)
    local fixed, uncertain, bound = 0, 0, math.huge
    for _, q in ipairs(known) do
      fixed = fixed + q[2]
      uncertain = uncertain + q[3]
      if uncertain > 0 then
        local drain = rate * math.max(0, arrived - q[1])
        bound = math.min(bound, (server_used + drain - fixed) / uncertain)
      end
    end
    if bound < F then learn(math.max(0, bound), floor, cap) end
  end
  save()
  return 0
elseif op == 'snapshot' then
  prune(true)
  local requests = 0
  for _, e in ipairs(E) do requests = requests + nreq(e) end
  return {used(), requests, count(L), count(W), fmt(math.max(0, P - now)), fmt(F)}
elseif op == 'reap' then
  -- ARGV[7…] owners whose process is known to be dead
  local dead = {}
  for i = 7, #ARGV do dead[ARGV[i]] = true end
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
