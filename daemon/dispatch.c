/* SPDX-License-Identifier: MIT */
/*
 * dispatch: message classification, parameter checks and the request
 * lifecycle (see dispatch.h).
 *
 * What happens to each decoded message:
 *   request, valid msgid, good shape  -> method handler (exactly one response)
 *   request, valid msgid, bad shape   -> BAD_REQUEST response
 *   request, msgid not a uint32       -> cannot be answered: close the connection
 *   notification                      -> counted, never executed or answered
 *   anything else well-formed         -> one kcache.error notification; stays open
 */
#include "daemon/dispatch.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/cache.h"
#include "daemon/conn.h"
#include "daemon/log.h"
#include "daemon/near.h"
#include "daemon/server.h"
#include "daemon/stats.h"

#define REQ_CHUNK 256

typedef void (*handler_fn)(struct req *r, const msgpack_object *args, const struct opts *o);

static const handler_fn handlers[RPC_M_COUNT] = {
#define KC_METHOD(name, n_args, flags, opts, params, result) [RPC_M_##name] = handler_##name,
#include "methods.def"
#undef KC_METHOD
};

static struct req *req_free_list;
static struct log_limit dispatch_log_limit;

static void req_on_deadline(struct ev_loop *loop, ev_timer *w, int revents);

/*
 * The deadline queue: almost every request gets the same timeout
 * (command_timeout_ms) when it starts, so their deadlines come in order and a
 * FIFO holds them sorted: O(1) in and out, one timer for the head, where an
 * ev_timer each cost two heap operations per request (~4 % of kcached's CPU
 * at 50 x 16). Other timeouts (wait_ms, scans, a reloaded command_timeout_ms
 * while older requests are queued) use the request's own timer. The queue's
 * timer is re-armed lazily: a head answered early leaves it to fire, find
 * nothing due and aim at the new head.
 */
static struct {
        struct req *head, *tail;
        int ms; /* the timeout of every request on it */
        struct ev_loop *loop;
        ev_timer timer;
} dl;

static void
dl_unlink(struct req *r)
{
        if (r->dl_prev != NULL)
                r->dl_prev->dl_next = r->dl_next;
        else
                dl.head = r->dl_next;
        if (r->dl_next != NULL)
                r->dl_next->dl_prev = r->dl_prev;
        else
                dl.tail = r->dl_prev;
        r->dl_next = r->dl_prev = NULL;
        r->on_dl = false;
        if (dl.head == NULL)
                ev_timer_stop(dl.loop, &dl.timer); /* nothing to wait for: no idle wake-up */
}

static void
dl_arm(void)
{
        ev_timer_stop(dl.loop, &dl.timer);
        if (dl.head == NULL)
                return;
        ev_timer_set(&dl.timer, dl.head->deadline - ev_now(dl.loop), 0.);
        ev_timer_start(dl.loop, &dl.timer);
}

static void req_deadline_passed(struct req *r);

static void
dl_on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
        while (dl.head != NULL && dl.head->deadline <= ev_now(loop)) {
                struct req *r = dl.head;
                dl_unlink(r);
                req_deadline_passed(r);
        }
        dl_arm();
}

/* Off the queue or its own timer: answered, or about to get another deadline. */
static void
req_clear_deadline(struct req *r)
{
        if (r->on_dl)
                dl_unlink(r);
        else
                ev_timer_stop(r->conn->srv->loop, &r->timer);
}

static struct req *
req_alloc(void)
{
        if (req_free_list == NULL) {
                /* Requests are never given back to malloc: a Redis reply may name a
                 * request long after it was answered, and must find valid memory
                 * with a newer generation. The pool is as large as the peak in flight. */
                struct req *chunk = calloc(REQ_CHUNK, sizeof(*chunk));
                if (chunk == NULL)
                        return NULL;
                for (int i = 0; i < REQ_CHUNK; i++) {
                        ev_timer_init(&chunk[i].timer, req_on_deadline, 0., 0.);
                        bcall_init(&chunk[i].call);
                        chunk[i].next = req_free_list;
                        req_free_list = &chunk[i];
                }
        }
        struct req *r = req_free_list;
        req_free_list = r->next;
        return r;
}

