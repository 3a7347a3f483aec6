/* SPDX-License-Identifier: MIT */
/*
 * scripts: texts of the Lua scripts (see scripts.h). Every write to a key
 * deletes the key's lease first, so a fill that was granted before the write
 * finds no lease and is refused (the stale-set problem). A lease's value is
 * "token epoch gen fingerprint": fill also refuses when a pattern or tag
 * invalidation moved the epoch, when the namespace's generation moved, or
 * when the key changed under a plain Redis client (fingerprint "-" means the
 * key was absent at grant, else the SHA1 of the stale value then served).
 */
#include "daemon/scripts.h"

#define PRELUDE                                                                                    \
        "local gk = KEYS[1]\n"                                                                     \
        "local base, M = ARGV[1], ARGV[2]\n"                                                       \
        "local function now_us() local t = redis.call('TIME')\n"                                   \
        "  return string.format('%.0f', t[1] * 1000000 + t[2]) end\n"                             \
        "local function gen(create)\n"                                                             \
        "  if gk == '' then return '' end\n"                                                       \
        "  local g = redis.call('GET', gk)\n"                                                      \
        "  if g then return g end\n"                                                               \
        "  if not create then return nil end\n"                                                    \
        "  g = now_us(); redis.call('SET', gk, g); return g end\n"                                 \
        "local function dkey(g, k) if gk == '' then return base .. k end\n"                        \
        "  return base .. g .. '\\0' .. k end\n"                                                   \
        "local function lkey(dk, f) return M .. 'lease\\0' .. dk .. '\\0' .. f end\n"              \
        "local function fkey(dk, f) return M .. 'fresh\\0' .. dk .. '\\0' .. f end\n"

