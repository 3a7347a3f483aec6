/* SPDX-License-Identifier: MIT */
/*
 * scripts: the Lua scripts kcached runs in Redis. Each is sent whole with
 * EVAL (EVAL_RO for reads, which replicas accept): Redis caches compiled
 * scripts by digest, and a script cache emptied by a restart or a failover
 * can never surface as NOSCRIPT.
 *
 * Calling convention: numkeys is 1 and KEYS[1] is the namespace's generation
 * key, or "" for plain keys. ARGV[1] is the data key base (key_prefix, or
 * key_prefix NUL ns NUL), ARGV[2] the metadata base M; see cache-spec in
 * proto/PROTOCOL.md for the key layout. Generations are resolved inside
 * Redis, so a namespace flush is seen by every kcached at once.
 */
#ifndef KCACHE_SCRIPTS_H
#define KCACHE_SCRIPTS_H

enum script_id {
        SCRIPT_READ,     /* ARGV[3..]: keys -> [value|nil, ...] */
        SCRIPT_EXISTS,   /* ARGV[3..]: keys -> count */
        SCRIPT_TTL,      /* ARGV[3]: key -> seconds */
        SCRIPT_WRITE,    /* ARGV[3] px, [4] fresh px, [5] n tags, tags, key, value, ... -> 1 */
        SCRIPT_DEL,      /* ARGV[3..]: keys -> count */
        SCRIPT_EXPIRE,   /* ARGV[3] key, [4] seconds -> 0|1 */
        SCRIPT_HGET,     /* ARGV[3] key, [4] field -> value|nil */
        SCRIPT_HGETALL,  /* ARGV[3] key -> [field, value, ...] */
        SCRIPT_HSET,     /* ARGV[3] key, [4] px, field, value, ... -> 1 */
        SCRIPT_HDEL,     /* ARGV[3] key, fields... -> count */
        SCRIPT_GOS,      /* get_or_set: ARGV[3] key, [4] field, [5] token, [6] lease px, [7] force */
        SCRIPT_FILL,     /* ARGV[3] key, [4] field, [5] token, [6] value, [7] px, [8] fresh px, [9] n tags, tags */
        SCRIPT_RELEASE,  /* ARGV[3] key, [4] field, [5] token -> 0|1 */
        SCRIPT_TAGS,     /* ARGV[3..]: tags -> keys deleted */
        SCRIPT_BUMP,     /* namespace generation -> new generation */
        SCRIPT_EPOCH,    /* pattern invalidation finished -> new epoch */
        SCRIPT_COUNT
};

/* The script's full text (prelude included) and whether it only reads. */
const char *script_text(enum script_id id);
int script_is_ro(enum script_id id);

#endif
