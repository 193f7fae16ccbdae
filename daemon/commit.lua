-- commit.lua - the atomic commit of one lead (SPEC section 4).
-- Loaded once, called with EVALSHA 0 ARGV... by leadrouterd.
-- Every check comes first; only then the writes (a Lua error does not undo
-- writes already made). Replies: {"ok", outcome, dealers} | {"stale"} |
-- {"not_owner"} | {"dup", outcome}.
--
-- ARGV (see daemon/commit.c, which builds them):
--  1 prefix        2 mode (stream|list|return)   3 group      4 consumer
--  5 ref (entry id | processing list)            6 lead id    7 payload
--  8 record_ttl    9 audit_maxlen  10 attempt   11 max_attempts
-- 12 stats hour (YYYYMMDDHH, UTC)  13 source    14 niche
-- 15 outcome: "route" | an unassigned reason | "dead"
-- 16 dead error   17 assignment head (msgpack: map header + fixed fields)
-- 18 flags: 'h' hot grade, 'H' exclusive owners hold   19 max_buyers   20 strategy (weighted|round_robin|nearest|least_loaded)
-- 21 phone digest input ("" = none)  22 email digest input
-- 23 dedup: action (same_dealer|reject|ignore) then the keys used, comma-separated
--    (e.g. "same_dealer,phone,email")   24 dedup window (s)
-- 25 passed-over summary for the audit  26 dealers that already had the lead (comma list)
-- 27 n candidates, then 15 fields per candidate:
--    id stage tier weight key cap_h cap_d cap_w cap_m bucket_h bucket_d bucket_w bucket_m max_pending rule

local A = ARGV
local p, mode, group, consumer, ref, id, payload = A[1], A[2], A[3], A[4], A[5], A[6], A[7]
local record_ttl, audit_maxlen = tonumber(A[8]), tonumber(A[9])
local attempt, max_attempts = tonumber(A[10]), tonumber(A[11])
local hour, source, niche, outcome = A[12], A[13], A[14], A[15]
local inkey = (mode == 'return') and (p .. ':returns') or (p .. ':in')
local reckey = p .. ':lead:' .. id

-- 1. Fence: this consumer must still own the entry it is committing.
if mode == 'list' then
  if not redis.call('LPOS', ref, payload) then return {'stale'} end
else
  local pe = redis.call('XPENDING', inkey, group, ref, ref, 1)
  if #pe == 0 then return {'stale'} end
  if pe[1][2] ~= consumer then return {'not_owner'} end
end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function ack()
  if mode == 'list' then
    redis.call('LREM', ref, 1, payload)
  else
    redis.call('XACK', inkey, group, ref)
    redis.call('XDEL', inkey, ref)
  end
end

local function stat(field, n)
  local k = p .. ':stats:' .. hour
  redis.call('HINCRBY', k, field, n or 1)
  redis.call('EXPIRE', k, 400 * 86400)
end

local function audit(result, dealers, rule, passed)
  if audit_maxlen > 0 then
    redis.call('XADD', p .. ':audit', 'MAXLEN', '~', audit_maxlen, '*', 'lead_id', id,
      'outcome', result, 'dealers', dealers, 'rule', rule, 'niche', niche,
      'attempt', attempt, 'passed', passed, 'ref', ref)
  end
end

local function pk(x) return cmsgpack.pack(x) end

if outcome == 'dead' then
  redis.call('RPUSH', p .. ':dead', '\132' .. pk('error') .. pk(A[16]) .. pk('payload') ..
    pk(payload) .. pk('at') .. pk(now_ms) .. pk('ref') .. pk(mode == 'list' and 'list' or ref))
  stat('dead')
  ack()
  return {'ok', 'dead', ''}
end

-- 2. Already routed? The same entry committed before (a re-sent commit
-- whose reply was lost) is answered "dup"; another entry with this id is
-- a duplicate_id.
if mode ~= 'return' then
  local prev = redis.call('HMGET', reckey, 'ref', 'outcome')
  if prev[1] then
    if prev[1] == ref and mode ~= 'list' then return {'dup', prev[2]} end
    if mode == 'list' and prev[1] == 'list:' .. consumer .. ':' .. redis.sha1hex(payload) then
      ack()
      return {'dup', prev[2]}
    end
    outcome = 'duplicate_id'
  end
end

