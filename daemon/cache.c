/* SPDX-License-Identifier: MIT */
/*
 * cache: method handlers (see cache.h).
 *
 * Plain keys on the hot path use plain commands (GET, MGET, SET): a GET costs
 * Redis what a GET costs. Namespaced keys, hashes, batches with tags or stale
 * windows, and everything lease-related run as Lua scripts (scripts.c) that
 * resolve the namespace generation inside Redis.
 *
 * Every write deletes the key's lease first (stale-set protection, see
 * scripts.c); for plain keys that is a pipelined "DEL lease; SET ...": a fill
 * running between the two finds the key written and refuses.
 *
 * RESP is written here directly rather than with redisFormatCommandArgv():
 * prefixed keys would otherwise need an argv array and a copy each.
 *
 * Reply mapping shared by all: a Redis error reply is BACKEND with Redis's
 * message; a lost connection is UNAVAILABLE; an unexpected reply type is
 * INTERNAL.
 */
#include "daemon/cache.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/backend.h"
#include "daemon/conn.h"
#include "daemon/envelope.h"
#include "daemon/json.h"
#include "daemon/log.h"
#include "daemon/near.h"
#include "daemon/server.h"
#include "daemon/stats.h"
#include "kcache-version.h"

#define CACHE_TTL_MAX     2147483647LL
#define CACHE_SCAN_COUNT  "1000"
#define CACHE_SCAN_WAIT_S 120.0 /* deadline of a pattern invalidation (many SCAN steps) */

static struct server *cache_srv; /* ref */
static struct buf cache_cmd;     /* scratch RESP command, reused */
static struct buf cache_env;     /* scratch envelope, reused */
static struct buf cache_near;    /* scratch near-cache form of a value, reused */
static struct envelope *cache_envelope;
static struct envelope_cfg cache_env_cfg;
static char *cache_m;            /* metadata base M, owned */
static size_t cache_m_len;
static struct log_limit cache_log_limit;

/* Per-namespace counters: open addressing, never shrinks, bounded. */
struct ns_slot {
        char *name; /* owned; NULL: free */
        size_t len;
        struct cache_counters c;
};
static struct ns_slot *cache_ns;
static size_t cache_ns_cap, cache_ns_used;
static struct cache_counters cache_tot, cache_other;

static const struct config *
cfg(void)
{
        return cache_srv->cfg;
}

int
cache_init(struct server *srv)
{
        const char *p = srv->cfg->key_prefix;
        size_t plen = strlen(p);

        cache_srv = srv;
        buf_init(&cache_cmd);
        buf_init(&cache_env);
        buf_init(&cache_near);
        if (envelope_new(&cache_envelope) < 0)
                return -1;
        cache_reconfigure();
        /* M = "kcache" NUL prefix NUL: never inside the app's key space. */
        cache_m_len = 6 + 1 + plen + 1;
        cache_m = malloc(cache_m_len);
        if (cache_m == NULL)
                return -1;
        memcpy(cache_m, "kcache", 6);
        cache_m[6] = '\0';
        memcpy(cache_m + 7, p, plen);
        cache_m[7 + plen] = '\0';
        cache_ns_cap = 2 * (size_t)srv->cfg->max_tracked_namespaces + 1;
        cache_ns = calloc(cache_ns_cap, sizeof(*cache_ns));
        if (cache_ns == NULL)
                return -1;
        return 0;
}

void
cache_reconfigure(void)
{
        const struct config *c = cache_srv->cfg;

        cache_env_cfg.compress = c->compression == COMPRESSION_ZLIB;
        cache_env_cfg.level = c->compression_level;
        cache_env_cfg.threshold = (size_t)c->compression_threshold;
        cache_env_cfg.inline_max = (size_t)c->compress_inline_max;
        cache_env_cfg.max_value_bytes = (size_t)c->max_value_bytes;
}

void
cache_deinit(void)
{
        buf_deinit(&cache_cmd);
        buf_deinit(&cache_env);
        buf_deinit(&cache_near);
        cache_envelope = envelope_free(cache_envelope);
        free(cache_m);
        cache_m = NULL;
        for (size_t i = 0; i < cache_ns_cap; i++)
                free(cache_ns[i].name);
        free(cache_ns);
        cache_ns = NULL;
}

const char *
cache_meta(size_t *len)
{
        *len = cache_m_len;
        return cache_m;
}

/* --- counters ---------------------------------------------------------------- */

struct cache_counters *
cache_totals(void)
{
        return &cache_tot;
}

static int
ns_slot_find(const char *name, size_t len)
{
        uint64_t h = 1469598103934665603ull;

        for (size_t i = 0; i < len; i++)
                h = (h ^ (uint8_t)name[i]) * 1099511628211ull;
        for (size_t k = 0; k < cache_ns_cap; k++) {
                size_t i = (h + k) % cache_ns_cap;
                struct ns_slot *s = &cache_ns[i];
                if (s->name == NULL) {
                        /* Clients must not grow memory by inventing names: past the
                         * limit everything is summed under _other. */
                        if (cache_ns_used >= (size_t)cfg()->max_tracked_namespaces)
                                return -1;
                        s->name = malloc(len + 1);
                        if (s->name == NULL)
                                return -1;
                        memcpy(s->name, name, len);
                        s->name[len] = '\0';
                        s->len = len;
                        cache_ns_used++;
                        return (int)i;
                }
                if (s->len == len && memcmp(s->name, name, len) == 0)
                        return (int)i;
        }
        return -1;
}

struct cache_counters *
cache_ns_counters(const struct req *r)
{
        if (r->ns_slot == -1)
                return NULL;
        if (r->ns_slot == -2)
                return &cache_other;
        return &cache_ns[r->ns_slot].c;
}

