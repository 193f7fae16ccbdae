-- commit.lua - the atomic commit of a batch of leads (SPEC section 4).
-- Loaded once, called with EVALSHA <sha> 0 ARGV... by leadrouterd; the
-- argument positions, section widths and reply codes above this line are
-- generated from include/leadrouter/commit_contract.h, which documents them.
--
-- The daemon has decided every lead of the batch from its view of Redis
-- (the pre-read of records, suppression and dedup digests, the counters,
-- queue depths and rotation of the commits before it) and built every
-- string to write. This script checks that view and writes. A batch is
-- committed whole or not at all: every check, and every check of what could
-- make a write fail (ACL rights, key types), comes before the first write,
-- because a Lua error does not undo writes. Out of memory fails the first
-- write, before anything is written.
-- A lead that passes the fence has not been committed: its commit would
-- have acknowledged it in the same atomic step. So sending a commit again
-- after a lost reply is safe: the second one finds every lead stale.

local A = ARGV
local rcall = redis.call
local mode, inkey, group, consumer = A[MODE], A[INKEY], A[GROUP], A[CONSUMER]
local nleads, nexist, ndig = tonumber(A[N_LEADS]), tonumber(A[N_EXIST]), tonumber(A[N_DIGESTS])
local ndealers, nrr, nstats = tonumber(A[N_DEALERS]), tonumber(A[N_RR]), tonumber(A[N_STATS])
local nun, ndead = tonumber(A[N_UNASSIGNED]), tonumber(A[N_DEAD])
local audit_on = A[AUDIT_MAXLEN] ~= '0'