local function unassigned(reason, passed)
  redis.call('RPUSH', p .. ':unassigned', '\133' .. pk('lead_id') .. pk(id) .. pk('reason') ..
    pk(reason) .. pk('niche') .. pk(niche) .. pk('at') .. pk(now_ms) .. pk('lead') .. payload)
  stat('received')
  stat('unassigned')
  stat('unassigned:' .. reason)
  if source ~= '' then stat('source:' .. source .. ':unassigned') end
  if niche ~= '' then stat('niche:' .. niche .. ':unassigned') end
  if reason ~= 'duplicate_id' then
    local recref = (mode == 'list') and ('list:' .. consumer .. ':' .. redis.sha1hex(payload)) or ref
    if mode == 'return' then
      redis.call('HSET', reckey, 'attempt', attempt, 'outcome', reason)
    else
      redis.call('HSET', reckey, 'dealers', '', 'attempt', attempt, 'niche', niche,
        'payload', payload, 'ref', recref, 'outcome', reason, 'at', now_ms)
    end
    redis.call('EXPIRE', reckey, record_ttl)
  end
  audit(reason, '', '', passed or '')
  ack()
  return {'ok', reason, ''}
end

if mode == 'return' and attempt > max_attempts then return unassigned('max_attempts', A[25]) end
if outcome ~= 'route' then return unassigned(outcome, A[25]) end

-- 3. Suppression and duplicates (digests: no contact data in key names).
local phone, email = A[21], A[22]
if phone ~= '' and redis.call('SISMEMBER', p .. ':dnc', redis.sha1hex(phone)) == 1 then
  return unassigned('suppressed', A[25])
