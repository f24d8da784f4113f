//! The Lua scripts that make `create` and an append that changes the state atomic on the Redis
//! server. They are sent whole with `EVAL` (Redis caches the compiled script by its hash).
//!
//! The seven state indexes are passed as `KEYS` in the order of [`STATES`], so every key a
//! script touches is declared (a Redis Cluster then needs the whole prefix in one slot).

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

/// KEYS: header, log, workflow index, the 7 state indexes.
/// ARGV: member, run_id, payload JSON, created_at, workflow, id.
/// Returns 1 when created, 0 when an unfinished run holds the id. The new log starts with the
/// run id as its marker entry, so a plain `RPUSHX` appends only to a created transaction.
pub(crate) const CREATE: &str = r"
local STATES = {not_started = 4, invoking = 5, waiting_to_compensate = 6, compensating = 7,
                done = 8, reverted = 9, failed = 10}
local old = redis.call('HGET', KEYS[1], 'state')
if old then
  if old ~= 'done' and old ~= 'reverted' and old ~= 'failed' then return 0 end
  redis.call('ZREM', KEYS[STATES[old]], ARGV[1])
end
redis.call('DEL', KEYS[1], KEYS[2])
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'workflow', ARGV[5], 'id', ARGV[6], 'run_id', ARGV[2],
           'payload', ARGV[3], 'created_at', ARGV[4], 'state', 'not_started',
           'updated_at', t[1] * 1000 + math.floor(t[2] / 1000))
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
return 1
";

/// KEYS: header, log, the 7 state indexes.
/// ARGV: member, the new state, the records as JSON, one per list entry.
/// Returns the log length after the append, or -1 when the transaction was never created.
pub(crate) const APPEND: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local n = #ARGV
local len = 0
local i = 3
while i <= n do
  local j = math.min(i + 999, n)
  len = redis.call('RPUSH', KEYS[2], unpack(ARGV, i, j))
  i = j + 1
end
local new = ARGV[2]
if new ~= '' then
  local STATES = {not_started = 3, invoking = 4, waiting_to_compensate = 5, compensating = 6,
                  done = 7, reverted = 8, failed = 9}
  local old = redis.call('HGET', KEYS[1], 'state')
  if old ~= new then
    local created = redis.call('HGET', KEYS[1], 'created_at')
    if old and STATES[old] then redis.call('ZREM', KEYS[STATES[old]], ARGV[1]) end
    redis.call('ZADD', KEYS[STATES[new]], created, ARGV[1])
    local t = redis.call('TIME')
    redis.call('HSET', KEYS[1], 'state', new, 'updated_at', t[1] * 1000 + math.floor(t[2] / 1000))
  end
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
