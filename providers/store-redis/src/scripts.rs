//! The Lua scripts that make every write of the store atomic on the Redis server: `create`,
//! `append` (with its epoch check), `claim`, `release`, `claim_due` and `renew`. They are sent
//! whole with `EVAL` (Redis caches the compiled script by its hash).
//!
//! The seven state indexes are passed as `KEYS` in the order of [`STATES`]. Keys named by the
//! caller are declared; keys named only by stored data (the set of a transaction's previous
//! owner, the header of a member found in an index) are computed in the script from the prefix
//! passed in `ARGV`: on a Redis Cluster the prefix must carry a hash tag (`{gorgon}:store:`) so
//! that every key of a store lives in one slot.
//!
//! Invariants the scripts keep, per transaction `<member>` of workflow `<wf>`:
//! - in `leased:<wf>` (scored by `until`) exactly when it has an owner and is unfinished;
//! - in `parked:<wf>` (scored by `wake_at`) exactly when it has no owner, is unfinished and has
//!   a wake-up time;
//! - in `owned:<owner>` exactly when `owner` holds it.

/// Transaction states in the order their index keys are passed to the scripts.
pub(crate) const STATES: [&str; 7] = [
    "not_started",
    "invoking",
    "waiting_to_compensate",
    "compensating",
    "done",
    "reverted",
    "failed",
];

/// KEYS: header, log, workflow index, the 7 state indexes, parked index, leased index.
/// ARGV: member, run_id, payload JSON, created_at, workflow, id, prefix, '1' with a lease (else
/// '0'), owner, lease ms. Lease ends and wake-up times are Redis's time (`TIME`).
/// Returns the new run's epoch (one more than the finished run it replaces, else 1), or 0 when
/// an unfinished run holds the id. The new log starts with the run id as its marker entry.
pub(crate) const CREATE: &str = r"
local STATES = {not_started = 4, invoking = 5, waiting_to_compensate = 6, compensating = 7,
                done = 8, reverted = 9, failed = 10}
local old = redis.call('HMGET', KEYS[1], 'state', 'epoch', 'owner')
local epoch = 1
if old[1] then
  if old[1] ~= 'done' and old[1] ~= 'reverted' and old[1] ~= 'failed' then return 0 end
  redis.call('ZREM', KEYS[STATES[old[1]]], ARGV[1])
  if old[3] then redis.call('SREM', ARGV[7] .. 'owned:' .. old[3], ARGV[1]) end
  redis.call('ZREM', KEYS[11], ARGV[1])
  redis.call('ZREM', KEYS[12], ARGV[1])
  epoch = tonumber(old[2] or '1') + 1
end
redis.call('DEL', KEYS[1], KEYS[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'workflow', ARGV[5], 'id', ARGV[6], 'run_id', ARGV[2],
           'payload', ARGV[3], 'created_at', ARGV[4], 'state', 'not_started', 'epoch', epoch,
           'updated_at', now)
if ARGV[8] == '1' then
  local lease_end = now + tonumber(ARGV[10])
  redis.call('HSET', KEYS[1], 'owner', ARGV[9], 'until', lease_end)
  redis.call('ZADD', KEYS[12], lease_end, ARGV[1])
  redis.call('SADD', ARGV[7] .. 'owned:' .. ARGV[9], ARGV[1])
else
  redis.call('HSET', KEYS[1], 'until', 0, 'wake_at', now)
  redis.call('ZADD', KEYS[11], now, ARGV[1])
end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
return epoch
";

/// KEYS: header, log, the 7 state indexes, parked index, leased index.
/// ARGV: member, the new state ('' when the batch has no transaction record), epoch, prefix,
/// then the records as JSON, one per list entry.
/// Returns the log length after the append, -1 when the transaction was never created, -2 when
/// `epoch` is not the transaction's (nothing written). A finished transaction loses its owner
/// and wake-up time.
pub(crate) const APPEND: &str = r"
local h = redis.call('HMGET', KEYS[1], 'state', 'epoch', 'owner', 'created_at')
if not h[1] then return -1 end
if tonumber(h[2] or '1') ~= tonumber(ARGV[3]) then return -2 end
local n = #ARGV
local len = 0
local i = 5
while i <= n do
  local j = math.min(i + 999, n)
  len = redis.call('RPUSH', KEYS[2], unpack(ARGV, i, j))
  i = j + 1
end
if n < 5 then len = redis.call('LLEN', KEYS[2]) end
local state = h[1]
local new = ARGV[2]
if new ~= '' and new ~= state then
  local STATES = {not_started = 3, invoking = 4, waiting_to_compensate = 5, compensating = 6,
                  done = 7, reverted = 8, failed = 9}
  if STATES[state] then redis.call('ZREM', KEYS[STATES[state]], ARGV[1]) end
  redis.call('ZADD', KEYS[STATES[new]], h[4], ARGV[1])
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'state', new, 'updated_at', t[1] * 1000 + math.floor(t[2] / 1000))
  state = new
