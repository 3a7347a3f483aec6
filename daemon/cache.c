/* SPDX-License-Identifier: MIT */
/*
 * cache: method handlers (see cache.h).
 *
 * Each handler validates its positional arguments, writes the Redis command
 * into a scratch RESP buffer (keys as key_prefix + key, binary safe), and
 * submits it with a completion function that turns the reply into the
 * result. RESP is written here directly rather than with
 * redisFormatCommandArgv(): the prefixed keys would otherwise need an argv
 * array and a copy each, and RESP's request format is four lines of grammar.
 *
 * Reply mapping shared by all: a Redis error reply is BACKEND with Redis's
 * message; a lost connection is UNAVAILABLE; an unexpected reply type is
 * INTERNAL (a Redis that answers nonsense is not the app's fault).
 */
#include "daemon/cache.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "buf.h"
#include "daemon/backend.h"
#include "daemon/conn.h"
#include "daemon/server.h"
#include "daemon/stats.h"
#include "kcache-version.h"

#define CACHE_TTL_MAX 2147483647LL

static struct server *cache_srv; /* ref */
static struct buf cache_cmd;     /* scratch RESP command, reused */

void
cache_init(struct server *srv)
{
        cache_srv = srv;
        buf_init(&cache_cmd);
}

/* --- RESP writing ------------------------------------------------------- */

static int cache_cmd_failed;

static void
resp_raw(const void *p, size_t n)
{
        if (buf_append(&cache_cmd, p, n) < 0)
                cache_cmd_failed = 1;
}

static void
resp_start(size_t n_args)
{
        char hdr[32];

        buf_clear(&cache_cmd);
        cache_cmd_failed = 0;
        resp_raw(hdr, (size_t)snprintf(hdr, sizeof(hdr), "*%zu\r\n", n_args));
}

static void
resp_append_header(size_t n_args)
{
        char hdr[32];

        resp_raw(hdr, (size_t)snprintf(hdr, sizeof(hdr), "*%zu\r\n", n_args));
}

static void
resp_bulk(const char *p, size_t n)
{
        char hdr[32];

        resp_raw(hdr, (size_t)snprintf(hdr, sizeof(hdr), "$%zu\r\n", n));
        resp_raw(p, n);
        resp_raw("\r\n", 2);
}

static void
resp_str(const char *s)
{
        resp_bulk(s, strlen(s));
}

static void
resp_key(const char *key, size_t n)
{
        const char *prefix = cache_srv->cfg->key_prefix;
        size_t plen = strlen(prefix);
        char hdr[32];

        resp_raw(hdr, (size_t)snprintf(hdr, sizeof(hdr), "$%zu\r\n", plen + n));
        resp_raw(prefix, plen);
        resp_raw(key, n);
        resp_raw("\r\n", 2);
}

static void
resp_int(int64_t v)
{
        char s[32];

        resp_bulk(s, (size_t)snprintf(s, sizeof(s), "%" PRId64, v));
}

/* --- argument helpers --------------------------------------------------- */

static bool
arg_key(struct req *r, const msgpack_object *o, const char **p, size_t *n, const char *what)
{
        if (rpc_obj_bytes(o, p, n))
                return true;
        req_fail(r, RPC_ERR_BAD_REQUEST, "%s: %s must be bytes (bin or str)",
                 rpc_methods[r->method].name, what);
        return false;
}

/* An array of keys within max_batch_keys. */
static bool
arg_key_list(struct req *r, const msgpack_object *o)
{
        const char *p;
        size_t n;

        if (o->type != MSGPACK_OBJECT_ARRAY) {
                req_fail(r, RPC_ERR_BAD_REQUEST, "%s: the first parameter must be an array of keys",
                         rpc_methods[r->method].name);
                return false;
        }
        if (o->via.array.size > (uint32_t)cache_srv->cfg->max_batch_keys) {
                req_fail(r, RPC_ERR_TOO_LARGE, "%s: %u keys exceed max_batch_keys (%d)",
                         rpc_methods[r->method].name, o->via.array.size,
                         cache_srv->cfg->max_batch_keys);
                return false;
        }
        for (uint32_t i = 0; i < o->via.array.size; i++)
                if (!arg_key(r, &o->via.array.ptr[i], &p, &n, "every key"))
                        return false;
        return true;
}