end
local action, window = string.match(A[23], '^[^,]*'), tonumber(A[24])
local seen = {}
if mode ~= 'return' and action ~= 'ignore' and window > 0 then
  if phone ~= '' and string.find(A[23], ',phone', 1, true) then
    seen[#seen + 1] = p .. ':seen:' .. redis.sha1hex('phone:' .. phone)
  end
  if email ~= '' and string.find(A[23], ',email', 1, true) then
    seen[#seen + 1] = p .. ':seen:' .. redis.sha1hex('email:' .. email)
  end
end
local prior = nil
for _, k in ipairs(seen) do
  local v = redis.call('GET', k)
  if v then prior = v break end
end
if prior and action == 'reject' then return unassigned('duplicate', A[25]) end

-- 4. Candidates, with caps and queue depth read now (checked before the
-- pick: a full dealer neither wins nor gains rotation value).
local k, strategy = tonumber(A[19]), A[20]
local had = {}
for d in string.gmatch(A[26], '[^,]+') do had[d] = true end
local n = tonumber(A[27])
local C = {}
local periods = {'hour', 'day', 'week', 'month'}
for i = 0, n - 1 do
  local b = 27 + i * 15
  local c = {id = A[b + 1], stage = tonumber(A[b + 2]), tier = tonumber(A[b + 3]),
    weight = tonumber(A[b + 4]), key = tonumber(A[b + 5]), caps = {}, buckets = {},
    max_pending = tonumber(A[b + 14]), rule = A[b + 15]}
  for j = 1, 4 do
    c.caps[j] = tonumber(A[b + 5 + j])
    c.buckets[j] = A[b + 9 + j]
  end
  C[#C + 1] = c
end
-- same_dealer: the dealer of the first lead takes the repeat if it can.
if prior and action == 'same_dealer' and prior ~= '' then
  local only = {}
  for _, c in ipairs(C) do if c.id == prior then only[1] = c end end
  if #only == 1 then C = only end
end

local passed = {}
local function capkey(c, j) return p .. ':cap:' .. c.id .. ':' .. periods[j] .. ':' .. c.buckets[j] end
for _, c in ipairs(C) do
  c.ok = true
  if c.max_pending > 0 and redis.call('LLEN', p .. ':dealer:' .. c.id) >= c.max_pending then
    c.ok = false
    passed[#passed + 1] = c.id .. '=capped:max_pending'
  else
    c.used = {}
    for j = 1, 4 do
      c.used[j] = tonumber(redis.call('GET', capkey(c, j)) or '0')
      if c.ok and c.caps[j] > 0 and c.used[j] >= c.caps[j] then
        c.ok = false
        passed[#passed + 1] = c.id .. '=capped:' .. periods[j]
      end
    end
  end
end

-- 5. The pick, exactly as rules_pick: stage by stage, tier by tier.
local picked, picked_stage = {}, -1
local rr_changes = {}
for stage = 0, 1 do
  if #picked > 0 then break end
  local i = 1
  while i <= #C do
    local c0 = C[i]
    local j = i
    while j <= #C and C[j].stage == c0.stage and C[j].tier == c0.tier do j = j + 1 end
    if c0.stage == stage and #picked < k then
      local el = {}
      for x = i, j - 1 do if C[x].ok then el[#el + 1] = C[x] end end
      local rrkey = p .. ':rr:' .. niche .. ':' .. c0.tier
      if strategy == 'least_loaded' then
        for _, c in ipairs(el) do
          c.key = (c.caps[2] > 0) and (c.used[2] / c.caps[2]) or c.used[2]
        end
      end
      while #el > 0 and #picked < k do
        local best = 1
        if strategy == 'weighted' or strategy == 'round_robin' then
          local total, bestv = 0, nil
          for x, c in ipairs(el) do
            if c.cur == nil then c.cur = tonumber(redis.call('HGET', rrkey, c.id) or '0') end
            local w = (strategy == 'round_robin') and 1 or c.weight
            c.cur = c.cur + w
            total = total + w
            if bestv == nil or c.cur > bestv then best, bestv = x, c.cur end
          end
          el[best].cur = el[best].cur - total
          for _, c in ipairs(el) do rr_changes[#rr_changes + 1] = {rrkey, c} end
        else
          for x, c in ipairs(el) do if c.key < el[best].key then best = x end end
        end
        picked[#picked + 1] = el[best]
        picked_stage = stage
        table.remove(el, best)
      end
    end
    i = j
  end
end

local function summary_with(extra)
  local s = table.concat(passed, ',')
  if #extra > 0 then s = s .. (s ~= '' and ',' or '') .. table.concat(extra, ',') end
  if A[25] ~= '' then s = s .. (s ~= '' and ',' or '') .. A[25] end
  return s
end

if #picked == 0 then
  -- The routing core found candidates, so what stopped them here is caps
  -- (or a full queue); owners that hold keep the lead from the others.
  local hold = string.find(A[18], 'H', 1, true) ~= nil
  return unassigned(hold and 'exclusive_owner_unavailable' or 'all_capped', summary_with({}))
end

-- 6. Writes.
local ids = {}
local rule_of = ''
local head = A[17]
for _, c in ipairs(picked) do
  ids[#ids + 1] = c.id
  local a = head .. pk('dealer') .. pk(c.id) .. pk('rule') .. pk(c.rule) .. pk('routed_at') ..
    pk(now_ms) .. pk('lead') .. payload
  if string.find(A[18], 'h', 1, true) then
    redis.call('LPUSH', p .. ':dealer:' .. c.id, a)
  else
    redis.call('RPUSH', p .. ':dealer:' .. c.id, a)
  end
  local ttl = {2 * 3600, 2 * 86400, 8 * 86400, 32 * 86400}
  for j = 1, 4 do
    local ck = capkey(c, j)
    if redis.call('INCR', ck) == 1 then redis.call('EXPIRE', ck, ttl[j]) end
  end
  stat('dealer:' .. c.id .. ':assigned')
  rule_of = c.rule
end
local written = {}
for _, ch in ipairs(rr_changes) do
  local key = ch[1] .. '\0' .. ch[2].id
  if not written[key] then
    written[key] = true
    redis.call('HSET', ch[1], ch[2].id, ch[2].cur)
  end
end
local dealers = table.concat(ids, ',')
stat('received')
stat('assigned')
if source ~= '' then stat('source:' .. source .. ':assigned') end
stat('niche:' .. niche .. ':assigned')
if mode == 'return' then
  local prev = redis.call('HGET', reckey, 'dealers') or ''
  redis.call('HSET', reckey, 'dealers', (prev ~= '' and (prev .. ',') or '') .. dealers,
    'attempt', attempt, 'outcome', 'assigned')
  stat('returned')
else
  local recref = (mode == 'list') and ('list:' .. consumer .. ':' .. redis.sha1hex(payload)) or ref
  redis.call('HSET', reckey, 'dealers', dealers, 'attempt', attempt, 'niche', niche,
    'payload', payload, 'ref', recref, 'outcome', 'assigned', 'at', now_ms)
end
redis.call('EXPIRE', reckey, record_ttl)
for _, sk in ipairs(seen) do
  redis.call('SET', sk, ids[1], 'NX', 'EX', window)
end
local notpicked = {}
for _, c in ipairs(C) do
  local was = false
  for _, q in ipairs(picked) do if q == c then was = true end end
  if not was and c.ok then notpicked[#notpicked + 1] = c.id .. '=not_picked' end
end
audit('assigned', dealers, rule_of, summary_with(notpicked))
ack()
return {'ok', 'assigned', dealers}
