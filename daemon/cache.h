/* SPDX-License-Identifier: MIT */
/*
 * cache: the method handlers. Each turns an RPC request into Redis commands
 * or scripts (keys carry key_prefix and, with the ns option, the namespace
 * and its generation), submits them through the backend, and turns the reply
 * into the RPC result, decoding stored-value envelopes (schema tag,
 * compression, checksum) on the way. One handler per row of
 * proto/methods.def, named handler_<method>; dispatch.c has already checked
 * the argument count and the options. Leases (get_or_set, fill, release) live
 * in lease.c and use the helpers declared at the end.
 */
#ifndef KCACHE_CACHE_H
#define KCACHE_CACHE_H

#include <hiredis.h>
#include <msgpack.h>
#include <stdbool.h>

#include "buf.h"
#include "daemon/dispatch.h"
#include "daemon/scripts.h"

struct server;
struct json;

int cache_init(struct server *srv);
/* The configuration was reloaded: take the new compression settings. */
void cache_reconfigure(void);
void cache_deinit(void);

#define KC_METHOD(name, n_args_, flags_, opts_, params_, result_)                                  \
        void handler_##name(struct req *r, const msgpack_object *args, const struct opts *o);
#include "methods.def"
#undef KC_METHOD

/* Cache counters, totals and per namespace (bounded by max_tracked_namespaces). */
#define CACHE_COUNTERS(X)                                                                          \
        X(hits) X(misses) X(schema_mismatch) X(sets) X(deletes) X(invalidations)                   \
        X(leases_granted) X(waits_coalesced) X(fills) X(fills_rejected) X(stale_served)            \
        X(bytes_in) X(bytes_out) X(bytes_saved_compression) X(corrupt_envelopes) X(newer_envelopes)

struct cache_counters {
#define X(n) uint64_t n;
        CACHE_COUNTERS(X)
#undef X
};

/* The counters of r's namespace (or the totals' twin for plain keys). */
struct cache_counters *cache_ns_counters(const struct req *r);
/* Adds to the totals and to r's namespace. */
#define CACHE_COUNT(r, field, n)                                                                   \
        do {                                                                                       \
                cache_totals()->field += (n);                                                      \
                if (cache_ns_counters(r) != NULL)                                                  \
                        cache_ns_counters(r)->field += (n);                                        \
        } while (0)
struct cache_counters *cache_totals(void);

/* The cache counters as JSON (admin `stats`). */
void cache_write_json(struct json *j);
/* Calls fn for each tracked namespace, then once with name NULL for _other. */
#define CACHE_HAVE_FOREACH_NS 1
void cache_foreach_ns(void (*fn)(void *priv, const char *name, size_t len,
                                 const struct cache_counters *c),
                      void *priv);

/* Zeroes every cache counter (admin `reset-stats`). */
void cache_reset_counters(void);

/*
 * Namespace invalidation outside an RPC request (admin `flush NS`): bumps the
 * generation. call is owned by the caller and must stay valid until fn(priv,
 * gen, reply, err) runs (exactly once, unless backend_call_cancel(call) comes
 * first); interpret its arguments with cache_flush_result(). Returns 0, or -1
 * when nothing was sent (fn is not called; *why says why, static string).
 */
int cache_flush_ns(const char *ns, size_t n, struct bcall *call, rconn_reply_fn fn, void *priv,
                   const char **why);
/* 0 with *gen, or -1 with *why (static string). */
int cache_flush_result(const redisReply *reply, int err, int64_t *gen, const char **why);

/* --- helpers shared with lease.c ------------------------------------------- */

/* Checks a key (bytes, length, no leading NUL); answers the error itself. */
bool cache_arg_key(struct req *r, const msgpack_object *o, const char **p, size_t *n,
                   const char *what);
/* Sets up r's key space from opts (ns, schema, stats slot). false: answered. */
bool cache_req_keyspace(struct req *r, const struct opts *o);
/* Expiry from ttl, ttl_ms, stale_ttl, stale_ttl_ms in ms; false: answered. */
bool cache_arg_expiry(struct req *r, const struct opts *o, int64_t *px, int64_t *stale_px);
/* Encodes value (schema from r) into the scratch envelope buffer; false: answered. */
bool cache_encode(struct req *r, const char *val, size_t n, bool has_stale, const uint8_t **out,
                  size_t *out_len);
/*
 * Decodes a stored value for r: true with *data and *len on a hit (counted),
 * false on a miss (schema mismatch, corrupt or newer envelope: counted).
 */
bool cache_decode(struct req *r, const char *p, size_t n, const uint8_t **data, size_t *len,
                  bool *has_stale);

/* Starts an EVAL of id into the scratch command with n_argv arguments after
 * KEYS[1], ARGV[1] and ARGV[2] (which this writes). */
void cache_eval_start(const struct req *r, enum script_id id, size_t n_argv);
void cache_resp_bulk(const void *p, size_t n);
void cache_resp_int(int64_t v);
/* The scratch command as built so far (for calls not tied to a request). */
const char *cache_scratch(size_t *len);
/* Submits the scratch command for r. */
void cache_submit(struct req *r, enum backend_route route, unsigned n_replies, rconn_reply_fn fn);
/* The request a completion belongs to, or NULL when it was answered here. */
struct req *cache_reply_req(void *priv, uint32_t gen, const redisReply *reply, int err);

/* This request writes the plain key: evict it from the near cache now and on completion. */
void cache_near_write(struct req *r, const char *key, size_t n);

/* The metadata base M ("kcache" NUL key_prefix NUL). */
const char *cache_meta(size_t *len);

#endif