/* Seconds for a write: 1..2^31-1, clamped to max_ttl; default_ttl when absent. */
static bool
arg_ttl(struct req *r, bool present, int64_t v, int64_t *ttl, const char *what)
{
        if (!present) {
                *ttl = cache_srv->cfg->default_ttl;
                return true;
        }
        if (v < 1 || v > CACHE_TTL_MAX) {
                req_fail(r, RPC_ERR_BAD_REQUEST, "%s: %s must be an integer from 1 to 2147483647",
                         rpc_methods[r->method].name, what);
                return false;
        }
        if (v > cache_srv->cfg->max_ttl) {
                stats.ttl_clamped++;
                v = cache_srv->cfg->max_ttl;
        }
        *ttl = v;
        return true;
}

/* --- submitting and completing ------------------------------------------ */

/* Reads honour the per-call consistency option. */
static enum backend_route
read_route(const struct opts *o)
{
        return (o->present & KC_OPT_consistency) ? BACKEND_READ_PRIMARY : BACKEND_READ;
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
        req_fail(r, RPC_ERR_BAD_REQUEST, "%s: consistency must be \"primary\"",
                 rpc_methods[r->method].name);
        return false;
}

static void
cache_submit(struct req *r, enum backend_route route, unsigned n_replies, rconn_reply_fn fn)
{
        int rc;

        if (cache_cmd_failed) {
                req_fail(r, RPC_ERR_INTERNAL, "out of memory");
                return;
        }
        req_start_deadline(r, cache_srv->cfg->command_timeout_ms);
        r->conn->aff.is_sticky = r->conn->n_inflight > 1;
        rc = backend_call(cache_srv->be, &r->call, route, (const char *)buf_head(&cache_cmd),
                          buf_size(&cache_cmd), n_replies, r->deadline, &r->conn->aff, fn, r,
                          r->gen);
        if (rc == BACKEND_E_UNAVAILABLE) {
                req_fail(r, RPC_ERR_UNAVAILABLE, "no Redis node is reachable");
                return;
        }
        if (rc < 0) {
                req_fail(r, RPC_ERR_INTERNAL, "out of memory");
                return;
        }
        /* Keep the scratch buffer from pinning a huge mset forever. */
        buf_shrink(&cache_cmd, 64 * 1024);
}

/*
 * Common part of every completion: the request (NULL if already answered)
 * once the reply is known to be neither a loss nor a Redis error.
 */
static struct req *
cache_reply_req(void *priv, uint32_t gen, const redisReply *reply, int err)
{
        struct req *r = req_lookup(priv, gen);

        if (r == NULL)
                return NULL;
        if (ev_now(cache_srv->loop) > r->deadline) {
                /* The deadline timer is due in this same iteration: it wins. */
                r->is_timeout = true;
                req_fail(r, RPC_ERR_TIMEOUT, "no answer from Redis within command_timeout_ms (%d ms)",
                         cache_srv->cfg->command_timeout_ms);
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
        req_fail(r, RPC_ERR_INTERNAL, "%s: unexpected Redis reply type %d",
                 rpc_methods[r->method].name, reply->type);
}

static void
on_bulk(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct req *r = cache_reply_req(priv, gen, reply, err);

        if (r == NULL)
                return;
        if (reply->type == REDIS_REPLY_NIL)
                msgpack_pack_nil(req_result(r));
        else if (reply->type == REDIS_REPLY_STRING)
                rpc_pack_bin(req_result(r), reply->str, reply->len);
        else
                {
                        reply_unexpected(r, reply);
                        return;
                }
        req_done(r);
}

static void
on_integer(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct req *r = cache_reply_req(priv, gen, reply, err);

        if (r == NULL)
                return;
        if (reply->type != REDIS_REPLY_INTEGER)
                {
                        reply_unexpected(r, reply);
                        return;
                }
        msgpack_pack_int64(req_result(r), reply->integer);
        req_done(r);
}

static void
on_integer_bool(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct req *r = cache_reply_req(priv, gen, reply, err);

        if (r == NULL)
                return;
        if (reply->type != REDIS_REPLY_INTEGER)
                {
                        reply_unexpected(r, reply);
                        return;
                }
        if (reply->integer != 0)
                msgpack_pack_true(req_result(r));
        else
                msgpack_pack_false(req_result(r));
        req_done(r);
}

static void
on_ok(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct req *r = cache_reply_req(priv, gen, reply, err);

        if (r == NULL)
                return;
        if (reply->type != REDIS_REPLY_STATUS)
                {
                        reply_unexpected(r, reply);
                        return;
                }
        msgpack_pack_true(req_result(r));
        req_done(r);
}

static void
on_array_of_bulk(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct req *r = cache_reply_req(priv, gen, reply, err);
        msgpack_packer *pk;

        if (r == NULL)
                return;
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements != (size_t)r->aux)
                {
                        reply_unexpected(r, reply);
                        return;
                }
        for (size_t i = 0; i < reply->elements; i++) {
                int t = reply->element[i]->type;
                if (t != REDIS_REPLY_NIL && t != REDIS_REPLY_STRING)
                        {
                        reply_unexpected(r, reply->element[i]);
                        return;
                }
        }
        pk = req_result(r);
        msgpack_pack_array(pk, reply->elements);
        for (size_t i = 0; i < reply->elements; i++) {
                const redisReply *e = reply->element[i];
                if (e->type == REDIS_REPLY_NIL)
                        msgpack_pack_nil(pk);
                else
                        rpc_pack_bin(pk, e->str, e->len);
        }
        req_done(r);
}