static void
counters_json(struct json *j, const struct cache_counters *c)
{
        json_obj_begin(j);
#define X(n)                                                                                       \
        json_key(j, #n);                                                                           \
        json_uint(j, c->n);
        CACHE_COUNTERS(X)
#undef X
        json_obj_end(j);
}

void
cache_write_json(struct json *j)
{
        json_obj_begin(j);
        json_key(j, "totals");
        counters_json(j, &cache_tot);
        json_key(j, "namespaces");
        json_obj_begin(j);
        for (size_t i = 0; i < cache_ns_cap; i++) {
                if (cache_ns[i].name == NULL)
                        continue;
                json_key(j, cache_ns[i].name);
                counters_json(j, &cache_ns[i].c);
        }
        json_key(j, "_other");
        counters_json(j, &cache_other);
        json_obj_end(j);
        json_key(j, "near");
        near_write_json(j);
        json_obj_end(j);
}

static void
counters_pack(msgpack_packer *pk, const struct cache_counters *c)
{
        unsigned n = 0;
#define X(f) n++;
        CACHE_COUNTERS(X)
#undef X
        msgpack_pack_map(pk, n);
#define X(f)                                                                                       \
        rpc_pack_str(pk, #f);                                                                      \
        msgpack_pack_uint64(pk, c->f);
        CACHE_COUNTERS(X)
#undef X
}

/* --- RESP writing ------------------------------------------------------------ */

static int cache_cmd_failed;

static void
resp_raw(const void *p, size_t n)
{
        if (buf_append(&cache_cmd, p, n) < 0)
                cache_cmd_failed = 1;
}

/* "*3\r\n" or "$42\r\n": written by hand, snprintf() was a quarter of a GET's CPU. */
static void
resp_header(char type, size_t n)
{
        char hdr[32], *p = hdr + sizeof(hdr);

        *--p = '\n';
        *--p = '\r';
        do {
                *--p = (char)('0' + n % 10);
                n /= 10;
        } while (n > 0);
        *--p = type;
        resp_raw(p, (size_t)(hdr + sizeof(hdr) - p));
}

static void
resp_start(size_t n_args)
{
        buf_clear(&cache_cmd);
        cache_cmd_failed = 0;
        resp_header('*', n_args);
}

void
cache_resp_bulk(const void *p, size_t n)
{
        resp_header('$', n);
        resp_raw(p, n);
        resp_raw("\r\n", 2);
}

static void
resp_str(const char *s)
{
        cache_resp_bulk(s, strlen(s));
}

/* A bulk made of up to three parts (prefix, middle, key) without a copy. */
static void
resp_bulk3(const void *a, size_t an, const void *b, size_t bn, const void *c, size_t cn)
{
        resp_header('$', an + bn + cn);
        resp_raw(a, an);
        resp_raw(b, bn);
        resp_raw(c, cn);
        resp_raw("\r\n", 2);
}

static void
resp_key(const char *key, size_t n)
{
        resp_bulk3(cfg()->key_prefix, strlen(cfg()->key_prefix), NULL, 0, key, n);
}

/* The lease key of a plain key: M "lease" NUL prefix key NUL (no field). */
static void
resp_lease_key(const char *key, size_t n)
{
        const char *p = cfg()->key_prefix;
        size_t plen = strlen(p);

        resp_header('$', cache_m_len + 6 + plen + n + 1);
        resp_raw(cache_m, cache_m_len);
        resp_raw("lease", 6); /* with its NUL */
        resp_raw(p, plen);
        resp_raw(key, n);
        resp_raw("", 1);
        resp_raw("\r\n", 2);
}

void
cache_resp_int(int64_t v)
{
        char s[32];

        cache_resp_bulk(s, (size_t)snprintf(s, sizeof(s), "%" PRId64, v));
}

/* KEYS[1] = generation key or "", ARGV[1] = data key base, ARGV[2] = M. */
static void
resp_space(const struct req *r)
{
        const char *p = cfg()->key_prefix;
        size_t plen = strlen(p);
        if (!r->has_ns) {
                cache_resp_bulk("", 0);
                cache_resp_bulk(p, plen);
        } else {
                resp_header('$', cache_m_len + 4 + r->ns_len);
                resp_raw(cache_m, cache_m_len);
                resp_raw("gen", 4);
                resp_raw(r->ns, r->ns_len);
                resp_raw("\r\n", 2);
                resp_header('$', plen + 1 + r->ns_len + 1);
                resp_raw(p, plen);
                resp_raw("", 1);
                resp_raw(r->ns, r->ns_len);
                resp_raw("", 1);
                resp_raw("\r\n", 2);
        }
        cache_resp_bulk(cache_m, cache_m_len);
}

void
cache_eval_start(const struct req *r, enum script_id id, size_t n_argv)
{
        resp_start(3 + 3 + n_argv);
        resp_str(script_is_ro(id) ? "EVAL_RO" : "EVAL");
        resp_str(script_text(id));
        resp_str("1");
        resp_space(r);
}

/* --- argument helpers ----------------------------------------------------------- */

static const char *
mname(const struct req *r)
{
        return rpc_methods[r->method].name;
}

bool
cache_arg_key(struct req *r, const msgpack_object *o, const char **p, size_t *n, const char *what)
{
        if (!rpc_obj_bytes(o, p, n)) {
                req_fail(r, RPC_ERR_BAD_REQUEST, "%s: %s must be bytes (bin or str)", mname(r),
                         what);
                return false;
        }
        if ((int64_t)*n > cfg()->max_key_bytes) {
                req_fail(r, RPC_ERR_TOO_LARGE, "%s: a key of %zu bytes exceeds max_key_bytes (%" PRId64
                         ")", mname(r), *n, cfg()->max_key_bytes);
                return false;
        }
        if (*n > 0 && (*p)[0] == '\0') {
                /* NUL after the prefix marks namespaced keys (see the key layout). */
                req_fail(r, RPC_ERR_BAD_REQUEST, "%s: keys may not start with a NUL byte", mname(r));
                return false;
        }
        return true;
}

static bool
arg_bytes(struct req *r, const msgpack_object *o, const char **p, size_t *n, const char *what)
{
        if (rpc_obj_bytes(o, p, n))
                return true;
        req_fail(r, RPC_ERR_BAD_REQUEST, "%s: %s must be bytes (bin or str)", mname(r), what);
        return false;
}

bool
cache_req_keyspace(struct req *r, const struct opts *o)
{
        if (o->present & KC_OPT_schema) {
                if (o->s[RPC_OPT_schema].n > 255) {
                        req_fail(r, RPC_ERR_BAD_REQUEST, "%s: schema is longer than 255 bytes",
                                 mname(r));
                        return false;
                }
                r->has_schema = true;
                r->schema_len = (uint8_t)o->s[RPC_OPT_schema].n;
                memcpy(r->schema, o->s[RPC_OPT_schema].p, r->schema_len);
        }
        if (o->present & KC_OPT_ns) {
                size_t n = o->s[RPC_OPT_ns].n;
                if (n == 0 || n > 255 || memchr(o->s[RPC_OPT_ns].p, '\0', n) != NULL) {
                        req_fail(r, RPC_ERR_BAD_REQUEST,
                                 "%s: ns must be 1 to 255 bytes without NUL", mname(r));
                        return false;
                }
                r->has_ns = true;
                r->ns_len = (uint8_t)n;
                memcpy(r->ns, o->s[RPC_OPT_ns].p, n);
                r->ns_slot = ns_slot_find(r->ns, n);
                if (r->ns_slot < 0)
                        r->ns_slot = -2;
        }
        return true;
}

static bool
arg_int_range(struct req *r, int64_t v, int64_t lo, int64_t hi, const char *what)
{
        if (v >= lo && v <= hi)
                return true;
        req_fail(r, RPC_ERR_BAD_REQUEST, "%s: %s must be an integer from %" PRId64 " to %" PRId64,
                 mname(r), what, lo, hi);
        return false;
}

/* Milliseconds from a seconds option or its _ms twin; 0 when neither is given. */
static bool
arg_ms(struct req *r, const struct opts *o, int s_opt, int ms_opt, int64_t *ms)
{
        bool has_s = o->present & KC_OPT_BIT(s_opt), has_ms = o->present & KC_OPT_BIT(ms_opt);

        *ms = 0;
        if (has_s && has_ms) {
                req_fail(r, RPC_ERR_BAD_REQUEST, "%s: %s and %s are exclusive", mname(r),
                         rpc_options[s_opt].name, rpc_options[ms_opt].name);
                return false;
        }
        if (has_s) {
                if (!arg_int_range(r, o->i[s_opt], 1, CACHE_TTL_MAX, rpc_options[s_opt].name))
                        return false;
                *ms = o->i[s_opt] * 1000;
        } else if (has_ms) {
                if (!arg_int_range(r, o->i[ms_opt], 1, CACHE_TTL_MAX, rpc_options[ms_opt].name))
                        return false;
                *ms = o->i[ms_opt];
        }
        return true;
}

bool
cache_arg_expiry(struct req *r, const struct opts *o, int64_t *px, int64_t *stale_px)
{
        int64_t max = cfg()->max_ttl * 1000;

        if (!arg_ms(r, o, RPC_OPT_ttl, RPC_OPT_ttl_ms, px) ||
            !arg_ms(r, o, RPC_OPT_stale_ttl, RPC_OPT_stale_ttl_ms, stale_px))
                return false;
        if (*px == 0)
                *px = cfg()->default_ttl * 1000;
        if (*px > max) {
                stats.ttl_clamped++;
                *px = max;
        }
        return true;
}

/* An array of keys within max_batch_keys. */
static bool
arg_key_list(struct req *r, const msgpack_object *o)
{
        const char *p;
        size_t n;

        if (o->type != MSGPACK_OBJECT_ARRAY) {
                req_fail(r, RPC_ERR_BAD_REQUEST, "%s: the first parameter must be an array of keys",
                         mname(r));
                return false;
        }
        if (o->via.array.size > (uint32_t)cfg()->max_batch_keys) {
                req_fail(r, RPC_ERR_TOO_LARGE, "%s: %u keys exceed max_batch_keys (%d)", mname(r),
                         o->via.array.size, cfg()->max_batch_keys);
                return false;
        }
        for (uint32_t i = 0; i < o->via.array.size; i++)
                if (!cache_arg_key(r, &o->via.array.ptr[i], &p, &n, "every key"))
                        return false;
        return true;
}

/* consistency: "primary" is the only value (read-your-writes). */
static bool
arg_consistency(struct req *r, const struct opts *o)
{
        if (!(o->present & KC_OPT_consistency))
                return true;
        if (o->s[RPC_OPT_consistency].n == 7 &&
            memcmp(o->s[RPC_OPT_consistency].p, "primary", 7) == 0)
                return true;
        req_fail(r, RPC_ERR_BAD_REQUEST, "%s: consistency must be \"primary\"", mname(r));
        return false;
}

static enum backend_route
read_route(const struct opts *o)
{
        return (o->present & KC_OPT_consistency) ? BACKEND_READ_PRIMARY : BACKEND_READ;
}

/* --- near cache ------------------------------------------------------------------ */

/* key_prefix + key, the Redis key the near cache and tracking speak of. */
static const char *
near_key(const char *key, size_t n, size_t *len)
{
        static struct buf k;
        const char *p = cfg()->key_prefix;

        buf_clear(&k);
        if (buf_append(&k, p, strlen(p)) < 0 || buf_append(&k, key, n) < 0)
                return NULL;
        *len = buf_size(&k);
        return (const char *)buf_head(&k);
}

/*
 * This kcached writes a plain key: evict it from the near cache now, and
 * remember it so the request evicts it again when it completes.
 */
void
cache_near_write(struct req *r, const char *key, size_t n)
{
        size_t len;
        const char *k;
        char *p;
        uint32_t l32;

        if (r->has_ns || cfg()->near_cache_bytes == 0 || (k = near_key(key, n, &len)) == NULL)
                return;
        near_evict(k, len);
        p = realloc(r->near_keys, r->near_keys_len + sizeof(l32) + len);
        if (p == NULL)
                return; /* tracking still evicts it, a little later */
        l32 = (uint32_t)len;
        memcpy(p + r->near_keys_len, &l32, sizeof(l32));
        memcpy(p + r->near_keys_len + sizeof(l32), k, len);
        r->near_keys = p;
        r->near_keys_len += sizeof(l32) + len;
}

/* --- envelopes ------------------------------------------------------------------ */

bool
cache_encode(struct req *r, const char *val, size_t n, bool has_stale, const uint8_t **out,
             size_t *out_len)
{
        size_t saved = 0;
        int rc;

        buf_clear(&cache_env);
        rc = envelope_encode(cache_envelope, &cache_env_cfg, val, n, r->schema, r->schema_len,
                             has_stale ? ENVELOPE_F_STALE : 0, &cache_env, &saved);
        if (rc == ENVELOPE_E_TOO_LARGE) {
                req_fail(r, RPC_ERR_TOO_LARGE, "%s: a value of %zu bytes exceeds max_value_bytes (%" PRId64
                         ")", mname(r), n, cfg()->max_value_bytes);
                return false;
        }
        if (rc != 0) {
                req_fail(r, RPC_ERR_INTERNAL, "%s: cannot encode the value", mname(r));
                return false;
        }
        CACHE_COUNT(r, bytes_in, n);
        CACHE_COUNT(r, bytes_saved_compression, saved);
        *out = buf_head(&cache_env);
        *out_len = buf_size(&cache_env);
        return true;
}

bool
cache_decode(struct req *r, const char *p, size_t n, const uint8_t **data, size_t *len,
             bool *has_stale)
{
        struct envelope_view v;
        int rc = envelope_decode(cache_envelope, &cache_env_cfg, p, n, &v);

        if (rc == ENVELOPE_E_NEWER) {
                CACHE_COUNT(r, newer_envelopes, 1);
                CACHE_COUNT(r, misses, 1);
                return false;
        }
        if (rc != ENVELOPE_OK) {
                CACHE_COUNT(r, corrupt_envelopes, 1);
                CACHE_COUNT(r, misses, 1);
                if (log_ratelimit(&cache_log_limit, 5))
                        log_warn("cache", "corrupt", "cache: %s: corrupt stored value (%zu bytes): %s",
                                 mname(r), n, rc < 0 ? "out of memory" : envelope_why(cache_envelope));
                return false;
        }
        if (r->has_schema && (v.slen != r->schema_len || memcmp(v.schema, r->schema, v.slen) != 0)) {
                CACHE_COUNT(r, schema_mismatch, 1);
                CACHE_COUNT(r, misses, 1);
                return false;
        }
        CACHE_COUNT(r, hits, 1);
        CACHE_COUNT(r, bytes_out, v.len);
        *data = v.data;
        *len = v.len;
        if (has_stale != NULL)
                *has_stale = (v.flags & ENVELOPE_F_STALE) != 0;
        return true;
}

/* Packs a stored value as bin, or nil on a miss. */
static void
pack_stored(struct req *r, msgpack_packer *pk, const redisReply *e)
{
        const uint8_t *data;
        size_t len;

        if (e->type == REDIS_REPLY_STRING && cache_decode(r, e->str, e->len, &data, &len, NULL)) {
                rpc_pack_bin(pk, data, len);
                return;
        }
        if (e->type != REDIS_REPLY_STRING)
                CACHE_COUNT(r, misses, 1);
        msgpack_pack_nil(pk);
}

/* --- submitting and completing ---------------------------------------------------- */

const char *
cache_scratch(size_t *len)
{
        *len = buf_size(&cache_cmd);
        return (const char *)buf_head(&cache_cmd);
}

void
cache_submit(struct req *r, enum backend_route route, unsigned n_replies, rconn_reply_fn fn)
{
        int rc;

        if (cache_cmd_failed) {
                req_fail(r, RPC_ERR_INTERNAL, "out of memory");
                return;
        }
        if (r->deadline == 0)
                req_start_deadline(r, cfg()->command_timeout_ms);
        r->conn->aff.is_sticky = r->conn->n_inflight > 1;
        rc = backend_call(cache_srv->be, &r->call, route, (const char *)buf_head(&cache_cmd),
                          buf_size(&cache_cmd), n_replies, r->deadline, &r->conn->aff, fn, r,
                          r->gen);
        /* Keep the scratch buffers from pinning a huge mset forever. */
        buf_shrink(&cache_cmd, 64 * 1024);
        buf_shrink(&cache_env, 64 * 1024);
        if (rc == BACKEND_E_UNAVAILABLE) {
                req_fail(r, RPC_ERR_UNAVAILABLE, "no Redis node is reachable");
                return;
        }
        if (rc < 0)
                req_fail(r, RPC_ERR_INTERNAL, "out of memory");
}

struct req *
cache_reply_req(void *priv, uint32_t gen, const redisReply *reply, int err)
{
        struct req *r = req_lookup(priv, gen);

        if (r == NULL)
                return NULL;
        if (ev_now(cache_srv->loop) > r->deadline) {
                /* The deadline timer is due in this same iteration: it wins. */
                r->is_timeout = true;
                req_fail(r, RPC_ERR_TIMEOUT, "no answer from Redis within the deadline");
                return NULL;
        }
        if (err == BACKEND_E_READONLY) {
                req_fail(r, RPC_ERR_UNAVAILABLE, "the primary moved (Redis answered READONLY)");
                return NULL;
        }
        if (err != 0) {
                req_fail(r, RPC_ERR_UNAVAILABLE, "connection to Redis lost");
                return NULL;
        }
        if (reply->type == REDIS_REPLY_ERROR) {
                req_fail(r, RPC_ERR_BACKEND, "%.*s", (int)(reply->len > 400 ? 400 : reply->len),
                         reply->str);
                return NULL;
        }
        return r;
}

static void
reply_unexpected(struct req *r, const redisReply *reply)
{
        req_fail(r, RPC_ERR_INTERNAL, "%s: unexpected Redis reply type %d", mname(r), reply->type);
}

/* GET, or the READ script's one-element array. */
static void
on_value(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct req *r = cache_reply_req(priv, gen, reply, err);
        const redisReply *e = reply;

        if (r == NULL)
                return;
        if (reply->type == REDIS_REPLY_ARRAY) {
                if (reply->elements != 1) {
                        reply_unexpected(r, reply);
                        return;
                }
                e = reply->element[0];
        }
        if (e->type != REDIS_REPLY_NIL && e->type != REDIS_REPLY_STRING) {
                reply_unexpected(r, e);
                return;
        }
        pack_stored(r, req_result(r), e);
        req_done(r);
}

/*
 * The near cache keeps a value decoded, so that a hit costs no crc and no
 * inflate: [kind][flags][s][schema tag, s bytes][value], kind 0 for a value
 * another client wrote (no envelope), 1 for an envelope's. NULL if the stored
 * value does not decode (it is answered, and counted, by pack_stored()).
 */
#define NEAR_FORM_HDR 3
static const uint8_t *
near_form(const char *p, size_t n, size_t *len)
{
        struct envelope_view v;
        uint8_t hdr[NEAR_FORM_HDR];

        if (envelope_decode(cache_envelope, &cache_env_cfg, p, n, &v) != ENVELOPE_OK)
                return NULL;
        hdr[0] = v.is_raw ? 0 : 1;
        hdr[1] = (uint8_t)(v.flags & ENVELOPE_F_STALE);
        hdr[2] = (uint8_t)v.slen;
        buf_clear(&cache_near);
        if (buf_append(&cache_near, hdr, sizeof(hdr)) < 0 ||
            buf_append(&cache_near, v.schema, v.slen) < 0 ||
            buf_append(&cache_near, v.data, v.len) < 0)
                return NULL;
        *len = buf_size(&cache_near);
        return buf_head(&cache_near);
}

/* Answers a get from the near form: the checks and counts of cache_decode(). */
static void
pack_near_form(struct req *r, msgpack_packer *pk, const uint8_t *p, size_t n)
{
        size_t slen = p[2];
        const uint8_t *schema = p + NEAR_FORM_HDR, *data = schema + slen;
        size_t len = n - NEAR_FORM_HDR - slen;

        if (r->has_schema && (slen != r->schema_len || memcmp(schema, r->schema, slen) != 0)) {
                CACHE_COUNT(r, schema_mismatch, 1);
                CACHE_COUNT(r, misses, 1);
                msgpack_pack_nil(pk);
                return;
        }
        CACHE_COUNT(r, hits, 1);
        CACHE_COUNT(r, bytes_out, len);
        rpc_pack_bin(pk, data, len);
}

/* MULTI GET PTTL EXEC for a near-cache miss: [value|nil, pttl]. */
static void
on_near_fill(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct req *r = cache_reply_req(priv, gen, reply, err);
        const redisReply *v, *t;
        const uint8_t *form = NULL;
        size_t flen = 0;

        if (r == NULL)
                return;
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
            (reply->element[0]->type != REDIS_REPLY_STRING &&
             reply->element[0]->type != REDIS_REPLY_NIL) ||
            reply->element[1]->type != REDIS_REPLY_INTEGER) {
                reply_unexpected(r, reply);
                return;
        }
        v = reply->element[0];
        t = reply->element[1];
        if (v->type == REDIS_REPLY_STRING)
                form = near_form(v->str, v->len, &flen);
        /* A nil or a value that does not decode is not kept (nothing to serve). */
        near_fill(r->near_token, (const char *)form, flen, t->integer);
        r->near_token = 0;
        if (form != NULL)
                pack_near_form(r, req_result(r), form, flen);
        else
                pack_stored(r, req_result(r), v);
        buf_shrink(&cache_near, 64 * 1024);
        req_done(r);
}

static void
on_values(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct req *r = cache_reply_req(priv, gen, reply, err);
        msgpack_packer *pk;

        if (r == NULL)
                return;
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements != (size_t)r->aux) {
                reply_unexpected(r, reply);
                return;
        }
        for (size_t i = 0; i < reply->elements; i++) {
                int t = reply->element[i]->type;
                if (t != REDIS_REPLY_NIL && t != REDIS_REPLY_STRING) {
                        reply_unexpected(r, reply->element[i]);
                        return;
                }
        }
        pk = req_result(r);
        msgpack_pack_array(pk, reply->elements);
        for (size_t i = 0; i < reply->elements; i++)
                pack_stored(r, pk, reply->element[i]);
        req_done(r);
}

