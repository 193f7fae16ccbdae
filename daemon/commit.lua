-- commit.lua - the atomic commit of a batch of leads (SPEC section 4).
-- Loaded once, called with EVALSHA <sha> 0 ARGV... by leadrouterd.
-- The daemon has decided and picked each lead from its cached view of the
-- caps, queue depths and rotation state; this script checks that view
-- against Redis and writes. One call commits every lead of a batch; each
-- lead is committed whole or not at all. Every check of a lead comes
-- before its writes: a Lua error does not undo writes.
--
-- ARGV (built by daemon/commit.c):
--  1 prefix  2 mode (stream|list|return)  3 group  4 consumer
--  5 record_ttl  6 audit_maxlen  7 max_attempts  8 stats hour (YYYYMMDDHH UTC)
--  9 dedup: action then keys, comma-separated ("same_dealer,phone,email")
-- 10 dedup window (s)  11 number of leads  12 list mode: the processing list
-- 13 the dealers the batch picks, msgpack: an array of
--    [id, cap_h, cap_d, cap_w, cap_m, bucket_h, bucket_d, bucket_w,
--     bucket_m, max_pending] (buckets in the dealer's local time)
-- 14 the rotation fields the batch moves, msgpack: a flat array of
--    key, dealer id pairs
-- then 3 per lead: meta (msgpack), payload (raw msgpack), head (raw)
--   meta = [ref, id, attempt, source, niche, outcome, error, flags,
--           picked, rules, phone, email, passed, had, rr]
--   (ref: stream entry id; outcome: "route", an unassigned reason, or
--    "dead" with error; head: msgpack map header + fixed assignment fields;
--    flags: 'h' hot grade, 'S' same_dealer settled by the daemon; picked:
--    the dealers picked, as positions in ARGV[13]; rules: their `rule`;
--    passed: the compact "dealer=why" list of the others, for the audit;
--    had: dealers that had the lead already, comma list; rr: the lead's
--    rotation moves, a flat array of (position in ARGV[14], delta))
-- Reply: one entry per lead: "assigned:<dealers>", "unassigned:<reason>",
-- "dead", "stale" (no longer pending: committed already), "not_owner"
-- (another consumer took it over), "redo" (a picked dealer's cap or queue
-- is full in Redis: nothing written, the daemon decides again with the
-- counters below) or "redo:same:<dealer>" (dedup same_dealer names a prior
-- dealer); then two arrays: the counters of every dealer the batch checked,
-- flat [position, used_h, used_d, used_w, used_m, queue_len (-1 unknown)],
-- and the rotation values after the batch of every field in ARGV[14],
-- flat [position, value].
-- A lead that passes the fence has not been committed: its commit would
-- have acknowledged it in the same atomic step. So sending a commit again
-- after a lost reply is safe: the second one finds "stale".

local A = ARGV
local p, mode, group, consumer = A[1], A[2], A[3], A[4]
local audit_maxlen, max_attempts = tonumber(A[6]), tonumber(A[7])
local hour, dedup, window, nleads, plist = A[8], A[9], tonumber(A[10]), tonumber(A[11]), A[12]
local inkey = (mode == 'return') and (p .. ':returns') or (p .. ':in')
local action = string.match(dedup, '^[^,]*')
local dedup_phone = string.find(dedup, ',phone', 1, true) ~= nil
local dedup_email = string.find(dedup, ',email', 1, true) ~= nil
local periods = {'hour', 'day', 'week', 'month'}
local ttl = {2 * 3600, 2 * 86400, 8 * 86400, 32 * 86400}
local rcall = redis.call

local t = rcall('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Numbers go to redis.call as strings made once: Lua formats a number
-- argument with sprintf at every call.
local now_s, ttl_s, window_s, maxlen_s = tostring(now_ms), A[5], A[10], A[6]
local pk = cmsgpack.pack
local routed_pk = pk('routed_at') .. pk(now_ms) .. pk('lead')
-- cmsgpack packs Lua strings as str; dead letters keep the payload as bin.
local function pkbin(b)
  local n = #b
  if n < 256 then return '\196' .. string.char(n) .. b end
  if n < 65536 then return '\197' .. string.char(math.floor(n / 256), n % 256) .. b end
  return '\198' .. string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256) .. b
end

-- Batch-wide caches and deltas: each key is read once and written once.
local owned = nil
if mode ~= 'list' then
  owned = {}
  local pe = rcall('XPENDING', inkey, group, '-', '+', nleads * 4 + 1024, consumer)
  for _, e in ipairs(pe) do owned[e[1]] = true end
end

local DT = cmsgpack.unpack(A[13])
local dealer = {}
local function dealer_at(x)
  local d = dealer[x]
  if d == nil then
    local r = DT[x]
    d = {id = r[1], caps = {r[2], r[3], r[4], r[5]}, max_pending = r[10], keys = {}, used = {}, delta = 0,
      qlen = -1, new = false, push = {}, hot = {}, pkid = pk('dealer') .. pk(r[1]) .. pk('rule')}
    for j = 1, 4 do d.keys[j] = p .. ':cap:' .. r[1] .. ':' .. periods[j] .. ':' .. r[5 + j] end
    local raw = rcall('MGET', d.keys[1], d.keys[2], d.keys[3], d.keys[4])
    for j = 1, 4 do
      if raw[j] == false then d.new = true end
      d.used[j] = tonumber(raw[j] or '0')
    end
    if d.max_pending > 0 then d.qlen = rcall('LLEN', p .. ':dealer:' .. d.id) end
    dealer[x] = d
  end
  return d
end
local function full(d)
  if d.max_pending > 0 and d.qlen >= d.max_pending then return true end
  for j = 1, 4 do
    if d.caps[j] > 0 and d.used[j] >= d.caps[j] then return true end
  end
  return false
end

local RT = cmsgpack.unpack(A[14])
local rrdelta = {}

local stats = {}
local function stat(f)
  stats[f] = (stats[f] or 0) + 1
end
local acks = {}
local reply = {}

local i = 14
for _ = 1, nleads do
  local m = cmsgpack.unpack(A[i + 1])
  local payload, head = A[i + 2], A[i + 3]
  i = i + 3
  local ref, id, attempt, source, niche, outcome, err = m[1], m[2], m[3], m[4], m[5], m[6], m[7]
  local flags, picked, rules, phone, email, passed, had, rr = m[8], m[9], m[10], m[11], m[12], m[13], m[14], m[15]
  local reckey = p .. ':lead:' .. id
  local attempt_s = tostring(attempt)
  local result

  local function ack()
    if mode == 'list' then rcall('LREM', plist, 1, payload) else acks[#acks + 1] = ref end
  end
  local function audit(res, dealers, rule)
    if audit_maxlen > 0 then
      return rcall('XADD', p .. ':audit', 'MAXLEN', '~', maxlen_s, '*', 'lead_id', id, 'outcome', res,
        'dealers', dealers, 'rule', rule, 'niche', niche, 'attempt', attempt_s, 'passed', passed, 'ref', ref)
    end
    return ''
  end
  local function counted(what)
    -- A re-routed return is not a new lead: it does not count as received.
    if mode ~= 'return' then stat('received') end
    stat(what)
    if source ~= '' then stat('source:' .. source .. ':' .. what) end
    if niche ~= '' then stat('niche:' .. niche .. ':' .. what) end
  end
  local function unassigned(reason)
    rcall('RPUSH', p .. ':unassigned', '\133' .. pk('lead_id') .. pk(id) .. pk('reason') ..
      pk(reason) .. pk('niche') .. pk(niche) .. pk('at') .. pk(now_ms) .. pk('lead') .. payload)
    counted('unassigned')
    stat('unassigned:' .. reason)
    local aid = audit(reason, '', '')
    if reason ~= 'duplicate_id' then
      if mode == 'return' then
        rcall('HSET', reckey, 'attempt', attempt_s, 'outcome', reason, 'audit', aid)
      else
        rcall('HSET', reckey, 'dealers', '', 'attempt', attempt_s, 'niche', niche, 'payload', payload,
          'ref', ref, 'outcome', reason, 'at', now_s, 'audit', aid)
      end
      rcall('EXPIRE', reckey, ttl_s)
    end
    ack()
    return 'unassigned:' .. reason
  end

  -- 1. Fence: this consumer must still own the entry.
  if mode == 'list' then
    if not rcall('LPOS', plist, payload) then result = 'stale' end
  elseif not owned[ref] then
    local pe = rcall('XPENDING', inkey, group, ref, ref, 1)
    result = (#pe == 0) and 'stale' or 'not_owner'
  end

  if result == nil and outcome == 'dead' then
    rcall('RPUSH', p .. ':dead', '\132' .. pk('error') .. pk(err) .. pk('payload') .. pkbin(payload) ..
      pk('at') .. pk(now_ms) .. pk('ref') .. pk(mode == 'list' and 'list' or ref))
    if mode ~= 'return' then stat('received') end
    stat('dead')
    ack()
    result = 'dead'
  end

  -- 2. Routed before (within record_ttl)? Then this is a duplicate_id.
  if result == nil and mode ~= 'return' and rcall('EXISTS', reckey) == 1 then
    outcome = 'duplicate_id'
  end

  if result == nil and mode == 'return' and attempt > max_attempts then
    result = unassigned('max_attempts')
  end
  if result == nil and outcome ~= 'route' then result = unassigned(outcome) end

  -- 3. Suppression and duplicates: digests only, no contact data in keys.
  local seen = {}
  if result == nil and phone ~= '' and rcall('SISMEMBER', p .. ':dnc', redis.sha1hex(phone)) == 1 then
    result = unassigned('suppressed')
  end
  if result == nil and mode ~= 'return' and action ~= 'ignore' and window > 0 then
    local prior = nil
    if phone ~= '' and dedup_phone then seen[#seen + 1] = p .. ':seen:' .. redis.sha1hex('phone:' .. phone) end
    if email ~= '' and dedup_email then seen[#seen + 1] = p .. ':seen:' .. redis.sha1hex('email:' .. email) end
    for _, sk in ipairs(seen) do
      local v = rcall('GET', sk)
      if v then prior = v break end
    end
    if prior and action == 'reject' then
      result = unassigned('duplicate')
    elseif prior and prior ~= '' and action == 'same_dealer' and not string.find(flags, 'S', 1, true) then
      local first = picked[1] and dealer_at(picked[1]).id
      if first ~= prior then result = 'redo:same:' .. prior end
    end
  end

  -- 4. The daemon's picks against Redis's counters.
  if result == nil then
    for _, x in ipairs(picked) do
      if full(dealer_at(x)) then result = 'redo' break end
    end
  end

  if result == nil then
    -- 5. Writes.
    local ids = {}
    local hot = string.find(flags, 'h', 1, true) ~= nil
    for n, x in ipairs(picked) do
      local d = dealer_at(x)
      ids[n] = d.id
      local asg = head .. d.pkid .. pk(rules[n]) .. routed_pk .. payload
      local q = hot and d.hot or d.push
      q[#q + 1] = asg
      if d.qlen >= 0 then d.qlen = d.qlen + 1 end
      for j = 1, 4 do d.used[j] = d.used[j] + 1 end
      d.delta = d.delta + 1
      stat('dealer:' .. d.id .. ':assigned')
    end
    for c = 1, #rr, 2 do rrdelta[rr[c]] = (rrdelta[rr[c]] or 0) + rr[c + 1] end
    local dealers = table.concat(ids, ',')
    counted('assigned')
    local aid = audit('assigned', dealers, rules[#rules])
    if mode == 'return' then
      rcall('HSET', reckey, 'dealers', (had ~= '' and (had .. ',') or '') .. dealers, 'attempt', attempt_s,
        'outcome', 'assigned', 'audit', aid)
      stat('returned')
    else
      rcall('HSET', reckey, 'dealers', dealers, 'attempt', attempt_s, 'niche', niche, 'payload', payload,
        'ref', ref, 'outcome', 'assigned', 'at', now_s, 'audit', aid)
    end
    rcall('EXPIRE', reckey, ttl_s)
    for _, sk in ipairs(seen) do rcall('SET', sk, ids[1], 'NX', 'EX', window_s) end
    ack()
    result = 'assigned:' .. dealers
  end
  reply[#reply + 1] = result
end

-- Batch-wide writes: counters, rotation state, statistics, acks. Long
-- argument lists go in chunks (Lua's unpack has a stack limit).
local function call_chunked(cmd, key, pre, list)
  for c = 1, #list, 1000 do
    local args = {cmd, key}
    for _, x in ipairs(pre) do args[#args + 1] = x end
    for j = c, math.min(c + 999, #list) do args[#args + 1] = list[j] end
    rcall(unpack(args))
  end
end
local counters = {}
for x, d in pairs(dealer) do
  -- Assignments go out in one push per dealer, in commit order (hot ones
  -- to the head).
  if #d.push > 0 then call_chunked('RPUSH', p .. ':dealer:' .. d.id, {}, d.push) end
  if #d.hot > 0 then call_chunked('LPUSH', p .. ':dealer:' .. d.id, {}, d.hot) end
  if d.delta > 0 then
    for j = 1, 4 do
      rcall('INCRBY', d.keys[j], d.delta)
      if d.new then rcall('EXPIRE', d.keys[j], ttl[j], 'NX') end
    end
  end
  local c = #counters
  counters[c + 1], counters[c + 2], counters[c + 3], counters[c + 4], counters[c + 5], counters[c + 6] =
    x, d.used[1], d.used[2], d.used[3], d.used[4], d.qlen
end
-- Every rotation field the batch named comes back with its value in Redis,
-- also those of leads that were not committed (redo): the daemon moved
-- them already in its own view, and must take them back.
local rrvals = {}
for x = 1, #RT / 2 do
  local delta = rrdelta[x]
  local v
  if delta and delta ~= 0 then
    v = rcall('HINCRBY', RT[2 * x - 1], RT[2 * x], delta)
  else
    v = tonumber(rcall('HGET', RT[2 * x - 1], RT[2 * x]) or '0')
  end
  rrvals[#rrvals + 1] = x
  rrvals[#rrvals + 1] = v
end
local sk = p .. ':stats:' .. hour
local any = false
for f, n in pairs(stats) do rcall('HINCRBY', sk, f, n); any = true end
if any then rcall('EXPIRE', sk, 400 * 86400) end
if #acks > 0 then
  call_chunked('XACK', inkey, {group}, acks)
  call_chunked('XDEL', inkey, {}, acks)
end
reply[#reply + 1] = counters
reply[#reply + 1] = rrvals
return reply
