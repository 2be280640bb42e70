/**
 * Lua scripts of `RedisStore`: each runs atomically on the server, so compare-and-set and `add` with
 * PyTorch's parsing need no WATCH/MULTI retry loop.
 */

/**
 * KEYS[1] = key, ARGV[1] = expected, ARGV[2] = desired. PyTorch compare-set: a missing key matches an
 * empty `expected`; returns the value that holds afterwards (or `expected` for a missing key that did not
 * match).
 */
export const COMPARE_SET_LUA = `
local cur = redis.call('GET', KEYS[1])
if cur == false then
  if ARGV[1] == '' then
    redis.call('SET', KEYS[1], ARGV[2])
    return ARGV[2]
  end
  return ARGV[1]
end
if cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return ARGV[2]
end
return cur
`;

/**
 * KEYS[1] = key, ARGV[1] = delta. INCRBY, returning the stored sum as a string (an integer reply goes
 * through ioredis's number parsing, which is off by one for some sums near 2^53). When INCRBY refuses (a
 * value that is not Redis's canonical integer, such as " 5" or "-0" or "007", which PyTorch reads as
 * std::stoll does; or a sum past 64 bits, which PyTorch wraps), the error starts with "RDZV_SLOW" and
 * `RedisStore.add` computes the sum itself and writes it with SWAP_LUA. A key of another Redis type (a
 * list, say) is refused with "RDZV_WRONGTYPE 1".
 */
export const ADD_LUA = `
local ok, res = pcall(redis.call, 'INCRBY', KEYS[1], ARGV[1])
if ok then return redis.call('GET', KEYS[1]) end
local text = tostring(res.err or res)
if string.find(text, 'WRONGTYPE', 1, true) then return redis.error_reply('RDZV_WRONGTYPE 1') end
return redis.error_reply('RDZV_SLOW ' .. text)
`;

/** KEYS[1] = key, ARGV[1] = expected, ARGV[2] = desired: sets the key when it holds `expected`; 1 if it did. */
export const SWAP_LUA = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
`;

/**
 * KEYS = the keys to read: their values (nil for a missing key), as MGET. Unlike MGET, which answers nil
 * for a key of another Redis type (a list, say), such a key is refused with "RDZV_WRONGTYPE <i>" (its
 * 1-based index): a wait would otherwise take it for missing and wait on it until its timeout.
 */
export const READ_LUA = `
local out = {}
for i, k in ipairs(KEYS) do
  local ok, v = pcall(redis.call, 'GET', k)
  if not ok then return redis.error_reply('RDZV_WRONGTYPE ' .. i) end
  out[i] = v
end
return out
`;