end
if state == 'done' or state == 'reverted' or state == 'failed' then
  if h[3] then
    redis.call('SREM', ARGV[4] .. 'owned:' .. h[3], ARGV[1])
    redis.call('HDEL', KEYS[1], 'owner')
  end
  redis.call('HDEL', KEYS[1], 'wake_at')
  redis.call('ZREM', KEYS[10], ARGV[1])
  redis.call('ZREM', KEYS[11], ARGV[1])
end
return len
";

/// KEYS: header, log, workflow index, the `done`, `reverted` and `failed` state indexes.
/// ARGV: member, the cut (Unix ms).
/// Deletes a finished transaction last updated before the cut (header, log, index entries);
/// returns 1 when it did, 0 when the transaction is gone, unfinished, or newer (a new run may
/// have started since it was chosen).
pub(crate) const PURGE: &str = r"
local f = redis.call('HMGET', KEYS[1], 'state', 'updated_at', 'created_at')
local index = ({done = 4, reverted = 5, failed = 6})[f[1] or '']
if not index then return 0 end
local updated = tonumber(f[2] or f[3])
if not updated or updated >= tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[index], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
";

/// KEYS: header, parked index, leased index.
/// ARGV: member, prefix, owner, lease ms.
/// Returns `{1, epoch, ''}` when granted (the epoch moves on when the lease changes hands),
/// `{2, 0, owner}` when another owner's lease runs now, `{0, 0, ''}` when not found.
pub(crate) const CLAIM: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease_end = now + tonumber(ARGV[4])
local h = redis.call('HMGET', KEYS[1], 'state', 'owner', 'until', 'epoch')
if not h[1] then return {0, 0, ''} end
local owner = h[2]
if owner and owner ~= ARGV[3] and tonumber(h[3] or '0') >= now then
  return {2, 0, owner}
end
local epoch = tonumber(h[4] or '1')
if owner ~= ARGV[3] then
  epoch = epoch + 1
  if owner then redis.call('SREM', ARGV[2] .. 'owned:' .. owner, ARGV[1]) end
  redis.call('SADD', ARGV[2] .. 'owned:' .. ARGV[3], ARGV[1])
end
redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'until', lease_end, 'epoch', epoch)
redis.call('HDEL', KEYS[1], 'wake_at')
redis.call('ZREM', KEYS[2], ARGV[1])
if h[1] ~= 'done' and h[1] ~= 'reverted' and h[1] ~= 'failed' then
  redis.call('ZADD', KEYS[3], lease_end, ARGV[1])
end
return {1, epoch, ''}
";