static void
on_integer(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct req *r = cache_reply_req(priv, gen, reply, err);

        if (r == NULL)
                return;
        if (reply->type != REDIS_REPLY_INTEGER) {
                reply_unexpected(r, reply);
                return;
        }
        if (r->method == RPC_M_del || r->method == RPC_M_hdel)
                CACHE_COUNT(r, deletes, (uint64_t)reply->integer);
        msgpack_pack_int64(req_result(r), reply->integer);
        req_done(r);
}

static void
on_integer_bool(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct req *r = cache_reply_req(priv, gen, reply, err);

        if (r == NULL)
                return;
        if (reply->type != REDIS_REPLY_INTEGER) {
                reply_unexpected(r, reply);
                return;
        }
        if (reply->integer != 0)
                msgpack_pack_true(req_result(r));
        else
                msgpack_pack_false(req_result(r));
        req_done(r);
}

/* +OK from SET, or 1 from a write script. */
static void
on_written(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct req *r = cache_reply_req(priv, gen, reply, err);

        if (r == NULL)
                return;
        if (reply->type != REDIS_REPLY_STATUS && reply->type != REDIS_REPLY_INTEGER) {
                reply_unexpected(r, reply);
                return;
        }
        CACHE_COUNT(r, sets, (uint64_t)(r->aux > 0 ? r->aux : 1));
        msgpack_pack_true(req_result(r));
        req_done(r);
}

