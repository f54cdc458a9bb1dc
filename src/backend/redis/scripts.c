/*
 * scripts.c - the Lua scripts of the Redis backend.  Every write is one of
 * them (EVALSHA, resent as EVAL on NOSCRIPT): each checks the tokens and
 * writes value, token and index entry together, atomically in its slot.
 * kv_redis_open loads them on every master (SCRIPT LOAD).
 */
#include "backend/redis/redis_int.h"

/* Lua: the next token of a slot: one more than its counter, and at least
 * the server's clock in microseconds, so that a counter that went back
 * (a failover that lost writes not yet replicated) still hands out tokens
 * above every token it gave before, unless the new master's clock is
 * behind the old one's by more than the failover took.  Stored with %d:
 * Lua 5.1 would print a number this large in exponent form. */
#define LUA_NEXTTOK                                                         \
    "local function nexttok(k)\n"                                           \
    "  local c = tonumber(redis.call('GET', k) or '0')\n"                   \
    "  local tm = redis.call('TIME')\n"                                     \
    "  local t = tonumber(tm[1]) * 1000000 + tonumber(tm[2])\n"             \
    "  if t <= c then t = c + 1 end\n"                                      \
    "  local ts = string.format('%d', t)\n"                                 \
    "  redis.call('SET', k, ts)\n"                                          \
    "  return t, ts\n"                                                      \
    "end\n"

/* KEYS: counter, index, records.  ARGV: atomic, then token ('*' for
 * KV_TOKEN_ANY: write whatever is there), value, member per record.
 * Returns per record its new token, 0 on conflict (1 for an unwritten
 * record of an atomic batch that had a conflict). */
static const char script_put[] =
    LUA_NEXTTOK
    "local n = #KEYS - 2\n"
    "local res = {}\n"
    "local bad = false\n"
    "for i = 1, n do\n"
    "  local cur = redis.call('HGET', KEYS[i+2], 't')\n"
    "  local want = ARGV[3*i-1]\n"
    "  if want == '*' or (cur == false and want == '0') or cur == want then\n"
    "    res[i] = 1\n"
    "  else res[i] = 0; bad = true end\n"
    "end\n"
    "if bad and ARGV[1] == '1' then return res end\n"
    "for i = 1, n do\n"
    "  if res[i] == 1 then\n"
    "    local t, ts = nexttok(KEYS[1])\n"
    "    redis.call('HSET', KEYS[i+2], 'v', ARGV[3*i], 't', ts)\n"
    "    redis.call('ZADD', KEYS[2], 0, ARGV[3*i+1])\n"
    "    res[i] = t\n"
    "  end\n"
    "end\n"
    "return res\n";

/* KEYS: counter, index, records.  ARGV: atomic, then token ('*': delete
 * whatever is there), member.  Returns per record 1 (deleted, or would have
 * been in an atomic batch that conflicted), 0 on conflict, 2 for an
 * unconditional delete of an absent key (never a conflict). */
static const char script_del[] =
    "local n = #KEYS - 2\n"
    "local res = {}\n"
    "local bad = false\n"
    "for i = 1, n do\n"
    "  local cur = redis.call('HGET', KEYS[i+2], 't')\n"
    "  if ARGV[2*i] == '*' then\n"
    "    if cur ~= false then res[i] = 1 else res[i] = 2 end\n"
    "  elseif cur ~= false and cur == ARGV[2*i] then res[i] = 1\n"
    "  else res[i] = 0; bad = true end\n"
    "end\n"
    "if bad and ARGV[1] == '1' then return res end\n"
    "for i = 1, n do\n"
    "  if res[i] == 1 then\n"
    "    redis.call('DEL', KEYS[i+2])\n"
    "    redis.call('ZREM', KEYS[2], ARGV[2*i+1])\n"
    "  end\n"
    "end\n"
    "return res\n";

#define LUA_STR_(x) #x
#define LUA_STR(x) LUA_STR_(x)
/* KEYS: counter, index.  ARGV: base, then from, to (encoded prefixes).
 * Returns 1 (moved), 0 (a destination exists), or, when a moved key would
 * pass a key limit of kvstore.h (its encoding is as long as its id, one
 * 0x00 per namespace), {-1, key} for KV_KEY_MAX_LEN and {-2, key} for
 * KV_KEY_MAX_DEPTH; nothing moves then. */
static const char script_move[] =
    LUA_NEXTTOK
    "local base = ARGV[1]\n"
    "local moving = {}\n"
    "local plan = {}\n"
    "for i = 2, #ARGV, 2 do\n"
    "  local f, t = ARGV[i], ARGV[i+1]\n"
    "  local ms = redis.call('ZRANGEBYLEX', KEYS[2], '[' .. f,\n"
    "                        '(' .. string.sub(f, 1, -2) .. '\\001')\n"
    "  for _, m in ipairs(ms) do\n"
    "    moving[m] = true\n"
    "    local d = t .. string.sub(m, #f + 1)\n"
    "    if #d > " LUA_STR(KV_KEY_MAX_LEN) " then return {-1, d} end\n"
    "    local _, depth = string.gsub(d, '%z', '')\n"
    "    if depth > " LUA_STR(KV_KEY_MAX_DEPTH) " then return {-2, d} end\n"
    "    plan[#plan+1] = {m, d}\n"
    "  end\n"
    "end\n"
    "for _, p in ipairs(plan) do\n"
    "  if not moving[p[2]] and redis.call('ZSCORE', KEYS[2], p[2]) then\n"
    "    return 0\n"
    "  end\n"
    "end\n"
    "local vals = {}\n"
    "for i, p in ipairs(plan) do\n"
    "  vals[i] = redis.call('HGET', base .. p[1], 'v')\n"
    "  redis.call('DEL', base .. p[1])\n"
    "  redis.call('ZREM', KEYS[2], p[1])\n"
    "end\n"
    "for i, p in ipairs(plan) do\n"
    "  local t, ts = nexttok(KEYS[1])\n"
    "  redis.call('HSET', base .. p[2], 'v', vals[i], 't', ts)\n"
    "  redis.call('ZADD', KEYS[2], 0, p[2])\n"
    "end\n"
    "return 1\n";

/* KEYS: index.  ARGV: base, then encoded prefixes. */
static const char script_drop[] =
    "local base = ARGV[1]\n"
    "local cnt = 0\n"
    "for i = 2, #ARGV do\n"
    "  local lo = '[' .. ARGV[i]\n"
    "  local hi = '(' .. string.sub(ARGV[i], 1, -2) .. '\\001'\n"
    "  local ms = redis.call('ZRANGEBYLEX', KEYS[1], lo, hi)\n"
    "  for _, m in ipairs(ms) do\n"
    "    redis.call('DEL', base .. m)\n"
    "    cnt = cnt + 1\n"
    "  end\n"
    "  if #ms > 0 then redis.call('ZREMRANGEBYLEX', KEYS[1], lo, hi) end\n"
    "end\n"
    "return cnt\n";

const char *const redis__scripts[NSCRIPTS] = {script_put, script_del,
                                              script_move, script_drop};