-- Section offsets (each one before its first argument).
local L0 = ARG_END - 1
local E0 = L0 + nleads * LEAD_W
local G0 = E0 + nexist
local D0 = G0 + ndig * DIGEST_W
local dealers = {}
do
  local i = D0
  for _ = 1, ndealers do
    local nk, np, nh = tonumber(A[i + 4]), tonumber(A[i + 5]), tonumber(A[i + 6])
    local d = {q = A[i + 1], mp = tonumber(A[i + 2]), delta = tonumber(A[i + 3]), nk = nk, np = np, nh = nh,
      k0 = i + DEALER_W}
    d.b0 = d.k0 + nk * CAPKEY_W
    dealers[#dealers + 1] = d
    i = d.b0 + np + nh
  end
  D0 = i -- now: the end of the dealer section
end
local R0 = D0
local S0 = R0 + nrr * RR_W
local U0 = S0 + nstats * STAT_W
local X0 = U0 + nun

-- Long argument lists go in chunks (Lua's unpack has a stack limit).
local function call_range(cmd, key, pre, from, to)
  for c = from, to, 1000 do
    local e = math.min(c + 999, to)
    if pre then rcall(cmd, key, pre, unpack(A, c, e)) else rcall(cmd, key, unpack(A, c, e)) end
  end
end
local function call_list(cmd, key, list)
  for c = 1, #list, 1000 do rcall(cmd, key, unpack(list, c, math.min(c + 999, #list))) end
end

-- 0. What would make a write fail half way: the ACL user's rights and the
-- types of the keys written. Reported as errors that retrying cannot cure.
local function may(cmd, key, ...)
  if redis.acl_check_cmd and not redis.acl_check_cmd(cmd, key, ...) then
    return redis.error_reply('NOPERM leadrouter commit: the ACL user may not run ' .. cmd .. ' on ' .. key)
  end
end
local function typed(key, want)
  local t = rcall('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE leadrouter commit: ' .. key .. ' holds a ' .. t .. ', not a ' .. want)
  end
end
local e
local first_rec, first_audit = nil, nil
for k = 1, nleads do
  local b = L0 + (k - 1) * LEAD_W
  if not first_rec and A[b + 3] ~= '' and A[b + 4] ~= '' then first_rec = A[b + 3] end
  if not first_audit and A[b + 5] ~= '' then first_audit = true end
end
if first_rec then
  e = may('SET', first_rec, 'x', 'EX', '1') or (mode == 'return' and typed(first_rec, 'string'))
  if e then return e end
end
if audit_on and first_audit then
  e = may('XADD', A[AUDIT_KEY], '*', 'a', 'b') or may('XTRIM', A[AUDIT_KEY], 'MAXLEN', '1') or
    typed(A[AUDIT_KEY], 'stream')
  if e then return e end
end
if nun > 0 then e = may('RPUSH', A[UNASSIGNED_KEY], 'x') or typed(A[UNASSIGNED_KEY], 'list') if e then return e end end
if ndead > 0 then e = may('RPUSH', A[DEAD_KEY], 'x') or typed(A[DEAD_KEY], 'list') if e then return e end end
if nstats > 0 then
  e = may('HINCRBY', A[STATS_KEY], 'f', '1') or may('EXPIRE', A[STATS_KEY], '1') or typed(A[STATS_KEY], 'hash')
  if e then return e end
end
if ndig > 0 then
  e = may('HSET', A[SEEN_CUR], 'f', 'v') or may('EXPIREAT', A[SEEN_CUR], '1') or typed(A[SEEN_CUR], 'hash') or
    (A[SEEN_PREV] ~= '' and typed(A[SEEN_PREV], 'hash'))
  if e then return e end
end
e = may('SET', A[SEQKEY], '1', 'EX', '1') or typed(A[SEQKEY], 'string')
if e then return e end
if mode == 'list' then
  e = may('LTRIM', inkey, '0', '1') or may('LREM', inkey, '1', 'x')
else
  e = may('XACK', inkey, group, '0-1')
end
if e then return e end
for x, d in ipairs(dealers) do
  if x == 1 then
    e = may('RPUSH', d.q, 'x') or may('LPUSH', d.q, 'x')
    if d.nk > 0 then e = e or may('INCRBY', A[d.k0 + 1], '1') or may('EXPIRE', A[d.k0 + 1], '1') end
    if e then return e end
  end
  e = typed(d.q, 'list')
  if e then return e end
end
local rrkeys = {}
for r = 1, nrr do
  local key = A[R0 + (r - 1) * RR_W + 1]
  if not rrkeys[key] then
    rrkeys[key] = true
    e = (r == 1 and may('HINCRBY', key, 'f', '1')) or typed(key, 'hash')
    if e then return e end
  end
end

-- 1. The checks. Reads only, for every lead, before any write.
local codes = {}
local why = ''
for k = 1, nleads do codes[k] = CODE_DONE end
local function refuse(w) if why == '' then why = w end end

-- The fence: this consumer must still own every entry.
local list_fast = false
if mode == 'list' then
  -- The batch's leads were moved to the processing list in order, oldest
  -- at the tail: usually they are its last nleads entries.
  local tail = rcall('LRANGE', inkey, -nleads, -1)
  list_fast = #tail == nleads
  for k = 1, nleads do
    if not list_fast then break end
    if tail[nleads + 1 - k] ~= A[L0 + (k - 1) * LEAD_W + 1] then list_fast = false end
  end
  if not list_fast then
    for k = 1, nleads do
      if not rcall('LPOS', inkey, A[L0 + (k - 1) * LEAD_W + 1]) then codes[k] = CODE_STALE refuse('fence') end
    end
  end
else
  local owned = {}
  local want = nleads * 2 + 64
  local pe = rcall('XPENDING', inkey, group, A[FENCE_LO], A[FENCE_HI], want, consumer)
  for _, x in ipairs(pe) do owned[x[1]] = true end
  for k = 1, nleads do
    local ref = A[L0 + (k - 1) * LEAD_W + 1]
    if not owned[ref] then
      -- Past the window (or outside it): ask for the entry itself.
      local one = rcall('XPENDING', inkey, group, ref, ref, 1)
      if #one == 0 then
        codes[k] = CODE_STALE refuse('fence')
      elseif one[1][2] ~= consumer then
        codes[k] = CODE_NOT_OWNER refuse('fence')
      end
    end
  end
end

-- The order: the batch was decided after batch PREV of this consumer.
if A[PREV] ~= '0' and rcall('GET', A[SEQKEY]) ~= A[PREV] then refuse('order') end

-- Records: a lead the daemon found new must still be new (another daemon
-- may have routed the same id since); a return must find the record it
-- was decided from.
if mode == 'return' then
  if nleads > 0 and A[L0 + 3] ~= '' and rcall('GET', A[L0 + 3]) ~= A[EXPECT] then refuse('record_changed') end
else
  local keys = {}
  for k = 1, nleads do
    local b = L0 + (k - 1) * LEAD_W
    if A[b + 3] ~= '' and A[b + 4] ~= '' then keys[#keys + 1] = A[b + 3] end
  end
  for c = 1, #keys, 1000 do
    if rcall('EXISTS', unpack(keys, c, math.min(c + 999, #keys))) > 0 then refuse('duplicate_id') break end
  end
end
if nexist > 0 then
  local n = 0
  for c = E0 + 1, E0 + nexist, 1000 do n = n + rcall('EXISTS', unpack(A, c, math.min(c + 999, E0 + nexist))) end
  if n ~= nexist then refuse('record_gone') end
end

-- Dedup digests: each must hold what the daemon decided from (the value
-- of an earlier lead of this batch, for repeats within it).
local newseen = {}
if ndig > 0 then
  local fields = {}
  for g = 1, ndig do fields[g] = A[G0 + (g - 1) * DIGEST_W + 1] end
  local cur, prev = {}, {}
  for c = 1, ndig, 1000 do
    local e2 = math.min(c + 999, ndig)
    local r = rcall('HMGET', A[SEEN_CUR], unpack(fields, c, e2))
    for j = 1, #r do cur[c + j - 1] = r[j] end
    if A[SEEN_PREV] ~= '' then
      r = rcall('HMGET', A[SEEN_PREV], unpack(fields, c, e2))
      for j = 1, #r do prev[c + j - 1] = r[j] end
    end
  end
  local now = {}
  for g = 1, ndig do
    local b = G0 + (g - 1) * DIGEST_W
    local f = fields[g]
    local v = now[f]
    if v == nil then v = cur[g] or prev[g] or '' end
    if v ~= A[b + 2] then refuse('dedup') end
    if A[b + 3] ~= '' then
      now[f] = A[b + 3]
      newseen[#newseen + 1] = f
      newseen[#newseen + 1] = A[b + 3]
    else
      now[f] = v
    end
  end
end

-- Caps and queues: the counters in Redis, plus this batch.
local capkeys = {}
for _, d in ipairs(dealers) do
  for j = 1, d.nk do capkeys[#capkeys + 1] = A[d.k0 + (j - 1) * CAPKEY_W + 1] end
end
local used = {}
for c = 1, #capkeys, 1000 do
  local r = rcall('MGET', unpack(capkeys, c, math.min(c + 999, #capkeys)))
  for j = 1, #r do
    if r[j] == false then
      e = typed(capkeys[c + j - 1], 'string')
      if e then return e end
    end
    used[c + j - 1] = tonumber(r[j] or '0')
  end
end
do
  local u = 0
  for _, d in ipairs(dealers) do
    d.u0 = u
    for j = 1, d.nk do
      local cap = tonumber(A[d.k0 + (j - 1) * CAPKEY_W + 2])
      if cap > 0 and used[u + j] + d.delta > cap then refuse('cap ' .. capkeys[u + j]) end
    end
    u = u + d.nk
    d.qlen = -1
    if d.mp > 0 then
      d.qlen = rcall('LLEN', d.q)
      if d.qlen + d.delta > d.mp then refuse('queue ' .. d.q) end
    end
  end
end

local function counters(grow)
  local out = {}
  for _, d in ipairs(dealers) do
    for j = 1, d.nk do out[#out + 1] = used[d.u0 + j] + (grow and d.delta or 0) end
    out[#out + 1] = (d.qlen >= 0 and grow) and (d.qlen + d.delta) or d.qlen
  end
  return out
end

if why ~= '' then
  -- Refused: nothing is written. The daemon learns the counters and the
  -- rotation values as they are, and decides the leads again.
  local rr = {}
  for r = 1, nrr do
    local b = R0 + (r - 1) * RR_W
    rr[r] = tonumber(rcall('HGET', A[b + 1], A[b + 2]) or '0')
  end
  local s = {}
  for k = 1, nleads do s[k] = (codes[k] == CODE_DONE) and CODE_REDO or codes[k] end
  return {table.concat(s), why, counters(false), rr}
end

-- 2. The writes.
local ttl = A[RECORD_TTL]
for k = 1, nleads do
  local b = L0 + (k - 1) * LEAD_W
  if A[b + 3] ~= '' and A[b + 4] ~= '' then rcall('SET', A[b + 3], A[b + 4], 'EX', ttl) end
  if audit_on and A[b + 5] ~= '' then rcall('XADD', A[AUDIT_KEY], '*', 'lead_id', A[b + 2], 'd', A[b + 5]) end
end
if audit_on then rcall('XTRIM', A[AUDIT_KEY], 'MAXLEN', '~', A[AUDIT_MAXLEN]) end
for _, d in ipairs(dealers) do
  if d.np > 0 then call_range('RPUSH', d.q, nil, d.b0 + 1, d.b0 + d.np) end
  if d.nh > 0 then call_range('LPUSH', d.q, nil, d.b0 + d.np + 1, d.b0 + d.np + d.nh) end
  if d.delta > 0 then
    for j = 1, d.nk do
      local kb = d.k0 + (j - 1) * CAPKEY_W
      if rcall('INCRBY', A[kb + 1], d.delta) == d.delta then rcall('EXPIRE', A[kb + 1], A[kb + 3]) end
    end
  end
end
local rr = {}
for r = 1, nrr do
  local b = R0 + (r - 1) * RR_W
  if A[b + 3] ~= '0' then
    rr[r] = rcall('HINCRBY', A[b + 1], A[b + 2], A[b + 3])
  else
    rr[r] = tonumber(rcall('HGET', A[b + 1], A[b + 2]) or '0')
  end
end
if #newseen > 0 then
  call_list('HSET', A[SEEN_CUR], newseen)
  rcall('EXPIREAT', A[SEEN_CUR], A[SEEN_EXPIREAT])
end
if nstats > 0 then
  for s = 1, nstats do
    local b = S0 + (s - 1) * STAT_W
    rcall('HINCRBY', A[STATS_KEY], A[b + 1], A[b + 2])
  end
  rcall('EXPIRE', A[STATS_KEY], 400 * 86400)
end
if nun > 0 then call_range('RPUSH', A[UNASSIGNED_KEY], nil, U0 + 1, U0 + nun) end
if ndead > 0 then call_range('RPUSH', A[DEAD_KEY], nil, X0 + 1, X0 + ndead) end
if mode == 'list' then
  if list_fast then
    rcall('LTRIM', inkey, 0, -(nleads + 1))
  else
    for k = 1, nleads do rcall('LREM', inkey, -1, A[L0 + (k - 1) * LEAD_W + 1]) end
  end
else
  local refs = {}
  for k = 1, nleads do refs[k] = A[L0 + (k - 1) * LEAD_W + 1] end
  for c = 1, #refs, 1000 do rcall('XACK', inkey, group, unpack(refs, c, math.min(c + 999, #refs))) end
end
rcall('SET', A[SEQKEY], A[SEQ], 'EX', 86400)
local s = {}
for k = 1, nleads do s[k] = CODE_DONE end
return {table.concat(s), '', counters(true), rr}