static struct req *
req_new(struct conn *c, uint32_t msgid, enum rpc_method m)
{
        struct req *r = req_alloc();

        if (r == NULL)
                return NULL;
        r->conn = c;
        r->msgid = msgid;
        r->method = m;
        r->aux = 0;
        r->deadline = 0;
        r->started = stats_clock();
        r->is_timeout = false;
        r->has_schema = false;
        r->has_ns = false;
        r->ns_len = 0; /* the id of a get_or_set includes it: no leftovers from a reused req */
        r->schema_len = 0;
        r->ns_slot = -1;
        r->state = NULL;
        r->state_free = NULL;
        r->near_keys = NULL;
        r->near_keys_len = 0;
        r->near_token = 0;
        r->prev = NULL;
        r->next = c->reqs;
        if (c->reqs != NULL)
                c->reqs->prev = r;
        c->reqs = r;
        c->n_inflight++;
        stats.inflight++;
        return r;
}

/* Unlinks and recycles r; its generation moves on so late replies miss it. */
static void
req_release(struct req *r)
{
        struct conn *c = r->conn;

        req_clear_deadline(r);
        backend_call_cancel(&r->call);
        if (r->state_free != NULL)
                r->state_free(r);
        if (r->near_token != 0) {
                near_cancel(r->near_token); /* answered without the fill (timeout, error) */
                r->near_token = 0;
        }
        if (r->near_keys != NULL) {
                /* Evict again as the write completes: a GET that raced with it
                 * cannot leave an old value behind its acknowledgement. */
                for (size_t off = 0; off + sizeof(uint32_t) <= r->near_keys_len;) {
                        uint32_t n;
                        memcpy(&n, r->near_keys + off, sizeof(n));
                        near_evict(r->near_keys + off + sizeof(n), n);
                        off += sizeof(n) + n;
                }
                free(r->near_keys);
                r->near_keys = NULL;
                r->near_keys_len = 0;
        }
        r->state_free = NULL;
        r->state = NULL;
        /* Counted, never expected: completions past the deadline answer TIMEOUT. */
        if (r->deadline != 0 && ev_now(c->srv->loop) > r->deadline + 0.001 && !r->is_timeout)
                stats.replies_after_deadline++;
        /* Answered requests only: one dropped with its connection has no response time. */
        if (r->started != 0 && !c->is_dead)
                stats_request_done(r->method, r->started);
        if (r->prev != NULL)
                r->prev->next = r->next;
        else
                c->reqs = r->next;
        if (r->next != NULL)
                r->next->prev = r->prev;
        c->n_inflight--;
        stats.inflight--;
        r->gen++;
        r->conn = NULL;
        r->next = req_free_list;
        req_free_list = r;
}

msgpack_packer *
req_result(struct req *r)
{
        rpc_pack_result_head(&r->conn->pk, r->msgid);
        return &r->conn->pk;
}

void
req_done(struct req *r)
{
        struct conn *c = r->conn;

        req_release(r);
        conn_on_request_done(c);
}

void
req_fail(struct req *r, enum rpc_error code, const char *fmt, ...)
{
        struct conn *c = r->conn;
        char msg[512];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        stats.errors_by_code[code]++;
        rpc_pack_error(&c->pk, r->msgid, code, msg);
        req_release(r);
        conn_on_request_done(c);
}

void
req_start_deadline(struct req *r, int timeout_ms)
{
        struct ev_loop *loop = r->conn->srv->loop;

        req_clear_deadline(r);
        r->deadline = ev_now(loop) + timeout_ms / 1000.0;
        r->deadline_ms = timeout_ms;
        if (dl.loop == NULL) {
                dl.loop = loop;
                ev_timer_init(&dl.timer, dl_on_timer, 0., 0.);
        }
        if (dl.head == NULL)
                dl.ms = timeout_ms;
        if (timeout_ms == dl.ms && loop == dl.loop) {
                r->on_dl = true;
                r->dl_next = NULL;
                r->dl_prev = dl.tail;
                if (dl.tail != NULL)
                        dl.tail->dl_next = r;
                else
                        dl.head = r;
                dl.tail = r;
                if (dl.head == r)
                        dl_arm(); /* a new head: the timer may aim later (reload) */
                return;
        }
        ev_timer_set(&r->timer, timeout_ms / 1000.0, 0.);
        ev_timer_start(loop, &r->timer);
}

