/**
 * The Lua scripts of the Redis store. Each runs on the seven keys of one
 * session, which share a hash tag and so one Redis Cluster slot:
 * KEYS = meta, subs, q, inflight, qos2, rc (recent message ids, oldest first), subk (the
 * subscription index: key -> its entry in subs).
 *
 * subs is the list older versions read and write, in the core's order; subk lets SUBSCRIBE and
 * UNSUBSCRIBE find an entry without reading the list (older versions do not know it: after one
 * of them wrote the session it is rebuilt from subs, see index_subs and the meta field sk).
 *
 * A script is atomic with respect to other clients, but Redis does not roll
 * back the writes a script made before an error. So every script checks
 * first (key types, the owner guard) and writes only when nothing can fail.
 *
 * The meta hash holds the session's scalar fields and who owns it:
 *   v     format version ("1")            cid   client id
 *   o     owner (absent = anonymous)      ei    Session Expiry Interval, s
 *   ea    expiresAt ms ("0" connected, "inf" never)
 *   wa    willAt ms                       will  encoded will (absent = none)
 *   wd    will delay, s (so a script can compute willAt without decoding)
 *   rc    (older versions) recent ids, space-separated; now in the rc list, deleted on write
 *   w     node that wrote it last
 *   sk    node that wrote it last when subk matched subs (subk is trusted while sk = w: a node
 *         of an older version writes w and subs, never sk or subk)
 *   node  node that claimed it (the fence) ep   epoch, bumped by every claim
 * Fencing is opt-in per session: once a node claimed it (`node` set), only
 * that node's writes apply until another node claims it; a session nobody
 * claimed takes writes from any node. The owner a dead node's sessions are
 * checked against is `node` when set, else `w`. A meta with only node/ep is a
 * claim of a session that is not stored; it expires after the tombstone time.
 */

/** Shared by all scripts: checks key types; returns the names of wrongly typed keys. */
const CHECK_TYPES = `
local want = {'hash', 'list', 'list', 'list', 'list', 'list', 'hash'}
local function wrong_types()
  local bad = {}
  for k = 1, 7 do
    local t = redis.call('TYPE', KEYS[k])['ok']
    if t ~= 'none' and t ~= want[k] then bad[#bad + 1] = k end
  end
  return bad
end
local function is_bad(bad, k)
  for _, b in ipairs(bad) do if b == k then return true end end
  return false
end
-- TTLs are relative to the node's clock (ARGV now), the clock expiresAt was
-- computed with, so Redis's own clock does not matter.
local function refresh_ttl(grace, tomb, now)
  local ea = redis.call('HGET', KEYS[1], 'ea')
  if not ea then
    if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], tomb) end
    return
  end
  if ea == '0' or ea == 'inf' then
    for k = 1, 7 do redis.call('PERSIST', KEYS[k]) end
  else
    local ms = math.floor(tonumber(ea) - now) + grace
    if ms < 1 then ms = 1 end
    local arg = string.format('%d', ms)
    for k = 1, 7 do redis.call('PEXPIRE', KEYS[k], arg) end
  end
end
local function push(cmd, key, from, count)
  local k = 0
  while k < count do
    local m = math.min(1000, count - k)
    redis.call(cmd, key, unpack(ARGV, from + k, from + k + m - 1))
    k = k + m
  end
end
-- Wrongly typed keys read as empty (the caller logs them).
-- Removes the first entry of a list that starts with prefix p: the head in
-- the usual case (a queue drains oldest first), else a scan of the list.
local function remove(key, p)
  local head = redis.call('LINDEX', key, 0)
  if head and string.sub(head, 1, #p) == p then
    redis.call('LPOP', key)
    return
  end
  for _, e in ipairs(redis.call('LRANGE', key, 0, -1)) do
    if string.sub(e, 1, #p) == p then
      redis.call('LREM', key, 1, e)
      return
    end
  end
end
local function read_all(bad)
  local t = {}
  t[1] = redis.call('HGETALL', KEYS[1])
  for k = 2, 6 do t[k] = is_bad(bad, k) and {} or redis.call('LRANGE', KEYS[k], 0, -1) end
  return t
end
`;