/* --- handlers: local -------------------------------------------------------------- */

void
handler_hello(struct req *r, const msgpack_object *args, const struct opts *o)
{
        msgpack_packer *pk = req_result(r);

        msgpack_pack_map(pk, 6);
        rpc_pack_str(pk, "server");
        rpc_pack_str(pk, "kcached");
        rpc_pack_str(pk, "version");
        rpc_pack_str(pk, KCACHE_VERSION);
        rpc_pack_str(pk, "protocol");
        msgpack_pack_int(pk, RPC_PROTOCOL_VERSION);
        rpc_pack_str(pk, "limits");
        msgpack_pack_map(pk, 6);
        rpc_pack_str(pk, "max_request_bytes");
        msgpack_pack_int64(pk, cfg()->max_request_bytes);
        rpc_pack_str(pk, "max_batch_keys");
        msgpack_pack_int64(pk, cfg()->max_batch_keys);
        rpc_pack_str(pk, "max_nesting");
        msgpack_pack_int64(pk, cfg()->max_nesting);
        rpc_pack_str(pk, "max_ttl");
        msgpack_pack_int64(pk, cfg()->max_ttl);
        rpc_pack_str(pk, "max_key_bytes");
        msgpack_pack_int64(pk, cfg()->max_key_bytes);
        rpc_pack_str(pk, "max_value_bytes");
        msgpack_pack_int64(pk, cfg()->max_value_bytes);
        rpc_pack_str(pk, "methods");
        msgpack_pack_array(pk, RPC_M_COUNT);
        for (int i = 0; i < RPC_M_COUNT; i++)
                rpc_pack_str(pk, rpc_methods[i].name);
        rpc_pack_str(pk, "options");
        msgpack_pack_map(pk, RPC_M_COUNT);
        for (int i = 0; i < RPC_M_COUNT; i++) {
                unsigned n = 0;
                rpc_pack_str(pk, rpc_methods[i].name);
                for (int k = 0; k < RPC_OPT_COUNT; k++)
                        n += (rpc_methods[i].opts & KC_OPT_BIT(k)) != 0;
                msgpack_pack_array(pk, n);
                for (int k = 0; k < RPC_OPT_COUNT; k++)
                        if (rpc_methods[i].opts & KC_OPT_BIT(k))
                                rpc_pack_str(pk, rpc_options[k].name);
        }
        req_done(r);
}

void
handler_ping(struct req *r, const msgpack_object *args, const struct opts *o)
{
        rpc_pack_str(req_result(r), "pong");
        req_done(r);
}