static void
req_on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
        req_deadline_passed((struct req *)((char *)w - offsetof(struct req, timer)));
}

static void
req_deadline_passed(struct req *r)
{
        r->is_timeout = true;
        if (r->method == RPC_M_get_or_set)
                req_fail(r, RPC_ERR_TIMEOUT,
                         "get_or_set: neither a value nor the lease within wait_ms (%d ms)",
                         r->deadline_ms);
        else
                req_fail(r, RPC_ERR_TIMEOUT, "no answer from Redis within %d ms", r->deadline_ms);
}

struct req *
req_lookup(void *priv, uint32_t gen)
{
        struct req *r = priv;

        if (r->gen != gen || r->conn == NULL) {
                stats.late_redis_replies++;
                return NULL;
        }
        return r;
}

void
req_abandon(struct req *r)
{
        req_release(r);
}

void
dispatch_fail_all(struct conn *c, const char *why)
{
        while (c->reqs != NULL)
                req_fail(c->reqs, RPC_ERR_UNAVAILABLE, "%s", why);
}

/* Parses the trailing options map against the method's allowed options. */
static int
parse_opts(const msgpack_object *map, unsigned allowed, struct opts *o, const char **why)
{
        static char msg[160];

        for (uint32_t i = 0; i < map->via.map.size; i++) {
                const msgpack_object *k = &map->via.map.ptr[i].key;
                const msgpack_object *v = &map->via.map.ptr[i].val;
                const char *name;
                size_t len;
                int opt;

                if (!rpc_obj_bytes(k, &name, &len)) {
                        *why = "option names must be strings";
                        return -1;
                }
                opt = rpc_option_find(name, len);
                if (opt < 0 || !(allowed & KC_OPT_BIT(opt))) {
                        snprintf(msg, sizeof(msg), "unknown option '%.*s'", len > 64 ? 64 : (int)len,
                                 name);
                        *why = msg;
                        return -1;
                }
                if (o->present & KC_OPT_BIT(opt)) {
                        snprintf(msg, sizeof(msg), "duplicate option '%s'", rpc_options[opt].name);
                        *why = msg;
                        return -1;
                }
                switch (rpc_options[opt].type) {
                case OPT_INT:
                        if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
                                o->i[opt] = v->via.u64 > INT64_MAX ? INT64_MAX : (int64_t)v->via.u64;
                        } else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
                                o->i[opt] = v->via.i64;
                        } else {
                                snprintf(msg, sizeof(msg), "option '%s' must be an integer",
                                         rpc_options[opt].name);
                                *why = msg;
                                return -1;
                        }
                        break;
                case OPT_STR:
                        if (!rpc_obj_bytes(v, &o->s[opt].p, &o->s[opt].n)) {
                                snprintf(msg, sizeof(msg), "option '%s' must be a string",
                                         rpc_options[opt].name);
                                *why = msg;
                                return -1;
                        }
                        break;
                case OPT_STRLIST:
                        if (v->type != MSGPACK_OBJECT_ARRAY) {
                                snprintf(msg, sizeof(msg), "option '%s' must be an array of strings",
                                         rpc_options[opt].name);
                                *why = msg;
                                return -1;
                        }
                        for (uint32_t e = 0; e < v->via.array.size; e++) {
                                const char *ep;
                                size_t en;
                                if (!rpc_obj_bytes(&v->via.array.ptr[e], &ep, &en)) {
                                        snprintf(msg, sizeof(msg),
                                                 "option '%s' must be an array of strings",
                                                 rpc_options[opt].name);
                                        *why = msg;
                                        return -1;
                                }
                        }
                        o->list[opt] = v;
                        break;
                case OPT_BOOL:
                        if (v->type != MSGPACK_OBJECT_BOOLEAN) {
                                snprintf(msg, sizeof(msg), "option '%s' must be a boolean",
                                         rpc_options[opt].name);
                                *why = msg;
                                return -1;
                        }
                        o->b[opt] = v->via.boolean;
                        break;
                }
                o->present |= KC_OPT_BIT(opt);
        }
        return 0;
}