/* EXEC of MULTI/SET.../EXEC: every queued command must have said OK. */
static void
on_exec_ok(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct req *r = cache_reply_req(priv, gen, reply, err);

        if (r == NULL)
                return;
        if (reply->type != REDIS_REPLY_ARRAY)
                {
                        reply_unexpected(r, reply);
                        return;
                }
        for (size_t i = 0; i < reply->elements; i++) {
                const redisReply *e = reply->element[i];
                if (e->type == REDIS_REPLY_ERROR) {
                        req_fail(r, RPC_ERR_BACKEND, "%.*s",
                                 (int)(e->len > 400 ? 400 : e->len), e->str);
                        return;
                }
        }
        msgpack_pack_true(req_result(r));
        req_done(r);
}

/* --- handlers ------------------------------------------------------------ */

void
handler_hello(struct req *r, const msgpack_object *args, const struct opts *o)
{
        const struct config *cfg = cache_srv->cfg;
        msgpack_packer *pk = req_result(r);

        msgpack_pack_map(pk, 6);
        rpc_pack_str(pk, "server");
        rpc_pack_str(pk, "kcached");
        rpc_pack_str(pk, "version");
        rpc_pack_str(pk, KCACHE_VERSION);
        rpc_pack_str(pk, "protocol");
        msgpack_pack_int(pk, RPC_PROTOCOL_VERSION);
        rpc_pack_str(pk, "limits");
        msgpack_pack_map(pk, 4);
        rpc_pack_str(pk, "max_request_bytes");
        msgpack_pack_int64(pk, cfg->max_request_bytes);
        rpc_pack_str(pk, "max_batch_keys");
        msgpack_pack_int64(pk, cfg->max_batch_keys);
        rpc_pack_str(pk, "max_nesting");
        msgpack_pack_int64(pk, cfg->max_nesting);
        rpc_pack_str(pk, "max_ttl");
        msgpack_pack_int64(pk, cfg->max_ttl);
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
handler_get(struct req *r, const msgpack_object *args, const struct opts *o)
{
        const char *key;
        size_t klen;

        if (!arg_key(r, &args[0], &key, &klen, "key") || !arg_consistency(r, o))
                return;
        resp_start(2);
        resp_str("GET");
        resp_key(key, klen);
        cache_submit(r, read_route(o), 1, on_bulk);
}

void
handler_set(struct req *r, const msgpack_object *args, const struct opts *o)
{
        const char *key, *val;
        size_t klen, vlen;
        int64_t ttl;

        if (!arg_key(r, &args[0], &key, &klen, "key") ||
            !arg_key(r, &args[1], &val, &vlen, "value") ||
            !arg_ttl(r, o->present & KC_OPT_ttl, o->i[RPC_OPT_ttl], &ttl, "ttl"))
                return;
        resp_start(5);
        resp_str("SET");
        resp_key(key, klen);
        resp_bulk(val, vlen);
        resp_str("EX");
        resp_int(ttl);
        cache_submit(r, BACKEND_WRITE, 1, on_ok);
}

/* COMMAND key... for del/mget/exists; an empty list is answered here. */
static void
keys_command(struct req *r, const msgpack_object *list, const char *cmd, rconn_reply_fn fn,
             enum backend_route route)
{
        const char *key;
        size_t klen;

        if (!arg_key_list(r, list))
                return;
        if (list->via.array.size == 0) {
                if (fn == on_array_of_bulk)
                        msgpack_pack_array(req_result(r), 0);
                else
                        msgpack_pack_int(req_result(r), 0);
                req_done(r);
                return;
        }
        r->aux = list->via.array.size;
        resp_start(1 + list->via.array.size);
        resp_str(cmd);
        for (uint32_t i = 0; i < list->via.array.size; i++) {
                rpc_obj_bytes(&list->via.array.ptr[i], &key, &klen);
                resp_key(key, klen);
        }
        cache_submit(r, route, 1, fn);
}

void
handler_del(struct req *r, const msgpack_object *args, const struct opts *o)
{
        /* UNLINK: same count as DEL, but Redis frees big values off its main thread. */
        keys_command(r, &args[0], "UNLINK", on_integer, BACKEND_WRITE);
}

void
handler_mget(struct req *r, const msgpack_object *args, const struct opts *o)
{
        if (arg_consistency(r, o))
                keys_command(r, &args[0], "MGET", on_array_of_bulk, read_route(o));
}

void
handler_exists(struct req *r, const msgpack_object *args, const struct opts *o)
{
        if (arg_consistency(r, o))
                keys_command(r, &args[0], "EXISTS", on_integer, read_route(o));
}

void
handler_mset(struct req *r, const msgpack_object *args, const struct opts *o)
{
        const msgpack_object *map = &args[0];
        const char *key, *val;
        size_t klen, vlen;
        int64_t ttl;

        if (map->type != MSGPACK_OBJECT_MAP) {
                req_fail(r, RPC_ERR_BAD_REQUEST, "mset: the first parameter must be a map of key to value");
                return;
        }
        if (map->via.map.size > (uint32_t)cache_srv->cfg->max_batch_keys) {
                req_fail(r, RPC_ERR_TOO_LARGE, "mset: %u keys exceed max_batch_keys (%d)",
                         map->via.map.size, cache_srv->cfg->max_batch_keys);
                return;
        }
        for (uint32_t i = 0; i < map->via.map.size; i++)
                if (!arg_key(r, &map->via.map.ptr[i].key, &key, &klen, "every key") ||
                    !arg_key(r, &map->via.map.ptr[i].val, &val, &vlen, "every value"))
                        return;
        if (!arg_ttl(r, o->present & KC_OPT_ttl, o->i[RPC_OPT_ttl], &ttl, "ttl"))
                return;
        if (map->via.map.size == 0) {
                msgpack_pack_true(req_result(r));
                req_done(r);
                return;
        }
        /* MULTI, one SET EX per key, EXEC: atomic, one round trip, and every key
         * gets its expiry (MSET cannot set one). */
        resp_start(1);
        resp_str("MULTI");
        for (uint32_t i = 0; i < map->via.map.size; i++) {
                rpc_obj_bytes(&map->via.map.ptr[i].key, &key, &klen);
                rpc_obj_bytes(&map->via.map.ptr[i].val, &val, &vlen);
                resp_append_header(5);
                resp_str("SET");
                resp_key(key, klen);
                resp_bulk(val, vlen);
                resp_str("EX");
                resp_int(ttl);
        }
        resp_append_header(1);
        resp_str("EXEC");
        cache_submit(r, BACKEND_WRITE, map->via.map.size + 2, on_exec_ok);
}

void
handler_ttl(struct req *r, const msgpack_object *args, const struct opts *o)
{
        const char *key;
        size_t klen;

        if (!arg_key(r, &args[0], &key, &klen, "key") || !arg_consistency(r, o))
                return;
        resp_start(2);
        resp_str("TTL");
        resp_key(key, klen);
        cache_submit(r, read_route(o), 1, on_integer);
}

void
handler_expire(struct req *r, const msgpack_object *args, const struct opts *o)
{
        const char *key;
        size_t klen;
        int64_t secs, v;

        if (!arg_key(r, &args[0], &key, &klen, "key"))
                return;
        if (args[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER)
                v = args[1].via.u64 > INT64_MAX ? INT64_MAX : (int64_t)args[1].via.u64;
        else if (args[1].type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
                v = args[1].via.i64;
        else
                v = 0; /* not an integer: rejected below */
        if (!arg_ttl(r, true, v, &secs, "seconds"))
                return;
        resp_start(3);
        resp_str("EXPIRE");
        resp_key(key, klen);
        resp_int(secs);
        cache_submit(r, BACKEND_WRITE, 1, on_integer_bool);
}
