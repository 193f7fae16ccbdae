-- commit.lua - the atomic commit of a batch of leads (SPEC section 4).
-- Loaded once, called with EVALSHA <sha> 0 ARGV... by leadrouterd.
-- One call commits every lead of a batch; each lead is committed whole or
-- not at all (a lead this consumer no longer owns is skipped, untouched).
-- Every check comes before the writes: a Lua error does not undo writes.
--
-- ARGV (built by daemon/commit.c):
--  1 prefix  2 mode (stream|list|return)  3 group  4 consumer
--  5 record_ttl  6 audit_maxlen  7 max_attempts  8 stats hour (YYYYMMDDHH UTC)
--  9 dedup: action then keys, comma-separated ("same_dealer,phone,email")
-- 10 dedup window (s)  11 number of leads  12 list mode: the processing list
-- 13 the dealers this batch's candidates name, msgpack: an array of
--    [id, weight, cap_h, cap_d, cap_w, cap_m, bucket_h, bucket_d, bucket_w,
--     bucket_m, max_pending] (buckets in the dealer's local time)
-- then 3 per lead: meta (msgpack), payload (raw msgpack), head (raw)
--   meta = [ref, id, attempt, source, niche, outcome, error, flags, k,
--           strategy, phone, email, passed, had, candidates]
--   (ref: stream entry id; outcome: "route", an unassigned reason, or
--    "dead" with error; head: msgpack map header + fixed assignment fields;
--    flags: 'h' hot grade, 'H' exclusive owners hold; passed: the compact
--    "dealer=why" list of dealers passed over before the commit; had:
--    dealers that had the lead already, comma list; candidates: a flat
--    array, 5 per candidate: dealer (index into ARGV[13], from 1), stage,
--    tier, key (nearest: distance), rule)
-- Packing the variable parts with msgpack keeps the work of Redis low:
-- cmsgpack.unpack builds the tables in C, with no number parsing in Lua.
-- Reply: one string per lead: "assigned:<dealers>", "unassigned:<reason>",
-- "dead", "stale" (no longer pending: committed already), "not_owner"
-- (another consumer took it over).
-- A lead that passes the fence has not been committed: its commit would
-- have acknowledged it in the same atomic step. So sending a commit again
-- after a lost reply is safe: the second one finds "stale".

local A = ARGV
local p, mode, group, consumer = A[1], A[2], A[3], A[4]
local record_ttl, audit_maxlen, max_attempts = tonumber(A[5]), tonumber(A[6]), tonumber(A[7])
local hour, dedup, window, nleads, plist = A[8], A[9], tonumber(A[10]), tonumber(A[11]), A[12]
local inkey = (mode == 'return') and (p .. ':returns') or (p .. ':in')
local action = string.match(dedup, '^[^,]*')
local dedup_phone = string.find(dedup, ',phone', 1, true) ~= nil
local dedup_email = string.find(dedup, ',email', 1, true) ~= nil
local periods = {'hour', 'day', 'week', 'month'}
local ttl = {2 * 3600, 2 * 86400, 8 * 86400, 32 * 86400}

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function pk(x) return cmsgpack.pack(x) end
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
  local pe = redis.call('XPENDING', inkey, group, '-', '+', nleads * 4 + 1024, consumer)
  for _, e in ipairs(pe) do owned[e[1]] = true end
end
local capv, capnew, capdelta = {}, {}, {}
local function capget(key)
  local v = capv[key]
  if v == nil then
    local raw = redis.call('GET', key)
    capnew[key] = (raw == false)
    v = tonumber(raw or '0')
    capv[key] = v
  end
  return v
end
local qlen = {}
local function queue_len(d)
  local v = qlen[d]
  if v == nil then v = redis.call('LLEN', p .. ':dealer:' .. d); qlen[d] = v end
  return v
end
local rrv, rrdirty = {}, {}
local function rrget(key, d)
  local h = rrv[key]
  if h == nil then h = {}; rrv[key] = h end
  if h[d] == nil then h[d] = tonumber(redis.call('HGET', key, d) or '0') end
  return h[d]
end
local stats = {}
local function stat(f)
  -- A re-routed return is not a new lead: it does not count as received.
  if f == 'received' and mode == 'return' then return end
  stats[f] = (stats[f] or 0) + 1
end
local acks = {}
local reply = {}

-- Dealers, built into tables (with their cap keys) once per batch.
local DT = cmsgpack.unpack(A[13])
local dealer = {}
local function dealer_at(x)
  local d = dealer[x]
  if d == nil then
    local r = DT[x]
    d = {id = r[1], weight = r[2], caps = {r[3], r[4], r[5], r[6]}, max_pending = r[11], keys = {}}
    for j = 1, 4 do d.keys[j] = p .. ':cap:' .. r[1] .. ':' .. periods[j] .. ':' .. r[6 + j] end
    dealer[x] = d
  end
  return d
end

local i = 13
for _ = 1, nleads do
  local m = cmsgpack.unpack(A[i + 1])
  local payload, head = A[i + 2], A[i + 3]
  i = i + 3
  local ref, id, attempt, source, niche, outcome, err = m[1], m[2], m[3], m[4], m[5], m[6], m[7]
  local flags, k, strategy, phone, email, passed, had, cands = m[8], m[9], m[10], m[11], m[12], m[13], m[14], m[15]
  local reckey = p .. ':lead:' .. id
  local result

  local function ack()
    if mode == 'list' then redis.call('LREM', plist, 1, payload) else acks[#acks + 1] = ref end
  end
  local function audit(res, dealers, rule, why)
    if audit_maxlen > 0 then
      redis.call('XADD', p .. ':audit', 'MAXLEN', '~', audit_maxlen, '*', 'lead_id', id, 'outcome', res,
        'dealers', dealers, 'rule', rule, 'niche', niche, 'attempt', attempt, 'passed', why, 'ref', ref)
    end
  end
  local function unassigned(reason, why)
    redis.call('RPUSH', p .. ':unassigned', '\133' .. pk('lead_id') .. pk(id) .. pk('reason') ..
      pk(reason) .. pk('niche') .. pk(niche) .. pk('at') .. pk(now_ms) .. pk('lead') .. payload)
    stat('received'); stat('unassigned'); stat('unassigned:' .. reason)
    if source ~= '' then stat('source:' .. source .. ':unassigned') end
    if niche ~= '' then stat('niche:' .. niche .. ':unassigned') end
    if reason ~= 'duplicate_id' then
      if mode == 'return' then
        redis.call('HSET', reckey, 'attempt', attempt, 'outcome', reason)
      else
        redis.call('HSET', reckey, 'dealers', '', 'attempt', attempt, 'niche', niche, 'payload', payload,
          'ref', ref, 'outcome', reason, 'at', now_ms)
      end
      redis.call('EXPIRE', reckey, record_ttl)
    end
    audit(reason, '', '', why or '')
    ack()
    return 'unassigned:' .. reason
  end

  -- 1. Fence: this consumer must still own the entry.
  if mode == 'list' then
    if not redis.call('LPOS', plist, payload) then result = 'stale' end
  elseif not owned[ref] then
    local pe = redis.call('XPENDING', inkey, group, ref, ref, 1)
    result = (#pe == 0) and 'stale' or 'not_owner'
  end

  if result == nil and outcome == 'dead' then
    redis.call('RPUSH', p .. ':dead', '\132' .. pk('error') .. pk(err) .. pk('payload') .. pkbin(payload) ..
      pk('at') .. pk(now_ms) .. pk('ref') .. pk(mode == 'list' and 'list' or ref))
    stat('received'); stat('dead')
    ack()
    result = 'dead'
  end

  -- 2. Routed before (within record_ttl)? Then this is a duplicate_id.
  if result == nil and mode ~= 'return' and redis.call('EXISTS', reckey) == 1 then
    outcome = 'duplicate_id'
  end

  if result == nil and mode == 'return' and attempt > max_attempts then
    result = unassigned('max_attempts', passed)
  end
  if result == nil and outcome ~= 'route' then result = unassigned(outcome, passed) end

  -- 3. Suppression and duplicates: digests only, no contact data in keys.
  local seen, prior = {}, nil
  if result == nil and phone ~= '' and redis.call('SISMEMBER', p .. ':dnc', redis.sha1hex(phone)) == 1 then
    result = unassigned('suppressed', passed)
  end
  if result == nil and mode ~= 'return' and action ~= 'ignore' and window > 0 then
    if phone ~= '' and dedup_phone then seen[#seen + 1] = p .. ':seen:' .. redis.sha1hex('phone:' .. phone) end
    if email ~= '' and dedup_email then seen[#seen + 1] = p .. ':seen:' .. redis.sha1hex('email:' .. email) end
    for _, sk in ipairs(seen) do
      local v = redis.call('GET', sk)
      if v then prior = v break end
    end
    if prior and action == 'reject' then result = unassigned('duplicate', passed) end
  end

  if result == nil then
    -- 4. Candidates; caps and queue depth are checked before the pick, so a
    -- full dealer neither wins nor gains rotation value.
    local C = {}
    for c = 1, #cands, 5 do
      local d = dealer_at(cands[c])
      C[#C + 1] = {id = d.id, weight = d.weight, caps = d.caps, keys = d.keys, max_pending = d.max_pending,
        stage = cands[c + 1], tier = cands[c + 2], key = cands[c + 3], rule = cands[c + 4]}
    end
    if prior and action == 'same_dealer' and prior ~= '' then
      for _, cd in ipairs(C) do if cd.id == prior then C = {cd} break end end
    end
    local why = {}
    for _, cd in ipairs(C) do
      cd.ok = true
      if cd.max_pending > 0 and queue_len(cd.id) >= cd.max_pending then
        cd.ok = false
        why[#why + 1] = cd.id .. '=capped:max_pending'
      else
        for j = 1, 4 do
          if cd.caps[j] > 0 and capget(cd.keys[j]) >= cd.caps[j] then
            cd.ok = false
            why[#why + 1] = cd.id .. '=capped:' .. periods[j]
            break
          end
        end
      end
    end

    -- 5. The pick, exactly as rules_pick: stage by stage, tier by tier.
    local picked = {}
    for stage = 0, 1 do
      if #picked > 0 then break end
      local a = 1
      while a <= #C do
        local c0 = C[a]
        local b = a
        while b <= #C and C[b].stage == c0.stage and C[b].tier == c0.tier do b = b + 1 end
        if c0.stage == stage and #picked < k then
          local el = {}
          for x = a, b - 1 do if C[x].ok then el[#el + 1] = C[x] end end
          local rrkey = p .. ':rr:' .. niche .. ':' .. c0.tier
          if strategy == 'least_loaded' then
            for _, cd in ipairs(el) do
              local used = capget(cd.keys[2])
              cd.key = (cd.caps[2] > 0) and (used / cd.caps[2]) or used
            end
          end
          while #el > 0 and #picked < k do
            local best = 1
            if strategy == 'weighted' or strategy == 'round_robin' then
              local total, bestv = 0, nil
              for x, cd in ipairs(el) do
                local w = (strategy == 'round_robin') and 1 or cd.weight
                local cur = rrget(rrkey, cd.id) + w
                rrv[rrkey][cd.id] = cur
                total = total + w
                if bestv == nil or cur > bestv then best, bestv = x, cur end
              end
              rrv[rrkey][el[best].id] = rrv[rrkey][el[best].id] - total
              rrdirty[rrkey] = true
            else
              for x, cd in ipairs(el) do if cd.key < el[best].key then best = x end end
            end
            picked[#picked + 1] = el[best]
            table.remove(el, best)
          end
        end
        a = b
      end
    end

    local function summary(extra)
      local s = table.concat(why, ',')
      for _, e in ipairs(extra) do s = s .. (s ~= '' and ',' or '') .. e end
      if passed ~= '' then s = s .. (s ~= '' and ',' or '') .. passed end
      return s
    end

    if #picked == 0 then
      local hold = string.find(flags, 'H', 1, true) ~= nil
      result = unassigned(hold and 'exclusive_owner_unavailable' or 'all_capped', summary({}))
    else
      -- 6. Writes.
      local ids, rule = {}, ''
      for _, cd in ipairs(picked) do
        ids[#ids + 1] = cd.id
        local asg = head .. pk('dealer') .. pk(cd.id) .. pk('rule') .. pk(cd.rule) .. pk('routed_at') ..
          pk(now_ms) .. pk('lead') .. payload
        if string.find(flags, 'h', 1, true) then
          redis.call('LPUSH', p .. ':dealer:' .. cd.id, asg)
        else
          redis.call('RPUSH', p .. ':dealer:' .. cd.id, asg)
        end
        if qlen[cd.id] then qlen[cd.id] = qlen[cd.id] + 1 end
        for j = 1, 4 do
          capget(cd.keys[j])
          capv[cd.keys[j]] = capv[cd.keys[j]] + 1
          capdelta[cd.keys[j]] = (capdelta[cd.keys[j]] or 0) + 1
        end
        stat('dealer:' .. cd.id .. ':assigned')
        rule = cd.rule
      end
      local dealers = table.concat(ids, ',')
      stat('received'); stat('assigned')
      if source ~= '' then stat('source:' .. source .. ':assigned') end
      stat('niche:' .. niche .. ':assigned')
      if mode == 'return' then
        redis.call('HSET', reckey, 'dealers', (had ~= '' and (had .. ',') or '') .. dealers, 'attempt', attempt,
          'outcome', 'assigned')
        stat('returned')
      else
        redis.call('HSET', reckey, 'dealers', dealers, 'attempt', attempt, 'niche', niche, 'payload', payload,
          'ref', ref, 'outcome', 'assigned', 'at', now_ms)
      end
      redis.call('EXPIRE', reckey, record_ttl)
      for _, sk in ipairs(seen) do redis.call('SET', sk, ids[1], 'NX', 'EX', window) end
      local notpicked = {}
      for _, cd in ipairs(C) do
        local was = false
        for _, q in ipairs(picked) do if q == cd then was = true end end
        if cd.ok and not was then notpicked[#notpicked + 1] = cd.id .. '=not_picked' end
      end
      audit('assigned', dealers, rule, summary(notpicked))
      ack()
      result = 'assigned:' .. dealers
    end
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
    redis.call(unpack(args))
  end
end
for key, d in pairs(capdelta) do
  redis.call('INCRBY', key, d)
  if capnew[key] then
    for j = 1, 4 do
      if string.find(key, ':' .. periods[j] .. ':', 1, true) then redis.call('EXPIRE', key, ttl[j]) break end
    end
  end
end
for key in pairs(rrdirty) do
  local fv = {}
  for d, v in pairs(rrv[key]) do fv[#fv + 1] = d; fv[#fv + 1] = v end
  call_chunked('HSET', key, {}, fv)
end
local sk = p .. ':stats:' .. hour
local any = false
for f, n in pairs(stats) do redis.call('HINCRBY', sk, f, n); any = true end
if any then redis.call('EXPIRE', sk, 400 * 86400) end
if #acks > 0 then
  call_chunked('XACK', inkey, {group}, acks)
  call_chunked('XDEL', inkey, {}, acks)
end
return reply