/**
 * Applies one session's ops of a batch, in order, unless another node
 * claimed the session: then it returns 'stale' and writes nothing.
 * ARGV: me, grace ms, tombstone ms, now ms, dedupe window, acked (the number of J ops with an
 * id among the ops), partial ("1" when no S or D is among the ops: they change a stored session),
 * then ops:
 *   S cid owner(-|+name) ei ea wa wd will nSubs sub* nQ entry* nInf entry* nQ2 pid* nRc id*
 *   D | E entry | X "<seq>|" | I "<pid>|" entry | J "<pid>|" id | A pid | B pid
 *   U key entry (subscribe: add, or replace the entry of key where it is) | R key (unsubscribe)
 * J with an id ("" for none) is an acknowledged message: its id joins rc (the last `window`
 * kept), so a node that adopts the session knows it was completed.
 * Every op may be applied twice (a batch is retried after a failure that may have come after
 * it was applied): E skips an entry numbered at or below the queue's newest; J skips an id
 * among the last `acked` of rc (only this call's J ops can have pushed it there, since a
 * message is acknowledged once; a replay finds its ids there); the rest are idempotent as
 * they are.
 * Returns {'ok', bad...} (indexes of KEYS), {'stale', node, epoch}, or {'missing'} when the ops
 * are partial and no session is stored (Redis lost it): nothing is written then, and the caller
 * writes the whole session instead. Wrongly typed keys are deleted (they are under our prefix and
 * unreadable; the batch rewrites them).
 */