void
handler_stats(struct req *r, const msgpack_object *args, const struct opts *o)
{
        msgpack_packer *pk = req_result(r);
        uint32_t n = 1;

        for (size_t i = 0; i < cache_ns_cap; i++)
                n += cache_ns[i].name != NULL;
        msgpack_pack_map(pk, 3);
        rpc_pack_str(pk, "near");
        {
                struct near_stats st;
                near_get_stats(&st);
#define F(name) +1
                msgpack_pack_map(pk, 1 NEAR_STATS_FIELDS(F));
#undef F
#define F(name)                                                                                    \
        rpc_pack_str(pk, #name);                                                                   \
        msgpack_pack_uint64(pk, st.name);
                NEAR_STATS_FIELDS(F)
#undef F
                rpc_pack_str(pk, "active");
                if (st.active)
                        msgpack_pack_true(pk);
                else
                        msgpack_pack_false(pk);
        }
        rpc_pack_str(pk, "totals");
        counters_pack(pk, &cache_tot);
        rpc_pack_str(pk, "namespaces");
        msgpack_pack_map(pk, n);
        for (size_t i = 0; i < cache_ns_cap; i++) {
                if (cache_ns[i].name == NULL)
                        continue;
                msgpack_pack_str(pk, cache_ns[i].len);
                msgpack_pack_str_body(pk, cache_ns[i].name, cache_ns[i].len);
                counters_pack(pk, &cache_ns[i].c);
        }
        rpc_pack_str(pk, "_other");
        counters_pack(pk, &cache_other);
        req_done(r);
}

/* --- handlers: plain values -------------------------------------------------------- */

void
handler_get(struct req *r, const msgpack_object *args, const struct opts *o)
{
        const char *key;
        size_t klen;

        if (!cache_req_keyspace(r, o) || !cache_arg_key(r, &args[0], &key, &klen, "key") ||
            !arg_consistency(r, o))
                return;
        if (r->has_ns) {
                cache_eval_start(r, SCRIPT_READ, 1);
                cache_resp_bulk(key, klen);
        } else if (near_is_active() && !(o->present & KC_OPT_consistency) &&
                   !((o->present & KC_OPT_near) && !o->b[RPC_OPT_near])) {
                size_t nlen;
                const char *nk = near_key(key, klen, &nlen), *v;
                size_t vlen;
                if (nk != NULL && near_get(nk, nlen, &v, &vlen)) {
                        pack_near_form(r, req_result(r), (const uint8_t *)v, vlen);
                        req_done(r);
                        return;
                }
                r->near_token = nk != NULL ? near_begin(nk, nlen) : 0;
                if (r->near_token != 0) {
                        /* Fill only from the primary, where tracking runs, and with
                         * the key's PTTL so that the entry never outlives it. */
                        resp_start(1);
                        resp_str("MULTI");
                        resp_header('*', 2);
                        resp_str("GET");
                        resp_key(key, klen);
                        resp_header('*', 2);
                        resp_str("PTTL");
                        resp_key(key, klen);
                        resp_header('*', 1);
                        resp_str("EXEC");
                        cache_submit(r, BACKEND_READ_PRIMARY, 4, on_near_fill);
                        return;
                }
                resp_start(2);
                resp_str("GET");
                resp_key(key, klen);
        } else {
                resp_start(2);
                resp_str("GET");
                resp_key(key, klen);
        }
        cache_submit(r, read_route(o), 1, on_value);
}

void
handler_mget(struct req *r, const msgpack_object *args, const struct opts *o)
{
        const msgpack_object *list = &args[0];
        const char *key;
        size_t klen;

        if (!cache_req_keyspace(r, o) || !arg_consistency(r, o) || !arg_key_list(r, list))
                return;
        if (list->via.array.size == 0) {
                msgpack_pack_array(req_result(r), 0);
                req_done(r);
                return;
        }
        r->aux = list->via.array.size;
        if (r->has_ns) {
                cache_eval_start(r, SCRIPT_READ, list->via.array.size);
        } else {
                resp_start(1 + list->via.array.size);
                resp_str("MGET");
        }
        for (uint32_t i = 0; i < list->via.array.size; i++) {
                rpc_obj_bytes(&list->via.array.ptr[i], &key, &klen);
                if (r->has_ns)
                        cache_resp_bulk(key, klen);
                else
                        resp_key(key, klen);
        }
        cache_submit(r, read_route(o), 1, on_values);
}

/*
 * set and mset: pairs[i] key/value objects (n of them, already checked).
 * Plain keys without tags or a stale window: "DEL lease; SET". Else the WRITE
 * script, which also records tags and the fresh marker.
 */
static void
write_pairs(struct req *r, const msgpack_object_kv *pairs, const msgpack_object *single_key,
            const msgpack_object *single_val, uint32_t n, const struct opts *o)
{
        const msgpack_object *tags = (o->present & KC_OPT_tags) ? o->list[RPC_OPT_tags] : NULL;
        uint32_t n_tags = tags != NULL ? tags->via.array.size : 0;
        int64_t px, stale_px;
        const uint8_t *env;
        size_t env_len;
        const char *key, *val;
        size_t klen, vlen;

        if (!cache_arg_expiry(r, o, &px, &stale_px))
                return;
        r->aux = n;
        for (uint32_t i = 0; i < n; i++) {
                rpc_obj_bytes(single_key != NULL ? single_key : &pairs[i].key, &key, &klen);
                cache_near_write(r, key, klen);
        }
        if (!r->has_ns && n_tags == 0 && stale_px == 0 && n == 1) {
                rpc_obj_bytes(single_key != NULL ? single_key : &pairs[0].key, &key, &klen);
                rpc_obj_bytes(single_val != NULL ? single_val : &pairs[0].val, &val, &vlen);
                if (!cache_encode(r, val, vlen, false, &env, &env_len))
                        return;
                resp_start(2);
                resp_str("DEL");
                resp_lease_key(key, klen);
                resp_header('*', 5);
                resp_str("SET");
                resp_key(key, klen);
                cache_resp_bulk(env, env_len);
                resp_str("PX");
                cache_resp_int(px);
                cache_submit(r, BACKEND_WRITE, 2, on_written);
                return;
        }
        /* Encode every value first: cache_encode() may fail the request. */
        cache_eval_start(r, SCRIPT_WRITE, 3 + n_tags + 2 * (size_t)n);
        cache_resp_int(px + stale_px);
        cache_resp_int(stale_px > 0 ? px : 0);
        cache_resp_int(n_tags);
        for (uint32_t t = 0; t < n_tags; t++) {
                rpc_obj_bytes(&tags->via.array.ptr[t], &val, &vlen);
                cache_resp_bulk(val, vlen);
        }
        for (uint32_t i = 0; i < n; i++) {
                rpc_obj_bytes(single_key != NULL ? single_key : &pairs[i].key, &key, &klen);
                rpc_obj_bytes(single_val != NULL ? single_val : &pairs[i].val, &val, &vlen);
                if (!cache_encode(r, val, vlen, stale_px > 0, &env, &env_len))
                        return;
                cache_resp_bulk(key, klen);
                cache_resp_bulk(env, env_len);
        }
        cache_submit(r, BACKEND_WRITE, 1, on_written);
}

void
handler_set(struct req *r, const msgpack_object *args, const struct opts *o)
{
        const char *key, *val;
        size_t klen, vlen;

        if (!cache_req_keyspace(r, o) || !cache_arg_key(r, &args[0], &key, &klen, "key") ||
            !arg_bytes(r, &args[1], &val, &vlen, "value"))
                return;
        write_pairs(r, NULL, &args[0], &args[1], 1, o);
}

void
handler_mset(struct req *r, const msgpack_object *args, const struct opts *o)
{
        const msgpack_object *map = &args[0];
        const char *key, *val;
        size_t klen, vlen;
        int64_t px, stale_px;

        if (!cache_req_keyspace(r, o))
                return;
        if (map->type != MSGPACK_OBJECT_MAP) {
                req_fail(r, RPC_ERR_BAD_REQUEST, "mset: the first parameter must be a map of key to value");
                return;
        }
        if (map->via.map.size > (uint32_t)cfg()->max_batch_keys) {
                req_fail(r, RPC_ERR_TOO_LARGE, "mset: %u keys exceed max_batch_keys (%d)",
                         map->via.map.size, cfg()->max_batch_keys);
                return;
        }
        for (uint32_t i = 0; i < map->via.map.size; i++)
                if (!cache_arg_key(r, &map->via.map.ptr[i].key, &key, &klen, "every key") ||
                    !arg_bytes(r, &map->via.map.ptr[i].val, &val, &vlen, "every value"))
                        return;
        if (map->via.map.size == 0) {
                if (!cache_arg_expiry(r, o, &px, &stale_px))
                        return;
                msgpack_pack_true(req_result(r));
                req_done(r);
                return;
        }
        /* One key may take the plain fast path; several always take the script:
         * atomic, one round trip, and each key gets its expiry (MSET cannot). */
        write_pairs(r, map->via.map.ptr, NULL, NULL, map->via.map.size, o);
}

/* del and invalidate {keys}: leases first, then the keys. */
static void on_invalidated_count(void *priv, uint32_t gen, redisReply *reply, int err);

static void
delete_keys(struct req *r, const msgpack_object *list)
{
        const char *key;
        size_t klen;
        uint32_t n = list->via.array.size;

        if (n == 0) {
                if (r->method == RPC_M_invalidate) {
                        msgpack_packer *pk = req_result(r);
                        msgpack_pack_map(pk, 1);
                        rpc_pack_str(pk, "deleted");
                        msgpack_pack_int(pk, 0);
                } else {
                        msgpack_pack_int(req_result(r), 0);
                }
                req_done(r);
                return;
        }
        for (uint32_t i = 0; i < n; i++) {
                rpc_obj_bytes(&list->via.array.ptr[i], &key, &klen);
                cache_near_write(r, key, klen);
        }
        if (r->has_ns) {
                cache_eval_start(r, SCRIPT_DEL, n);
                for (uint32_t i = 0; i < n; i++) {
                        rpc_obj_bytes(&list->via.array.ptr[i], &key, &klen);
                        cache_resp_bulk(key, klen);
                }
        } else {
                resp_start(1 + n);
                resp_str("DEL");
                for (uint32_t i = 0; i < n; i++) {
                        rpc_obj_bytes(&list->via.array.ptr[i], &key, &klen);
                        resp_lease_key(key, klen);
                }
                /* UNLINK: same count as DEL, but Redis frees big values off its main thread. */
                resp_header('*', 1 + n);
                resp_str("UNLINK");
                for (uint32_t i = 0; i < n; i++) {
                        rpc_obj_bytes(&list->via.array.ptr[i], &key, &klen);
                        resp_key(key, klen);
                }
        }
        cache_submit(r, BACKEND_WRITE, r->has_ns ? 1 : 2,
                     r->method == RPC_M_invalidate ? on_invalidated_count : on_integer);
}

void
handler_del(struct req *r, const msgpack_object *args, const struct opts *o)
{
        if (!cache_req_keyspace(r, o) || !arg_key_list(r, &args[0]))
                return;
        delete_keys(r, &args[0]);
}

void
handler_exists(struct req *r, const msgpack_object *args, const struct opts *o)
{
        const msgpack_object *list = &args[0];
        const char *key;
        size_t klen;

        if (!cache_req_keyspace(r, o) || !arg_consistency(r, o) || !arg_key_list(r, list))
                return;
        if (list->via.array.size == 0) {
                msgpack_pack_int(req_result(r), 0);
                req_done(r);
                return;
        }
        if (r->has_ns) {
                cache_eval_start(r, SCRIPT_EXISTS, list->via.array.size);
        } else {
                resp_start(1 + list->via.array.size);
                resp_str("EXISTS");
        }
        for (uint32_t i = 0; i < list->via.array.size; i++) {
                rpc_obj_bytes(&list->via.array.ptr[i], &key, &klen);
                if (r->has_ns)
                        cache_resp_bulk(key, klen);
                else
                        resp_key(key, klen);
        }
        cache_submit(r, read_route(o), 1, on_integer);
}

void
handler_ttl(struct req *r, const msgpack_object *args, const struct opts *o)
{
        const char *key;
        size_t klen;

        if (!cache_req_keyspace(r, o) || !cache_arg_key(r, &args[0], &key, &klen, "key") ||
            !arg_consistency(r, o))
                return;
        if (r->has_ns) {
                cache_eval_start(r, SCRIPT_TTL, 1);
                cache_resp_bulk(key, klen);
        } else {
                resp_start(2);
                resp_str("TTL");
                resp_key(key, klen);
        }
        cache_submit(r, read_route(o), 1, on_integer);
}

void
handler_expire(struct req *r, const msgpack_object *args, const struct opts *o)
{
        const char *key;
        size_t klen;
        int64_t secs;

        if (!cache_req_keyspace(r, o) || !cache_arg_key(r, &args[0], &key, &klen, "key"))
                return;
        if (args[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER)
                secs = args[1].via.u64 > INT64_MAX ? INT64_MAX : (int64_t)args[1].via.u64;
        else if (args[1].type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
                secs = args[1].via.i64;
        else
                secs = 0; /* not an integer: rejected below */
        if (!arg_int_range(r, secs, 1, CACHE_TTL_MAX, "seconds"))
                return;
        if (secs > cfg()->max_ttl) {
                stats.ttl_clamped++;
                secs = cfg()->max_ttl;
        }
        cache_near_write(r, key, klen);
        if (r->has_ns) {
                cache_eval_start(r, SCRIPT_EXPIRE, 2);
                cache_resp_bulk(key, klen);
                cache_resp_int(secs);
        } else {
                resp_start(2);
                resp_str("DEL");
                resp_lease_key(key, klen);
                resp_header('*', 3);
                resp_str("EXPIRE");
                resp_key(key, klen);
                cache_resp_int(secs);
        }
        cache_submit(r, BACKEND_WRITE, r->has_ns ? 1 : 2, on_integer_bool);
}

/* --- handlers: hashes --------------------------------------------------------------- */

static void
on_hgetall(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct req *r = cache_reply_req(priv, gen, reply, err);
        msgpack_packer *pk;
        uint32_t n = 0;

        if (r == NULL)
                return;
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements % 2 != 0) {
                reply_unexpected(r, reply);
                return;
        }
        for (size_t i = 0; i < reply->elements; i++)
                if (reply->element[i]->type != REDIS_REPLY_STRING) {
                        reply_unexpected(r, reply->element[i]);
                        return;
                }
        /* Count first: fields whose tag mismatches or that are corrupt are left out. */
        for (size_t i = 0; i < reply->elements; i += 2) {
                struct envelope_view v;
                const redisReply *e = reply->element[i + 1];
                if (envelope_decode(cache_envelope, &cache_env_cfg, e->str, e->len, &v) ==
                            ENVELOPE_OK &&
                    (!r->has_schema ||
                     (v.slen == r->schema_len && memcmp(v.schema, r->schema, v.slen) == 0)))
                        n++;
        }
        pk = req_result(r);
        msgpack_pack_map(pk, n);
        for (size_t i = 0; i < reply->elements; i += 2) {
                const redisReply *f = reply->element[i], *e = reply->element[i + 1];
                const uint8_t *data;
                size_t len;
                if (!cache_decode(r, e->str, e->len, &data, &len, NULL))
                        continue;
                rpc_pack_bin(pk, f->str, f->len);
                rpc_pack_bin(pk, data, len);
        }
        req_done(r);
}

void
handler_hget(struct req *r, const msgpack_object *args, const struct opts *o)
{
        const char *key, *field;
        size_t klen, flen;

        if (!cache_req_keyspace(r, o) || !cache_arg_key(r, &args[0], &key, &klen, "key") ||
            !arg_bytes(r, &args[1], &field, &flen, "field") || !arg_consistency(r, o))
                return;
        cache_eval_start(r, SCRIPT_HGET, 2);
        cache_resp_bulk(key, klen);
        cache_resp_bulk(field, flen);
        cache_submit(r, read_route(o), 1, on_value);
}

void
handler_hgetall(struct req *r, const msgpack_object *args, const struct opts *o)
{
        const char *key;
        size_t klen;

        if (!cache_req_keyspace(r, o) || !cache_arg_key(r, &args[0], &key, &klen, "key") ||
            !arg_consistency(r, o))
                return;
        cache_eval_start(r, SCRIPT_HGETALL, 1);
        cache_resp_bulk(key, klen);
        cache_submit(r, read_route(o), 1, on_hgetall);
}

void
handler_hset(struct req *r, const msgpack_object *args, const struct opts *o)
{
        const msgpack_object *map = &args[1];
        const char *key, *f, *v;
        size_t klen, flen, vlen;
        int64_t px, stale_px;
        const uint8_t *env;
        size_t env_len;

        if (!cache_req_keyspace(r, o) || !cache_arg_key(r, &args[0], &key, &klen, "key"))
                return;
        if (map->type != MSGPACK_OBJECT_MAP || map->via.map.size == 0) {
                req_fail(r, RPC_ERR_BAD_REQUEST, "hset: the second parameter must be a non-empty map of field to value");
                return;
        }
        if (map->via.map.size > (uint32_t)cfg()->max_batch_keys) {
                req_fail(r, RPC_ERR_TOO_LARGE, "hset: %u fields exceed max_batch_keys (%d)",
                         map->via.map.size, cfg()->max_batch_keys);
                return;
        }
        for (uint32_t i = 0; i < map->via.map.size; i++)
                if (!arg_bytes(r, &map->via.map.ptr[i].key, &f, &flen, "every field") ||
                    !arg_bytes(r, &map->via.map.ptr[i].val, &v, &vlen, "every value"))
                        return;
        if (!cache_arg_expiry(r, o, &px, &stale_px))
                return;
        r->aux = map->via.map.size;
        cache_eval_start(r, SCRIPT_HSET, 2 + 2 * (size_t)map->via.map.size);
        cache_resp_bulk(key, klen);
        cache_resp_int(px);
        for (uint32_t i = 0; i < map->via.map.size; i++) {
                rpc_obj_bytes(&map->via.map.ptr[i].key, &f, &flen);
                rpc_obj_bytes(&map->via.map.ptr[i].val, &v, &vlen);
                if (!cache_encode(r, v, vlen, false, &env, &env_len))
                        return;
                cache_resp_bulk(f, flen);
                cache_resp_bulk(env, env_len);
        }
        cache_submit(r, BACKEND_WRITE, 1, on_written);
}

void
handler_hdel(struct req *r, const msgpack_object *args, const struct opts *o)
{
        const msgpack_object *list = &args[1];
        const char *key, *f;
        size_t klen, flen;

        if (!cache_req_keyspace(r, o) || !cache_arg_key(r, &args[0], &key, &klen, "key"))
                return;
        if (list->type != MSGPACK_OBJECT_ARRAY) {
                req_fail(r, RPC_ERR_BAD_REQUEST, "hdel: the second parameter must be an array of fields");
                return;
        }
        if (list->via.array.size > (uint32_t)cfg()->max_batch_keys) {
                req_fail(r, RPC_ERR_TOO_LARGE, "hdel: %u fields exceed max_batch_keys (%d)",
                         list->via.array.size, cfg()->max_batch_keys);
                return;
        }
        for (uint32_t i = 0; i < list->via.array.size; i++)
                if (!arg_bytes(r, &list->via.array.ptr[i], &f, &flen, "every field"))
                        return;
        if (list->via.array.size == 0) {
                msgpack_pack_int(req_result(r), 0);
                req_done(r);
                return;
        }
        cache_eval_start(r, SCRIPT_HDEL, 1 + list->via.array.size);
        cache_resp_bulk(key, klen);
        for (uint32_t i = 0; i < list->via.array.size; i++) {
                rpc_obj_bytes(&list->via.array.ptr[i], &f, &flen);
                cache_resp_bulk(f, flen);
        }
        cache_submit(r, BACKEND_WRITE, 1, on_integer);
}

/* --- invalidate ---------------------------------------------------------------------- */

static void
pack_deleted(struct req *r, int64_t n)
{
        msgpack_packer *pk = req_result(r);

        CACHE_COUNT(r, invalidations, 1);
        CACHE_COUNT(r, deletes, (uint64_t)n);
        msgpack_pack_map(pk, 1);
        rpc_pack_str(pk, "deleted");
        msgpack_pack_int64(pk, n);
}

static void
on_invalidated_count(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct req *r = cache_reply_req(priv, gen, reply, err);

        if (r == NULL)
                return;
        if (reply->type != REDIS_REPLY_INTEGER) {
                reply_unexpected(r, reply);
                return;
        }
        pack_deleted(r, reply->integer);
        req_done(r);
}

/*
 * The near cache was flushed when the invalidation was sent; a near-cache miss
 * read after that but run by Redis before the script (another pool
 * connection) could still plant an old value, and the tracking message that
 * would remove it may come after this answer. Flushing again before the answer
 * leaves only fills sent after the script ran.
 */
static void
on_tags_invalidated(void *priv, uint32_t gen, redisReply *reply, int err)
{
        near_flush("tag invalidation done");
        on_invalidated_count(priv, gen, reply, err);
}

static void
on_bumped(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct req *r = cache_reply_req(priv, gen, reply, err);
        msgpack_packer *pk;

        if (r == NULL)
                return;
        if (reply->type != REDIS_REPLY_STRING) {
                reply_unexpected(r, reply);
                return;
        }
        CACHE_COUNT(r, invalidations, 1);
        pk = req_result(r);
        msgpack_pack_map(pk, 1);
        rpc_pack_str(pk, "generation");
        msgpack_pack_int64(pk, strtoll(reply->str, NULL, 10));
        req_done(r);
}

/*
 * Pattern invalidation: SCAN ... MATCH ... COUNT 1000 and UNLINK, one step
 * per round trip so the loop (and Redis) are never blocked by it, then a
 * bump of the epoch so that fills granted before it are refused.
 */
struct scan_job {
        struct buf match; /* escaped key base + the app's glob */
        char cursor[32];
        int64_t deleted;
        size_t plen; /* prefix length, to spot namespaced keys when there is no ns */
        char *glob;  /* the app's pattern, owned */
        size_t glob_len;
};

static void
scan_job_free(struct req *r)
{
        struct scan_job *j = r->state;

        buf_deinit(&j->match);
        free(j->glob);
        free(j);
}

static void
glob_escape(struct buf *b, const char *p, size_t n)
{
        for (size_t i = 0; i < n; i++) {
                if (strchr("*?[]\\", p[i]) != NULL && p[i] != '\0')
                        buf_append(b, "\\", 1);
                buf_append(b, &p[i], 1);
        }
}

static void scan_step(struct req *r);

/* kcached's own keys (metadata, lag heartbeats) that a wide pattern may also match. */
static bool
cache_is_meta(const char *k, size_t n)
{
        return (n >= 7 && memcmp(k, "kcache", 7) == 0) || (n >= 10 && memcmp(k, "kcache:hb:", 10) == 0);
}

static void
on_epoch(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct req *r = cache_reply_req(priv, gen, reply, err);

        if (r == NULL)
                return;
        /* Again at the end: see on_tags_invalidated(). */
        near_flush("pattern invalidation done");
        pack_deleted(r, ((struct scan_job *)r->state)->deleted);
        req_done(r);
}

static void
on_unlinked(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct req *r = cache_reply_req(priv, gen, reply, err);
        struct scan_job *j;

        if (r == NULL)
                return;
        j = r->state;
        if (reply->type == REDIS_REPLY_INTEGER)
                j->deleted += reply->integer;
        scan_step(r);
}

static void
on_scanned(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct req *r = cache_reply_req(priv, gen, reply, err);
        struct scan_job *j;
        const redisReply *keys;
        size_t n = 0;

        if (r == NULL)
                return;
        j = r->state;
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
            reply->element[0]->type != REDIS_REPLY_STRING ||
            reply->element[1]->type != REDIS_REPLY_ARRAY || reply->element[0]->len >= 32) {
                reply_unexpected(r, reply);
                return;
        }
        memcpy(j->cursor, reply->element[0]->str, reply->element[0]->len);
        j->cursor[reply->element[0]->len] = '\0';
        keys = reply->element[1];
        /* Without ns the match also sees namespaced keys (a NUL after the prefix)
         * and, with a prefix like "kcache", kcached's metadata: leave them be. */
        for (size_t i = 0; i < keys->elements; i++) {
                const redisReply *k = keys->element[i];
                if (k->type != REDIS_REPLY_STRING)
                        continue;
                if (!r->has_ns && (k->len > j->plen && k->str[j->plen] == '\0'))
                        continue;
                if (cache_is_meta(k->str, k->len))
                        continue;
                n++;
        }
        if (n == 0) {
                scan_step(r);
                return;
        }
        resp_start(1 + n);
        resp_str("UNLINK");
        for (size_t i = 0; i < keys->elements; i++) {
                const redisReply *k = keys->element[i];
                if (k->type != REDIS_REPLY_STRING)
                        continue;
                if (!r->has_ns && (k->len > j->plen && k->str[j->plen] == '\0'))
                        continue;
                if (cache_is_meta(k->str, k->len))
                        continue;
                cache_resp_bulk(k->str, k->len);
        }
        cache_submit(r, BACKEND_WRITE, 1, on_unlinked);
}

static void
scan_step(struct req *r)
{
        struct scan_job *j = r->state;

        if (strcmp(j->cursor, "0") == 0 && j->deleted >= 0 && r->aux == 1) {
                cache_eval_start(r, SCRIPT_EPOCH, 0);
                cache_submit(r, BACKEND_WRITE, 1, on_epoch);
                return;
        }
        r->aux = 1; /* the first SCAN went out */
        resp_start(6);
        resp_str("SCAN");
        resp_str(j->cursor);
        resp_str("MATCH");
        cache_resp_bulk(buf_head(&j->match), buf_size(&j->match));
        resp_str("COUNT");
        resp_str(CACHE_SCAN_COUNT);
        cache_submit(r, BACKEND_WRITE, 1, on_scanned);
}

/* With ns the match needs the namespace's current generation first. */
static void
on_scan_gen(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct req *r = cache_reply_req(priv, gen, reply, err);
        struct scan_job *j;
        const char *p = NULL;

        if (r == NULL)
                return;
        j = r->state;
        if (reply->type == REDIS_REPLY_NIL) {
                pack_deleted(r, 0); /* never written: nothing to delete */
                req_done(r);
                return;
        }
        if (reply->type != REDIS_REPLY_STRING) {
                reply_unexpected(r, reply);
                return;
        }
        p = cfg()->key_prefix;
        glob_escape(&j->match, p, strlen(p));
        buf_append(&j->match, "", 1);
        glob_escape(&j->match, r->ns, r->ns_len);
        buf_append(&j->match, "", 1);
        glob_escape(&j->match, reply->str, reply->len);
        buf_append(&j->match, "", 1);
        buf_append(&j->match, j->glob, j->glob_len);
        scan_step(r);
}

static void
invalidate_pattern(struct req *r, const char *glob, size_t glob_len)
{
        struct scan_job *j = calloc(1, sizeof(*j));

        if (j == NULL || (j->glob = malloc(glob_len + 1)) == NULL) {
                free(j);
                req_fail(r, RPC_ERR_INTERNAL, "out of memory");
                return;
        }
        memcpy(j->glob, glob, glob_len);
        j->glob_len = glob_len;
        buf_init(&j->match);
        strcpy(j->cursor, "0");
        j->plen = strlen(cfg()->key_prefix);
        r->state = j;
        r->state_free = scan_job_free;
        near_flush("pattern invalidation");
        r->aux = 0;
        req_start_deadline(r, (int)(CACHE_SCAN_WAIT_S * 1000));
        if (r->has_ns) {
                resp_start(2);
                resp_str("GET");
                resp_header('$', cache_m_len + 4 + r->ns_len);
                resp_raw(cache_m, cache_m_len);
                resp_raw("gen", 4);
                resp_raw(r->ns, r->ns_len);
                resp_raw("\r\n", 2);
                cache_submit(r, BACKEND_WRITE, 1, on_scan_gen);
                return;
        }
        glob_escape(&j->match, cfg()->key_prefix, j->plen);
        buf_append(&j->match, glob, glob_len);
        scan_step(r);
}

void
handler_invalidate(struct req *r, const msgpack_object *args, const struct opts *o)
{
        const msgpack_object *sel = &args[0];
        const msgpack_object *v;
        const char *name, *p;
        size_t nlen, plen;

        if (!cache_req_keyspace(r, o))
                return;
        if (sel->type != MSGPACK_OBJECT_MAP || sel->via.map.size != 1 ||
            !rpc_obj_bytes(&sel->via.map.ptr[0].key, &name, &nlen)) {
                req_fail(r, RPC_ERR_BAD_REQUEST, "invalidate: the selector must be a map with exactly one of keys, pattern, tags, namespace");
                return;
        }
        v = &sel->via.map.ptr[0].val;
        if (nlen == 4 && memcmp(name, "keys", 4) == 0) {
                if (arg_key_list(r, v))
                        delete_keys(r, v);
                return;
        }
        if (nlen == 7 && memcmp(name, "pattern", 7) == 0) {
                if (arg_bytes(r, v, &p, &plen, "pattern"))
                        invalidate_pattern(r, p, plen);
                return;
        }
        if (nlen == 4 && memcmp(name, "tags", 4) == 0) {
                if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size == 0 ||
                    v->via.array.size > (uint32_t)cfg()->max_batch_keys) {
                        req_fail(r, RPC_ERR_BAD_REQUEST, "invalidate: tags must be a non-empty array of strings");
                        return;
                }
                for (uint32_t i = 0; i < v->via.array.size; i++)
                        if (!arg_bytes(r, &v->via.array.ptr[i], &p, &plen, "every tag"))
                                return;
                near_flush("tag invalidation");
                cache_eval_start(r, SCRIPT_TAGS, v->via.array.size);
                for (uint32_t i = 0; i < v->via.array.size; i++) {
                        rpc_obj_bytes(&v->via.array.ptr[i], &p, &plen);
                        cache_resp_bulk(p, plen);
                }
                req_start_deadline(r, (int)(CACHE_SCAN_WAIT_S * 1000));
                cache_submit(r, BACKEND_WRITE, 1, on_tags_invalidated);
                return;
        }
        if (nlen == 9 && memcmp(name, "namespace", 9) == 0) {
                struct opts no = {0};
                if (!rpc_obj_bytes(v, &p, &plen)) {
                        req_fail(r, RPC_ERR_BAD_REQUEST, "invalidate: namespace must be a string");
                        return;
                }
                no.present = KC_OPT_ns;
                no.s[RPC_OPT_ns].p = p;
                no.s[RPC_OPT_ns].n = plen;
                if (!cache_req_keyspace(r, &no))
                        return;
                cache_eval_start(r, SCRIPT_BUMP, 0);
                cache_submit(r, BACKEND_WRITE, 1, on_bumped);
                near_flush("namespace invalidation");
                return;
        }
        req_fail(r, RPC_ERR_BAD_REQUEST, "invalidate: unknown selector '%.*s'",
                 nlen > 32 ? 32 : (int)nlen, name);
}