/// KEYS: header, parked index, leased index.
/// ARGV: member, prefix, epoch, wake-up delay in ms ('' for none).
/// Returns 1 when released, 0 when the epoch is not current (or there is no transaction).
pub(crate) const RELEASE: &str = r"
local h = redis.call('HMGET', KEYS[1], 'state', 'owner', 'epoch')
if not h[1] or tonumber(h[3] or '1') ~= tonumber(ARGV[3]) then return 0 end
if h[2] then
  redis.call('SREM', ARGV[2] .. 'owned:' .. h[2], ARGV[1])
  redis.call('HDEL', KEYS[1], 'owner')
end
redis.call('ZREM', KEYS[3], ARGV[1])
local finished = h[1] == 'done' or h[1] == 'reverted' or h[1] == 'failed'
if ARGV[4] ~= '' and not finished then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local wake_at = now + tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], 'wake_at', wake_at)
  redis.call('ZADD', KEYS[2], wake_at, ARGV[1])
else
  redis.call('HDEL', KEYS[1], 'wake_at')
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
";

/// KEYS: the parked and leased indexes of each workflow, in pairs.
/// ARGV: prefix, owner, lease ms, limit.
/// Claims up to `limit` transactions: parked ones with `wake_at <= now`, then owned ones with
/// `until < now` (Redis's time), each one epoch later. Returns `{workflow, id, epoch, ...}`.
pub(crate) const CLAIM_DUE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix, owner = ARGV[1], ARGV[2]
local lease_end = now + tonumber(ARGV[3])
local left = tonumber(ARGV[4])
local out = {}
local seen = {}
local function take(member, parked, leased)
  if seen[member] then return end
  seen[member] = true
  local key = prefix .. 'h:' .. member
  local h = redis.call('HMGET', key, 'state', 'owner', 'epoch', 'workflow', 'id')
  if not h[1] or h[1] == 'done' or h[1] == 'reverted' or h[1] == 'failed' then
    redis.call('ZREM', parked, member)
    redis.call('ZREM', leased, member)
    return
  end
  if h[2] then redis.call('SREM', prefix .. 'owned:' .. h[2], member) end
  if not h[3] then redis.call('HSET', key, 'epoch', 1) end
  local epoch = redis.call('HINCRBY', key, 'epoch', 1)
  redis.call('HSET', key, 'owner', owner, 'until', lease_end)
  redis.call('HDEL', key, 'wake_at')
  redis.call('ZREM', parked, member)
  redis.call('ZADD', leased, lease_end, member)
  redis.call('SADD', prefix .. 'owned:' .. owner, member)
  out[#out + 1] = h[4]
  out[#out + 1] = h[5]
  out[#out + 1] = tostring(epoch)
  left = left - 1
end
for i = 1, #KEYS, 2 do
  if left <= 0 then break end
  local due = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now, 'LIMIT', 0, left)
  for _, member in ipairs(due) do take(member, KEYS[i], KEYS[i + 1]) end
  if left > 0 then
    local lapsed = redis.call('ZRANGEBYSCORE', KEYS[i + 1], '-inf', '(' .. now, 'LIMIT', 0, left)
    for _, member in ipairs(lapsed) do take(member, KEYS[i], KEYS[i + 1]) end
  end
end
return out
";

/// KEYS: the owner's set.
/// ARGV: prefix, owner, lease ms, then the members to renew.
/// Extends the owner's leases on these members to now (Redis's time) plus the lease; returns
/// how many.
pub(crate) const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix, owner = ARGV[1], ARGV[2]
local lease_end = now + tonumber(ARGV[3])
local n = 0
for i = 4, #ARGV do
  local member = ARGV[i]
  local key = prefix .. 'h:' .. member
  local h = redis.call('HMGET', key, 'owner', 'state')
  if h[1] == owner then
    redis.call('HSET', key, 'until', lease_end)
    if h[2] ~= 'done' and h[2] ~= 'reverted' and h[2] ~= 'failed' then
      local workflow = string.match(member, '^([^:]*):')
      redis.call('ZADD', prefix .. 'leased:' .. workflow, lease_end, member)
    end
    n = n + 1
  else
    redis.call('SREM', KEYS[1], member)
  end
end
return n
";