static void
dispatch_request(struct conn *c, const struct rpc_msg *m)
{
        const struct rpc_method_info *mi;
        const msgpack_object_array *params = &m->params->via.array;
        struct opts o = {0};
        const char *why = NULL;
        struct req *r;
        int mid;

        mid = rpc_method_find(m->method, m->method_len);
        r = req_new(c, m->msgid, mid < 0 ? RPC_M_ping : (enum rpc_method)mid);
        if (r == NULL) {
                conn_close(c, "out of memory");
                return;
        }
        if (mid < 0) {
                r->started = 0; /* not a method: no latency to count under one */
                req_fail(r, RPC_ERR_NO_METHOD, "no method '%.*s'",
                         m->method_len > 64 ? 64 : (int)m->method_len, m->method);
                return;
        }
        stats.requests_by_method[mid]++;
        mi = &rpc_methods[mid];
        if (params->size == mi->n_args + 1) {
                const msgpack_object *last = &params->ptr[mi->n_args];
                if (last->type == MSGPACK_OBJECT_MAP) {
                        if (parse_opts(last, mi->opts, &o, &why) < 0) {
                                req_fail(r, RPC_ERR_BAD_REQUEST, "%s: %s", mi->name, why);
                                return;
                        }
                } else if (last->type != MSGPACK_OBJECT_NIL) {
                        req_fail(r, RPC_ERR_BAD_REQUEST, "%s: the last parameter must be an options map",
                                 mi->name);
                        return;
                }
        } else if (params->size != mi->n_args) {
                req_fail(r, RPC_ERR_BAD_REQUEST, "%s: expects params %s, got %u element(s)", mi->name,
                         mi->params, params->size);
                return;
        }
        handlers[mid](r, params->ptr, &o);
}

void
dispatch_message(struct conn *c, const msgpack_object *obj)
{
        struct rpc_msg m = {.type = RPC_RESPONSE}; /* what rpc_parse leaves unset routes to junk */
        const char *why = "not a msgpack-RPC message";
        int r = rpc_parse(obj, &m, &why);

        if (r == RPC_OK && m.type == RPC_REQUEST) {
                stats.requests++;
                c->n_requests++;
                dispatch_request(c, &m);
                return;
        }
        if (m.type == RPC_NOTIFY && r != RPC_E_NO_MSGID) {
                /* Generic clients send these (client info on connect): never an error. */
                stats.notifications++;
                if (r != RPC_OK)
                        stats.protocol_errors++;
                return;
        }
        if (r == RPC_E_BAD && m.type == RPC_REQUEST) {
                struct req *q;
                stats.requests++;
                c->n_requests++;
                q = req_new(c, m.msgid, RPC_M_ping);
                if (q == NULL) {
                        conn_close(c, "out of memory");
                        return;
                }
                q->started = 0; /* no method to count it under */
                req_fail(q, RPC_ERR_BAD_REQUEST, "%s", why);
                return;
        }
        stats.protocol_errors++;
        if (log_ratelimit(&dispatch_log_limit, 10))
                log_warn("dispatch", "bad_message", "dispatch: client %llu: %s",
                         (unsigned long long)c->id, why);
        if (r == RPC_E_NO_MSGID && obj->type == MSGPACK_OBJECT_ARRAY && obj->via.array.size >= 1 &&
            obj->via.array.ptr[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
            obj->via.array.ptr[0].via.u64 == RPC_REQUEST) {
                /* A request whose msgid we cannot echo: no reply can be matched to it. */
                conn_close(c, "request without a valid msgid");
                return;
        }
        stats.errors_by_code[RPC_ERR_BAD_REQUEST]++;
        rpc_pack_error_notify(&c->pk, RPC_ERR_BAD_REQUEST, why);
        conn_mark_dirty(c);
}
