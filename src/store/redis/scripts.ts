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
 * KEYS[1] = key, ARGV[1] = delta. INCRBY where the value is a plain integer; otherwise the value is
 * parsed as C++ \`std::stoll\` does (leading whitespace, sign, digits; the rest ignored), rewritten as
 * that integer, then incremented. Errors start with "RDZV_NOT_INTEGER" for a value without digits.
 */
export const ADD_LUA = `
local ok, res = pcall(redis.call, 'INCRBY', KEYS[1], ARGV[1])
if ok then return res end
local cur = redis.call('GET', KEYS[1])
if cur == false then return redis.error_reply('RDZV_ADD ' .. tostring(res.err or res)) end
local digits = string.match(cur, '^[ \\t\\n\\v\\f\\r]*([+-]?%d+)')
if digits == nil then return redis.error_reply('RDZV_NOT_INTEGER the stored value is not an integer') end
if string.sub(digits, 1, 1) == '+' then digits = string.sub(digits, 2) end
digits = string.gsub(digits, '^(-?)0+(%d)', '%1%2')
redis.call('SET', KEYS[1], digits)
local ok2, res2 = pcall(redis.call, 'INCRBY', KEYS[1], ARGV[1])
if ok2 then return res2 end
redis.call('SET', KEYS[1], cur)
return redis.error_reply('RDZV_ADD ' .. tostring(res2.err or res2))
`;
