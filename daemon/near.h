/* SPDX-License-Identifier: MIT */
/*
 * near: the near cache — hot plain-key values kept in kcached's memory and
 * kept correct by Redis itself (client-side caching, RESP2 style).
 *
 *   sub: CLIENT ID, SUBSCRIBE __redis__:invalidate <heartbeat channel>
 *   trk: CLIENT TRACKING on REDIRECT <sub id> BCAST PREFIX <key_prefix>
 *   every write to a key under the prefix, by anyone -> invalidation -> evict
 *
 * Entries are served only while both connections are up and the heartbeat
 * (a PUBLISH from a pool connection that must come back through sub within
 * near_heartbeat_ms) is fresh; any doubt flushes everything and reads go to
 * Redis until tracking is back. An entry never outlives the key's PTTL nor
 * near_cache_ttl_ms. Fills race with invalidations through placeholders: a
 * fill whose key was invalidated while the GET was out is served but not
 * kept. Eviction is S3-FIFO (small FIFO, main FIFO with frequency bits, a
 * ghost of recently evicted keys), bounded by near_cache_bytes counting keys,
 * values and per-entry overhead.
 */
#ifndef KCACHE_NEAR_H
#define KCACHE_NEAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct server;
struct json;

int near_init(struct server *srv);
void near_deinit(void);

/* True when entries may be served and filled now. */
bool near_is_active(void);

/* A fresh entry for the Redis key: *val (the bytes given to near_fill(): the cache module
 * keeps values decoded) valid until the next near_* call. */
bool near_get(const char *key, size_t n, const char **val, size_t *vlen);

/* Before sending the GET of a miss: a token for near_fill(), 0 when not fillable now. */
uint64_t near_begin(const char *key, size_t n);
/* The GET answered (val NULL: the key does not exist). Kept only if nothing
 * invalidated the key since near_begin(). pttl_ms: -1 none, -2 missing, >= 0 left. */
void near_fill(uint64_t token, const char *val, size_t vlen, int64_t pttl_ms);
/* The GET will not be answered (request gone): forget the placeholder. */
void near_cancel(uint64_t token);

/* This kcached writes or deletes the key: evict now, before the write is acknowledged. */
void near_evict(const char *key, size_t n);
/* Everything goes (pattern/tag/namespace invalidation, admin flush, doubt). */
void near_flush(const char *why);

/* Counters and sizes, for stats and metrics: F(name) for each, in the order shown. */
#define NEAR_STATS_FIELDS(F)                                                                       \
        F(hits) F(misses) F(fills) F(fills_dropped) F(evictions) F(invalidations) F(flushes)       \
        F(bytes) F(entries)
struct near_stats {
#define NEAR_STATS_FIELD(name) uint64_t name;
        NEAR_STATS_FIELDS(NEAR_STATS_FIELD)
#undef NEAR_STATS_FIELD
        bool active;
};
void near_get_stats(struct near_stats *st);
void near_write_json(struct json *j);

#endif