export const APPLY = CHECK_TYPES + `
local me = ARGV[1]
local bad = wrong_types()
-- An unreadable meta carries no owner to check against.
if bad[1] == 1 then redis.call('DEL', KEYS[1]) end
local node = redis.call('HGET', KEYS[1], 'node')
if node and node ~= me then return {'stale', node, redis.call('HGET', KEYS[1], 'ep') or ''} end
for _, k in ipairs(bad) do redis.call('DEL', KEYS[k]) end
local exists = redis.call('HEXISTS', KEYS[1], 'cid') == 1
-- Changes to a session Redis does not hold would be applied to nothing (and acknowledged).
if ARGV[7] == '1' and not exists then return {'missing'} end
-- The number of the newest queue entry, read at the first enqueue (nil: not read yet).
local last = nil
-- subk matches subs, checked at the first U or R. It is trusted when the last writer was a
-- node that kept it (sk = w); then it is subs' index, or empty after an S (lengths differ).
-- Otherwise (an older node wrote since, which may have rewritten subs alone) it is rebuilt,
-- once, from subs.
local sk = redis.call('HGET', KEYS[1], 'sk')
local trusted = sk ~= false and sk == redis.call('HGET', KEYS[1], 'w')
local indexed = false
local function index_subs()
  if indexed then return end
  indexed = true
  if trusted and redis.call('HLEN', KEYS[7]) == redis.call('LLEN', KEYS[2]) then return end
  trusted = true
  redis.call('DEL', KEYS[7])
  for _, e in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
    -- An unreadable entry stays out of the index (the loader skips it, logged).
    local ok, v = pcall(cjson.decode, e)
    if ok and type(v) == 'table' and type(v[1]) == 'string' then
      redis.call('HSET', KEYS[7], v[1], e)
    end
  end
end
local window = tonumber(ARGV[5])
local acked = ARGV[6]
local i = 8
local n = #ARGV
while i <= n do
  local t = ARGV[i]
  if t == 'S' then
    redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
    last = nil
    indexed = false
    trusted = true
    redis.call('HDEL', KEYS[1], 'o', 'will', 'rc')
    redis.call('HSET', KEYS[1], 'v', '1', 'cid', ARGV[i + 1], 'ei', ARGV[i + 3], 'ea', ARGV[i + 4],
      'wa', ARGV[i + 5], 'wd', ARGV[i + 6])
    local owner = ARGV[i + 2]
    if string.sub(owner, 1, 1) == '+' then redis.call('HSET', KEYS[1], 'o', string.sub(owner, 2)) end
    if ARGV[i + 7] ~= '' then redis.call('HSET', KEYS[1], 'will', ARGV[i + 7]) end
    i = i + 8
    for k = 2, 6 do
      local c = tonumber(ARGV[i])
      if c > 0 then push('RPUSH', KEYS[k], i + 1, c) end
      i = i + 1 + c
    end
    exists = true
  elseif t == 'D' then
    redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
    last = nil
    indexed = false
    trusted = true
    redis.call('HDEL', KEYS[1], 'v', 'cid', 'o', 'ei', 'ea', 'wa', 'wd', 'will', 'rc', 'w', 'sk')
    -- A claim stays (so a stale node cannot recreate the session); else nothing is left.
    if not node then redis.call('DEL', KEYS[1]) end
    exists = false
    i = i + 1
  elseif t == 'E' then
    if exists then
      -- A batch is written again after a failure it may have survived in part (or whole): an
      -- entry numbered at or below the newest one queued is a replay (a session's numbers only
      -- grow), and is skipped.
      local seq = tonumber(string.match(ARGV[i + 1], '^(%d+)|'))
      if last == nil then
        local tail = redis.call('LINDEX', KEYS[3], -1)
        last = tail and tonumber(string.match(tail, '^(%d+)|')) or -1
      end
      if seq == nil or seq > last then
        redis.call('RPUSH', KEYS[3], ARGV[i + 1])
        if seq ~= nil then last = seq end
      end
    end
    i = i + 2
  elseif t == 'X' then
    if exists then remove(KEYS[3], ARGV[i + 1]) end
    i = i + 2
  elseif t == 'I' then
    if exists then
      remove(KEYS[4], ARGV[i + 1])
      redis.call('RPUSH', KEYS[4], ARGV[i + 2])
    end
    i = i + 3
  elseif t == 'J' then
    if exists then
      remove(KEYS[4], ARGV[i + 1])
      local id = ARGV[i + 2]
      if id ~= '' and window > 0 and
        redis.call('LPOS', KEYS[6], id, 'RANK', -1, 'MAXLEN', acked) == false then
        redis.call('RPUSH', KEYS[6], id)
        redis.call('LTRIM', KEYS[6], -window, -1)
      end
    end
    i = i + 3
  elseif t == 'A' then
    if exists and redis.call('LPOS', KEYS[5], ARGV[i + 1]) == false then
      redis.call('RPUSH', KEYS[5], ARGV[i + 1])
    end
    i = i + 2
  elseif t == 'B' then
    if exists then redis.call('LREM', KEYS[5], 0, ARGV[i + 1]) end
    i = i + 2
  elseif t == 'U' then
    -- Applied twice (a replayed batch), it finds its own entry and changes nothing. A new key
    -- costs two O(1) commands; a replaced one is found by value (LPOS) where it is, so the
    -- order older versions restore stays the core's.
    if exists then
      index_subs()
      local key, e = ARGV[i + 1], ARGV[i + 2]
      local old = redis.call('HGET', KEYS[7], key)
      if old ~= e then
        local pos = old and redis.call('LPOS', KEYS[2], old)
        if pos then redis.call('LSET', KEYS[2], pos, e) else redis.call('RPUSH', KEYS[2], e) end
        redis.call('HSET', KEYS[7], key, e)
      end
    end
    i = i + 3
  elseif t == 'R' then
    if exists then
      index_subs()
      local old = redis.call('HGET', KEYS[7], ARGV[i + 1])
      if old then
        redis.call('LREM', KEYS[2], 1, old)
        redis.call('HDEL', KEYS[7], ARGV[i + 1])
      end
    end
    i = i + 2
  else
    return redis.error_reply('unknown store op ' .. tostring(t))
  end
end
if exists then
  redis.call('HSET', KEYS[1], 'w', me)
  if trusted then redis.call('HSET', KEYS[1], 'sk', me) else redis.call('HDEL', KEYS[1], 'sk') end
end
refresh_ttl(tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
local r = {'ok'}
for _, b in ipairs(bad) do r[#r + 1] = b end
return r
`;

/**
 * Reads a session; with ARGV[1] = node id it also claims it (node = me,
 * epoch + 1) in the same step, so from then on only this node writes it.
 * ARGV: me ("" = read only), tombstone ms.
 * Returns {epoch, bad, data} where data is nil when no session is stored.
 */