static const char *const texts[SCRIPT_COUNT] = {
        [SCRIPT_READ] = PRELUDE
        "local g = gen(false)\n"
        "local out = {}\n"
        "for i = 3, #ARGV do\n"
        "  if g == nil then out[#out + 1] = false\n"
        "  else out[#out + 1] = redis.call('GET', dkey(g, ARGV[i])) end\n"
        "end\n"
        "return out\n",

        [SCRIPT_EXISTS] = PRELUDE
        "local g = gen(false)\n"
        "if g == nil then return 0 end\n"
        "local n = 0\n"
        "for i = 3, #ARGV do n = n + redis.call('EXISTS', dkey(g, ARGV[i])) end\n"
        "return n\n",

        [SCRIPT_TTL] = PRELUDE
        "local g = gen(false)\n"
        "if g == nil then return -2 end\n"
        "return redis.call('TTL', dkey(g, ARGV[3]))\n",

        [SCRIPT_WRITE] = PRELUDE
        "local g = gen(true)\n"
        "local px, fpx, nt = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])\n"
        "local i = 6 + nt\n"
        "while i < #ARGV do\n"
        "  local dk = dkey(g, ARGV[i])\n"
        "  redis.call('DEL', lkey(dk, ''))\n"
        "  redis.call('SET', dk, ARGV[i + 1], 'PX', px)\n"
        "  if fpx > 0 then redis.call('SET', fkey(dk, ''), '1', 'PX', fpx)\n"
        "  else redis.call('DEL', fkey(dk, '')) end\n"
        "  for t = 6, 5 + nt do\n"
        "    local tk = M .. 'tag\\0' .. ARGV[t]\n"
        "    redis.call('SADD', tk, dk)\n"
        "    if redis.call('PTTL', tk) < px then redis.call('PEXPIRE', tk, px) end\n"
        "  end\n"
        "  i = i + 2\n"
        "end\n"
        "return 1\n",

        [SCRIPT_DEL] = PRELUDE
        "local g = gen(false)\n"
        "if g == nil then return 0 end\n"
        "local n = 0\n"
        "for i = 3, #ARGV do\n"
        "  local dk = dkey(g, ARGV[i])\n"
        "  redis.call('DEL', lkey(dk, ''))\n"
        "  n = n + redis.call('UNLINK', dk)\n"
        "end\n"
        "return n\n",

        [SCRIPT_EXPIRE] = PRELUDE
        "local g = gen(false)\n"
        "if g == nil then return 0 end\n"
        "local dk = dkey(g, ARGV[3])\n"
        "redis.call('DEL', lkey(dk, ''))\n"
        "return redis.call('EXPIRE', dk, ARGV[4])\n",

        [SCRIPT_HGET] = PRELUDE
        "local g = gen(false)\n"
        "if g == nil then return false end\n"
        "return redis.call('HGET', dkey(g, ARGV[3]), ARGV[4])\n",

        [SCRIPT_HGETALL] = PRELUDE
        "local g = gen(false)\n"
        "if g == nil then return {} end\n"
        "return redis.call('HGETALL', dkey(g, ARGV[3]))\n",

        [SCRIPT_HSET] = PRELUDE
        "local g = gen(true)\n"
        "local dk = dkey(g, ARGV[3])\n"
        "local px = tonumber(ARGV[4])\n"
        "for i = 5, #ARGV - 1, 2 do\n"
        "  redis.call('DEL', lkey(dk, ARGV[i]))\n"
        "  redis.call('HSET', dk, ARGV[i], ARGV[i + 1])\n"
        "end\n"
        "redis.call('PEXPIRE', dk, px)\n"
        "return 1\n",

        [SCRIPT_HDEL] = PRELUDE
        "local g = gen(false)\n"
        "if g == nil then return 0 end\n"
        "local dk = dkey(g, ARGV[3])\n"
        "local n = 0\n"
        "for i = 4, #ARGV do\n"
        "  redis.call('DEL', lkey(dk, ARGV[i]))\n"
        "  n = n + redis.call('HDEL', dk, ARGV[i])\n"
        "end\n"
        "return n\n",

        /* -> {1, value, stale} | {2, token, gen} | {3, pttl, gen} | {4, value, token, gen} */
        [SCRIPT_GOS] = PRELUDE
        "local g = gen(true)\n"
        "local dk, f = dkey(g, ARGV[3]), ARGV[4]\n"
        "local lk = lkey(dk, f)\n"
        "local v\n"
        "if f ~= '' then v = redis.call('HGET', dk, f) else v = redis.call('GET', dk) end\n"
        "local fp = '-'\n"
        "if v then fp = redis.sha1hex(v) end\n"
        "local lv = ARGV[5] .. ' ' .. (redis.call('GET', M .. 'epoch') or '0') .. ' ' .. g .. ' ' .. fp\n"
        "if v and ARGV[7] ~= '1' then\n"
        "  local stale = string.byte(v, 1) == 193 and string.byte(v, 2) == 75 and\n"
        "    #v >= 4 and bit.band(string.byte(v, 4), 2) ~= 0 and\n"
        "    redis.call('EXISTS', fkey(dk, f)) == 0\n"
        "  if not stale then return {1, v, 0} end\n"
        "  if redis.call('SET', lk, lv, 'NX', 'PX', ARGV[6]) then return {4, v, ARGV[5], g} end\n"
        "  return {1, v, 1}\n"
        "end\n"
        "if redis.call('SET', lk, lv, 'NX', 'PX', ARGV[6]) then return {2, ARGV[5], g} end\n"
        /* The same token again (the script was sent twice): it is ours. */
        "if string.match(redis.call('GET', lk) or '', '^(%S+)') == ARGV[5] then\n"
        "  return {2, ARGV[5], g} end\n"
        "return {3, redis.call('PTTL', lk), g}\n",

        /* -> 1 written | 0 refused */
        [SCRIPT_FILL] = PRELUDE
        "local g = gen(false)\n"
        "if g == nil then return 0 end\n"
        "local dk, f = dkey(g, ARGV[3]), ARGV[4]\n"
        "local lk = lkey(dk, f)\n"
        "local l = redis.call('GET', lk)\n"
        "if not l then return 0 end\n"
        "local tok, ep, lg, fp = string.match(l, '^(%S+) (%S+) (%S*) (%S+)$')\n"
        "if tok ~= ARGV[5] then return 0 end\n"
        "redis.call('DEL', lk)\n"
        /* Refused after the lease was dropped: waiters elsewhere must look again now. */
        "local function refuse()\n"
        "  redis.call('PUBLISH', M .. 'events', 'release ' .. lk); return 0 end\n"
        "if lg ~= g then return refuse() end\n"
        "if (redis.call('GET', M .. 'epoch') or '0') ~= ep then return refuse() end\n"
        "local cur\n"
        "if f ~= '' then cur = redis.call('HGET', dk, f) else cur = redis.call('GET', dk) end\n"
        "if fp == '-' then if cur then return refuse() end\n"
        "elseif not cur or redis.sha1hex(cur) ~= fp then return refuse() end\n"
        "local px, fpx, nt = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])\n"
        "if f ~= '' then\n"
        "  redis.call('HSET', dk, f, ARGV[6])\n"
        "  if redis.call('PTTL', dk) < px then redis.call('PEXPIRE', dk, px) end\n"
        "else redis.call('SET', dk, ARGV[6], 'PX', px) end\n"
        "if fpx > 0 then redis.call('SET', fkey(dk, f), '1', 'PX', fpx)\n"
        "else redis.call('DEL', fkey(dk, f)) end\n"
        "for t = 10, 9 + nt do\n"
        "  local tk = M .. 'tag\\0' .. ARGV[t]\n"
        "  redis.call('SADD', tk, dk)\n"
        "  if redis.call('PTTL', tk) < px then redis.call('PEXPIRE', tk, px) end\n"
        "end\n"
        "redis.call('PUBLISH', M .. 'events', 'fill ' .. lk)\n"
        "return 1\n",

        [SCRIPT_RELEASE] = PRELUDE
        "local g = gen(false)\n"
        "if g == nil then return 0 end\n"
        "local lk = lkey(dkey(g, ARGV[3]), ARGV[4])\n"
        "local l = redis.call('GET', lk)\n"
        "if not l or string.match(l, '^(%S+)') ~= ARGV[5] then return 0 end\n"
        "redis.call('DEL', lk)\n"
        "redis.call('PUBLISH', M .. 'events', 'release ' .. lk)\n"
        "return 1\n",

        /* Lua's unpack() fails near 8,000 values: UNLINK in batches. */
        [SCRIPT_TAGS] = PRELUDE
        "local n = 0\n"
        "for t = 3, #ARGV do\n"
        "  local tk = M .. 'tag\\0' .. ARGV[t]\n"
        "  local members = redis.call('SMEMBERS', tk)\n"
        "  for i = 1, #members, 4000 do\n"
        "    n = n + redis.call('UNLINK', unpack(members, i, math.min(i + 3999, #members)))\n"
        "  end\n"
        "  redis.call('DEL', tk)\n"
        "end\n"
        "redis.call('INCR', M .. 'epoch')\n"
        "return n\n",

        /* A generation never repeats, even if its key was evicted or deleted:
         * max(old + 1, Redis's clock in microseconds): a generation key deleted and
 * seeded again within the same millisecond must still not repeat. */
        [SCRIPT_BUMP] = PRELUDE
        "local old = tonumber(redis.call('GET', gk) or '0')\n"
        "local n = math.max(old + 1, tonumber(now_us()))\n"
        "local s = string.format('%.0f', n)\n"
        "redis.call('SET', gk, s)\n"
        "redis.call('PUBLISH', M .. 'events', 'gen ' .. s)\n"
        "return s\n",

        [SCRIPT_EPOCH] = PRELUDE
        "return redis.call('INCR', M .. 'epoch')\n",
};

const char *
script_text(enum script_id id)
{
        return texts[id];
}

int
script_is_ro(enum script_id id)
{
        return id == SCRIPT_READ || id == SCRIPT_EXISTS || id == SCRIPT_TTL ||
               id == SCRIPT_HGET || id == SCRIPT_HGETALL;
}