/* --- admin helpers --------------------------------------------------------------------- */

void
cache_foreach_ns(void (*fn)(void *priv, const char *name, size_t len,
                            const struct cache_counters *c),
                 void *priv)
{
        for (size_t i = 0; i < cache_ns_cap; i++)
                if (cache_ns[i].name != NULL)
                        fn(priv, cache_ns[i].name, cache_ns[i].len, &cache_ns[i].c);
        fn(priv, NULL, 0, &cache_other);
}

void
cache_reset_counters(void)
{
        memset(&cache_tot, 0, sizeof(cache_tot));
        memset(&cache_other, 0, sizeof(cache_other));
        for (size_t i = 0; i < cache_ns_cap; i++)
                memset(&cache_ns[i].c, 0, sizeof(cache_ns[i].c));
}

int
cache_flush_result(const redisReply *reply, int err, int64_t *gen, const char **why)
{
        if (err != 0) {
                *why = "connection to Redis lost";
                return -1;
        }
        if (reply->type != REDIS_REPLY_STRING) {
                *why = reply->type == REDIS_REPLY_ERROR ? "Redis answered an error" : "unexpected reply";
                return -1;
        }
        cache_tot.invalidations++;
        *gen = strtoll(reply->str, NULL, 10);
        return 0;
}

int
cache_flush_ns(const char *ns, size_t n, struct bcall *call, rconn_reply_fn fn, void *priv,
               const char **why)
{
        struct req fake;
        int rc;

        if (n == 0 || n > 255 || memchr(ns, '\0', n) != NULL) {
                *why = "a namespace is 1 to 255 bytes without NUL";
                return -1;
        }
        memset(&fake, 0, sizeof(fake));
        fake.has_ns = true;
        fake.ns_len = (uint8_t)n;
        memcpy(fake.ns, ns, n);
        near_flush("namespace flush");
        cache_eval_start(&fake, SCRIPT_BUMP, 0);
        rc = backend_call(cache_srv->be, call, BACKEND_WRITE, (const char *)buf_head(&cache_cmd),
                          buf_size(&cache_cmd), 1,
                          ev_now(cache_srv->loop) + cfg()->command_timeout_ms / 1000.0, NULL, fn,
                          priv, 0);
        if (rc != 0) {
                *why = rc == BACKEND_E_UNAVAILABLE ? "no Redis node is reachable" : "out of memory";
                return -1;
        }
        return 0;
}