export const LOAD = CHECK_TYPES + `
local bad = wrong_types()
if bad[1] == 1 then return {'', bad, false} end
local ep = ''
if ARGV[1] ~= '' then
  ep = tostring(redis.call('HINCRBY', KEYS[1], 'ep', 1))
  redis.call('HSET', KEYS[1], 'node', ARGV[1])
end
if redis.call('HEXISTS', KEYS[1], 'cid') == 0 then
  if ARGV[1] ~= '' then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2])) end
  return {ep, bad, false}
end
return {ep, bad, read_all(bad)}
`;

/**
 * Adopts a session of a dead node: only when it is still owned by that node
 * (so exactly one survivor adopts it). A session that was connected becomes
 * detached: expiresAt = now + expiry interval, willAt = now + will delay.
 * ARGV: dead node, me, now ms, grace ms, tombstone ms.
 * Returns false, or {epoch, bad, data} like LOAD.
 */
export const ADOPT = CHECK_TYPES + `
local bad = wrong_types()
if bad[1] == 1 then return false end
-- The same kind of ownership passes on: a claim to the adopter, or the last writer.
local field = 'node'
if redis.call('HEXISTS', KEYS[1], 'node') == 0 then field = 'w' end
if redis.call('HGET', KEYS[1], field) ~= ARGV[1] then return false end
redis.call('HSET', KEYS[1], field, ARGV[2])
-- The adopter becomes the last writer without having written subs: sk = w must not say it kept
-- subk (the dead node may be an older one that rewrote subs alone).
if field == 'w' then redis.call('HDEL', KEYS[1], 'sk') end
local ep = tostring(redis.call('HINCRBY', KEYS[1], 'ep', 1))
if redis.call('HEXISTS', KEYS[1], 'cid') == 0 then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[5]))
  return {ep, bad, false}
end
local now = tonumber(ARGV[3])
if redis.call('HGET', KEYS[1], 'ea') == '0' then
  local ei = tonumber(redis.call('HGET', KEYS[1], 'ei'))
  local ea = 'inf'
  if ei ~= 4294967295 then ea = string.format('%d', now + ei * 1000) end
  redis.call('HSET', KEYS[1], 'ea', ea)
  if redis.call('HEXISTS', KEYS[1], 'will') == 1 then
    local wd = tonumber(redis.call('HGET', KEYS[1], 'wd') or '0')
    redis.call('HSET', KEYS[1], 'wa', string.format('%d', now + wd * 1000))
  end
end
refresh_ttl(tonumber(ARGV[4]), tonumber(ARGV[5]), now)
return {ep, bad, read_all(bad)}
`;

/**
 * Takes a session's will out of the store, once: returns it only to the
 * session's owner, and removes it in the same step.
 * ARGV: me. Returns the encoded will or false.
 */
export const TAKE_WILL = `
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then return false end
local owner = redis.call('HGET', KEYS[1], 'node') or redis.call('HGET', KEYS[1], 'w')
if owner ~= ARGV[1] then return false end
local will = redis.call('HGET', KEYS[1], 'will')
if not will then return false end
redis.call('HDEL', KEYS[1], 'will')
redis.call('HSET', KEYS[1], 'wa', '0', 'wd', '0')
return will
`;

/**
 * A retained update. KEYS: message, version, index. ARGV: topic, value ("" deletes), version
 * ("" for an update without one, from an older node: applied, and the version dropped), ttl ms
 * ("0": none), how long a deletion's version stays ("0": it is not kept). Returns 0 when a newer
 * version is stored.
 */
export const RETAIN = `
local cur = redis.call('GET', KEYS[2])
if cur and ARGV[3] ~= '' and cur > ARGV[3] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[3], ARGV[1])
  if ARGV[3] ~= '' and ARGV[5] ~= '0' then
    redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[5])
  else
    redis.call('DEL', KEYS[2])
  end
  return 1
end
if ARGV[4] ~= '0' then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[4]) else redis.call('SET', KEYS[1], ARGV[2]) end
if ARGV[3] == '' then
  redis.call('DEL', KEYS[2])
elseif ARGV[4] ~= '0' then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[2], ARGV[3])
end
redis.call('SADD', KEYS[3], ARGV[1])
return 1
`;
