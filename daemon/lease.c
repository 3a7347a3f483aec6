/* SPDX-License-Identifier: MIT */
/*
 * lease: get_or_set / fill / release (see lease.h for the state machine).
 *
 * Ownership: an entry owns copies of what it needs to run the script again
 * (key, field, ns, schema); waiting requests point at their entry through
 * r->state with lease_detach() as state_free, so a waiter that times out or
 * whose client goes away unlinks itself. Entries are few (one per cold key
 * being loaded) and live on one list.
 */
#include "daemon/lease.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "daemon/backend.h"
#include "daemon/cache.h"
#include "daemon/conn.h"
#include "daemon/log.h"
#include "daemon/server.h"
#include "daemon/stats.h"

#define LEASE_MIN_MS 10
#define LEASE_MAX_MS 600000

enum lstate { L_ACQUIRING, L_HELD, L_REMOTE };

struct lentry {
        struct lentry *next, *prev;
        enum lstate state;
        char *id; /* ns NUL key NUL field NUL schema: the coalescing identity */
        size_t id_len;
        char *key, *field; /* copies; id, key and field live in the entry's own block */
        size_t klen, flen;
        int lease_ms;
        struct req proto; /* ns/schema/ns_slot carrier for scripts and counters */
        struct req *leader; /* ref: runs the script now (ACQUIRING) */
        struct req *whead, *wtail; /* refs: waiting requests */
        char *lk; /* the lease key in Redis, known after the first answer; owned */
        size_t lk_len;
        uint64_t holder; /* HELD: the client connection's id */
        char token[48];
        ev_timer timer; /* HELD: lease expiry; REMOTE: the remote lease's PTTL */
        uint8_t *stale; /* HELD after a stale grant: served to later callers; owned */
        size_t stale_len;
        bool has_stale;
        struct bcall call; /* a release on behalf of a vanished holder */
        uint32_t call_gen;
        bool call_pending; /* call's completion is due: the memory must outlive it */
        bool is_zombie;    /* freed while call_pending: the completion frees it */
        /* ACQUIRING: a fill/release notice for this key arrived while the script
         * was on its way. If the script then says "held elsewhere", that holder
         * may already be done, and its notice is gone: look again at once. */
        bool notice_seen;
        bool is_small; /* the block has LENTRY_SMALL bytes: it may be kept for reuse */
};

/*
 * A get_or_set that hits still makes an entry for the length of one script;
 * blocks up to LENTRY_SMALL bytes (the entry, its identity, key and field) are
 * kept on a short free list so that this costs no allocation.
 */
#define LENTRY_SMALL (sizeof(struct lentry) + 384)
#define LENTRY_KEEP 64
static struct lentry *lease_spare;
static unsigned lease_n_spare;
static bool lease_closed; /* after lease_deinit(): blocks go back to malloc */

static struct lentry *
entry_block_new(size_t extra)
{
        struct lentry *e;

        if (sizeof(*e) + extra > LENTRY_SMALL)
                return calloc(1, sizeof(*e) + extra);
        e = lease_spare;
        if (e != NULL) {
                lease_spare = e->next;
                lease_n_spare--;
                memset(e, 0, LENTRY_SMALL);
        } else if ((e = calloc(1, LENTRY_SMALL)) == NULL) {
                return NULL;
        }
        e->is_small = true;
        return e;
}

static void
entry_block_free(struct lentry *e)
{
        if (e->is_small && lease_n_spare < LENTRY_KEEP && !lease_closed) {
                e->next = lease_spare;
                lease_spare = e;
                lease_n_spare++;
                return;
        }
        free(e);
}

static struct server *lease_srv;
static struct lentry *lease_entries;
static uint64_t lease_seed, lease_counter;

static void lease_detach(struct req *r);
static void entry_drive(struct lentry *e);

static const char *const lstate_names[] = {"acquiring", "held", "remote"};

/* One debug line per transition: enough to replay a stuck waiter from the log. */
static void ltrace(const struct lentry *e, const char *ev, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
#define LTRACE(e, ev, ...)                                                                         \
        do {                                                                                       \
                if (LOG_DEBUG >= log_level_current)                                                \
                        ltrace((e), (ev), __VA_ARGS__);                                            \
        } while (0)

static void
ltrace(const struct lentry *e, const char *ev, const char *fmt, ...)
{
        char buf[256];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        log_write(LOG_DEBUG, "lease", ev, "entry=%p state=%s key=%.*s %s", (const void *)e,
                  lstate_names[e->state], (int)(e->klen > 64 ? 64 : e->klen),
                  e->key != NULL ? e->key : "", buf);
}

/* --- entries ------------------------------------------------------------------ */

static void
entry_on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct lentry *e = (struct lentry *)((char *)w - offsetof(struct lentry, timer));

        LTRACE(e, "timer", "ran_out=%s", e->state == L_HELD ? "lease" : "remote_pttl");
        /* HELD: the holder let it expire; REMOTE: the other loader's lease ran out. */
        entry_drive(e);
}

/* Writes r's identity for (key, field): ns NUL key NUL field NUL schema. */
static void
id_fill(char *q, const struct req *r, const char *key, size_t klen, const char *field,
        size_t flen)
{
        memcpy(q, r->ns, r->ns_len), q += r->ns_len;
        *q++ = '\0';
        memcpy(q, key, klen), q += klen;
        *q++ = '\0';
        if (flen > 0)
                memcpy(q, field, flen), q += flen;
        *q++ = '\0';
        memcpy(q, r->schema, r->schema_len);
}

/* The entry with r's identity for (key, field), n bytes long; compared in place. */
static struct lentry *
entry_find(const struct req *r, const char *key, size_t klen, const char *field, size_t flen,
           size_t n)
{
        for (struct lentry *e = lease_entries; e != NULL; e = e->next) {
                const char *p = e->id;
                if (e->id_len != n || memcmp(p, r->ns, r->ns_len) != 0)
                        continue;
                p += r->ns_len + 1;
                if (memcmp(p, key, klen) != 0)
                        continue;
                p += klen + 1;
                if ((flen > 0 && memcmp(p, field, flen) != 0))
                        continue;
                p += flen + 1;
                if (memcmp(p, r->schema, r->schema_len) == 0)
                        return e;
        }
        return NULL;
}

static void
entry_free(struct lentry *e)
{
        LTRACE(e, "free", "pending_release=%d", e->call_pending);
        ev_timer_stop(lease_srv->loop, &e->timer);
        if (e->prev != NULL)
                e->prev->next = e->next;
        else
                lease_entries = e->next;
        if (e->next != NULL)
                e->next->prev = e->prev;
        free(e->lk);
        free(e->stale);
        e->id = e->key = e->field = e->lk = NULL;
        e->stale = NULL;
        /* A release sent for a vanished holder still names e: let it land first. */
        if (e->call_pending) {
                e->is_zombie = true;
                e->next = e->prev = NULL;
                return;
        }
        entry_block_free(e);
}

static void
waiter_add(struct lentry *e, struct req *r)
{
        LTRACE(e, "wait", "conn=%" PRIu64 " msgid=%" PRIu32, r->conn->id, r->msgid);
        r->state = e;
        r->state_free = lease_detach;
        r->lnext = NULL;
        if (e->wtail != NULL)
                e->wtail->lnext = r;
        else
                e->whead = r;
        e->wtail = r;
}

/* A waiting or leading request is released (answered, timed out, client gone). */
static void
lease_detach(struct req *r)
{
        struct lentry *e = r->state;
        struct req **pp;

        r->state = NULL;
        r->state_free = NULL;
        LTRACE(e, "detach", "conn=%" PRIu64 " msgid=%" PRIu32 " leader=%d", r->conn->id, r->msgid,
               e->leader == r);
        if (e->leader == r) {
                e->leader = NULL;
                /* Its script was cancelled with it: someone else must drive. */
                if (e->state == L_ACQUIRING)
                        entry_drive(e);
                return;
        }
        e->wtail = NULL;
        for (pp = &e->whead; *pp != NULL; pp = &(*pp)->lnext) {
                if (*pp == r) {
                        *pp = r->lnext;
                        break;
                }
        }
        for (struct req *w = e->whead; w != NULL; w = w->lnext)
                e->wtail = w;
        if (e->whead == NULL && e->leader == NULL && e->state != L_HELD)
                entry_free(e);
}

/* Takes every waiter off e (so that answering them cannot touch e). */
static struct req *
entry_take_waiters(struct lentry *e)
{
        struct req *list = e->whead;

        e->whead = e->wtail = NULL;
        for (struct req *w = list; w != NULL; w = w->lnext) {
                w->state = NULL;
                w->state_free = NULL;
        }
        return list;
}

static void
answer_value(struct req *r, const uint8_t *data, size_t len, bool stale, const char *token)
{
        msgpack_packer *pk = req_result(r);

        msgpack_pack_map(pk, 1 + (stale ? 1 : 0) + (token != NULL ? 1 : 0));
        rpc_pack_str(pk, "value");
        rpc_pack_bin(pk, data, len);
        if (stale) {
                rpc_pack_str(pk, "stale");
                msgpack_pack_true(pk);
                CACHE_COUNT(r, stale_served, 1);
        }
        if (token != NULL) {
                rpc_pack_str(pk, "lease");
                rpc_pack_str(pk, token);
        }
        req_done(r);
}

/* Answers every waiter with a value (a hit or a fill) and ends the entry. */
static void
entry_answer_all(struct lentry *e, const uint8_t *data, size_t len, bool stale)
{
        struct req *w = entry_take_waiters(e);

        while (w != NULL) {
                struct req *next = w->lnext;
                answer_value(w, data, len, stale, NULL);
                w = next;
        }
}

/* --- the GOS script ------------------------------------------------------------- */

static void on_gos(void *priv, uint32_t gen, redisReply *reply, int err);

static void
make_token(char *out, size_t n)
{
        snprintf(out, n, "%016" PRIx64 "%08" PRIx64, lease_seed, ++lease_counter);
}

static void
gos_send(struct lentry *e, struct req *r, bool force)
{
        char tok[48], ms[16];

        make_token(tok, sizeof(tok));
        snprintf(ms, sizeof(ms), "%d", e->lease_ms);
        LTRACE(e, "gos", "conn=%" PRIu64 " msgid=%" PRIu32 " token=%s had_leader=%d", r->conn->id,
               r->msgid, tok, e->leader != NULL);
        e->leader = r;
        e->state = L_ACQUIRING;
        e->notice_seen = false;
        r->state = e;
        r->state_free = lease_detach;
        r->aux = force;
        cache_eval_start(&e->proto, SCRIPT_GOS, 5);
        cache_resp_bulk(e->key, e->klen);
        cache_resp_bulk(e->field != NULL ? e->field : "", e->flen);
        cache_resp_bulk(tok, strlen(tok));
        cache_resp_bulk(ms, strlen(ms));
        cache_resp_bulk(force ? "1" : "0", 1);
        cache_submit(r, BACKEND_WRITE, 1, on_gos);
}

/* Next waiter runs the script; no waiter: the entry ends. */
static void
entry_drive(struct lentry *e)
{
        struct req *w;

        ev_timer_stop(lease_srv->loop, &e->timer);
        free(e->stale);
        e->stale = NULL;
        e->has_stale = false;
        w = e->whead;
        if (w == NULL) {
                if (e->leader == NULL)
                        entry_free(e);
                else
                        e->state = L_ACQUIRING;
                return;
        }
        e->whead = w->lnext;
        if (e->whead == NULL)
                e->wtail = NULL;
        w->lnext = NULL;
        gos_send(e, w, false);
}

static void
entry_set_lk(struct lentry *e, const char *g, size_t glen)
{
        size_t mlen, plen = strlen(lease_srv->cfg->key_prefix);
        const char *m = cache_meta(&mlen);
        size_t n = mlen + 6 + plen + (e->proto.has_ns ? 1 + e->proto.ns_len + 1 + glen + 1 : 0) +
                   e->klen + 1 + e->flen;
        char *p = malloc(n), *q;

        if (p == NULL)
                return;
        q = p;
        memcpy(q, m, mlen), q += mlen;
        memcpy(q, "lease", 6), q += 6;
        memcpy(q, lease_srv->cfg->key_prefix, plen), q += plen;
        if (e->proto.has_ns) {
                *q++ = '\0';
                memcpy(q, e->proto.ns, e->proto.ns_len), q += e->proto.ns_len;
                *q++ = '\0';
                memcpy(q, g, glen), q += glen;
                *q++ = '\0';
        }
        memcpy(q, e->key, e->klen), q += e->klen;
        *q++ = '\0';
        if (e->flen > 0)
                memcpy(q, e->field, e->flen);
        free(e->lk);
        e->lk = p;
        e->lk_len = n;
}

static void
on_gos(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct req *r = cache_reply_req(priv, gen, reply, err);
        struct lentry *e;
        const redisReply *a;
        long long code;
        const uint8_t *data;
        size_t len;
        bool has_stale;

        if (r == NULL)
                return; /* answered: release detached it and drove the entry */
        e = r->state;
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 ||
            reply->element[0]->type != REDIS_REPLY_INTEGER) {
                req_fail(r, RPC_ERR_INTERNAL, "get_or_set: unexpected reply from the lease script");
                return;
        }
        a = reply->element[0];
        code = a->integer;
        LTRACE(e, "gos_answer", "conn=%" PRIu64 " msgid=%" PRIu32 " code=%lld leader_is_me=%d",
               r->conn->id, r->msgid, code, e->leader == r);
        e->leader = NULL;
        r->state = NULL;
        r->state_free = NULL;
        if (code == 1) {
                bool stale = reply->element[2]->type == REDIS_REPLY_INTEGER &&
                             reply->element[2]->integer == 1;
                const redisReply *v = reply->element[1];
                if (v->type == REDIS_REPLY_STRING &&
                    cache_decode(r, v->str, v->len, &data, &len, &has_stale)) {
                        answer_value(r, data, len, stale, NULL);
                        entry_answer_all(e, data, len, stale);
                        entry_free(e);
                        return;
                }
                /* Unusable (schema, corrupt): load again, over the stored value. */
                if (r->aux == 0) {
                        gos_send(e, r, true);
                        return;
                }
                req_fail(r, RPC_ERR_INTERNAL, "get_or_set: stored value unusable");
                entry_drive(e);
                return;
        }
        if (code == 2 || code == 4) {
                const redisReply *tok = reply->element[code == 2 ? 1 : 2];
                const redisReply *g = reply->element[code == 2 ? 2 : 3];
                if (tok->type != REDIS_REPLY_STRING || g->type != REDIS_REPLY_STRING ||
                    tok->len >= sizeof(e->token)) {
                        req_fail(r, RPC_ERR_INTERNAL, "get_or_set: unexpected lease reply");
                        entry_drive(e);
                        return;
                }
                memcpy(e->token, tok->str, tok->len);
                e->token[tok->len] = '\0';
                entry_set_lk(e, g->str, g->len);
                e->state = L_HELD;
                e->holder = r->conn->id;
                ev_timer_set(&e->timer, e->lease_ms / 1000.0, 0.);
                ev_timer_start(lease_srv->loop, &e->timer);
                CACHE_COUNT(r, leases_granted, 1);
                if (code == 4) {
                        const redisReply *v = reply->element[1];
                        if (v->type == REDIS_REPLY_STRING &&
                            cache_decode(r, v->str, v->len, &data, &len, &has_stale)) {
                                /* Later callers get the stale value at once while this one loads. */
                                e->stale = malloc(len + 1);
                                if (e->stale != NULL) {
                                        memcpy(e->stale, data, len);
                                        e->stale_len = len;
                                        e->has_stale = true;
                                }
                                entry_answer_all(e, data, len, true);
                                answer_value(r, data, len, true, e->token);
                                return;
                        }
                }
                {
                        msgpack_packer *pk = req_result(r);
                        msgpack_pack_map(pk, 1);
                        rpc_pack_str(pk, "lease");
                        rpc_pack_str(pk, e->token);
                        req_done(r);
                }
                return;
        }
        if (code == 3) {
                const redisReply *pttl = reply->element[1];
                const redisReply *g = reply->element[2];
                double ms = pttl->type == REDIS_REPLY_INTEGER && pttl->integer > 0
                                    ? (double)pttl->integer
                                    : LEASE_MIN_MS;
                if (g->type == REDIS_REPLY_STRING)
                        entry_set_lk(e, g->str, g->len);
                if (e->notice_seen) {
                        /* The holder filled or released while our script was on its
                         * way back: waiting for its notice would wait for the PTTL. */
                        LTRACE(e, "gos_again", "a notice passed the answer");
                        gos_send(e, r, false);
                        return;
                }
                e->state = L_REMOTE;
                CACHE_COUNT(r, waits_coalesced, 1);
                /* Wait for the other loader's fill notice, or its lease running out. */
                r->state = NULL;
                waiter_add(e, r);
                /* move r to the front: it asked first */
                if (e->whead != r) {
                        struct req *w = e->whead;
                        while (w->lnext != r)
                                w = w->lnext;
                        w->lnext = NULL;
                        e->wtail = w;
                        r->lnext = e->whead;
                        e->whead = r;
                }
                ev_timer_set(&e->timer, ms / 1000.0 + 0.005, 0.);
                ev_timer_start(lease_srv->loop, &e->timer);
                return;
        }
        req_fail(r, RPC_ERR_INTERNAL, "get_or_set: unexpected lease script answer %lld", code);
        entry_drive(e);
}

/* --- handlers ------------------------------------------------------------------- */

static bool
arg_field(struct req *r, const struct opts *o, const char **f, size_t *n)
{
        *f = NULL;
        *n = 0;
        if (!(o->present & KC_OPT_field))
                return true;
        *f = o->s[RPC_OPT_field].p;
        *n = o->s[RPC_OPT_field].n;
        if (*n == 0) {
                req_fail(r, RPC_ERR_BAD_REQUEST, "%s: field must not be empty",
                         rpc_methods[r->method].name);
                return false;
        }
        return true;
}

static bool
arg_ms_opt(struct req *r, const struct opts *o, int opt, int def, int max, int *out)
{
        *out = def;
        if (!(o->present & KC_OPT_BIT(opt)))
                return true;
        if (o->i[opt] < LEASE_MIN_MS || o->i[opt] > LEASE_MAX_MS) {
                req_fail(r, RPC_ERR_BAD_REQUEST, "%s: %s must be from %d to %d",
                         rpc_methods[r->method].name, rpc_options[opt].name, LEASE_MIN_MS,
                         LEASE_MAX_MS);
                return false;
        }
        *out = o->i[opt] > max ? max : (int)o->i[opt];
        return true;
}

void
handler_get_or_set(struct req *r, const msgpack_object *args, const struct opts *o)
{
        const struct config *cfg = lease_srv->cfg;
        const char *key, *field;
        size_t klen, flen, n;
        int lease_ms, wait_ms;
        struct lentry *e;
        char *id;

        if (!cache_req_keyspace(r, o) || !cache_arg_key(r, &args[0], &key, &klen, "key") ||
            !arg_field(r, o, &field, &flen) ||
            !arg_ms_opt(r, o, RPC_OPT_lease_ms, cfg->lease_ttl_ms, LEASE_MAX_MS, &lease_ms) ||
            !arg_ms_opt(r, o, RPC_OPT_wait_ms, cfg->lease_ttl_ms < cfg->max_wait_ms
                                                       ? cfg->lease_ttl_ms
                                                       : cfg->max_wait_ms,
                        cfg->max_wait_ms, &wait_ms))
                return;
        /* identity: ns NUL key NUL field NUL schema */
        n = r->ns_len + 1 + klen + 1 + flen + 1 + r->schema_len;
        /* wait_ms, not command_timeout_ms, bounds a get_or_set. */
        req_start_deadline(r, wait_ms);
        e = entry_find(r, key, klen, field, flen, n);
        if (e != NULL) {
                if (e->state == L_HELD && e->has_stale) {
                        answer_value(r, e->stale, e->stale_len, true, NULL);
                        return;
                }
                CACHE_COUNT(r, waits_coalesced, 1);
                waiter_add(e, r);
                return;
        }
        /* One block: the entry, then its identity, key and field (one allocation per load). */
        e = entry_block_new(n + klen + 1 + flen);
        if (e == NULL) {
                req_fail(r, RPC_ERR_INTERNAL, "out of memory");
                return;
        }
        id = (char *)(e + 1);
        id_fill(id, r, key, klen, field, flen);
        e->id = id;
        e->id_len = n;
        e->key = id + n;
        memcpy(e->key, key, klen);
        e->klen = klen;
        if (flen > 0) {
                e->field = e->key + klen + 1;
                memcpy(e->field, field, flen);
        }
        e->flen = flen;
        e->lease_ms = lease_ms;
        e->proto.has_ns = r->has_ns;
        e->proto.ns_len = r->ns_len;
        memcpy(e->proto.ns, r->ns, r->ns_len);
        e->proto.has_schema = r->has_schema;
        e->proto.schema_len = r->schema_len;
        memcpy(e->proto.schema, r->schema, r->schema_len);
        e->proto.ns_slot = r->ns_slot;
        ev_timer_init(&e->timer, entry_on_timer, 0., 0.);
        bcall_init(&e->call);
        e->next = lease_entries;
        if (lease_entries != NULL)
                lease_entries->prev = e;
        lease_entries = e;
        gos_send(e, r, false);
}

/* The HELD entry with this token, if the lease was granted here. */
static struct lentry *
entry_by_token(const char *tok, size_t n)
{
        for (struct lentry *e = lease_entries; e != NULL; e = e->next)
                if (e->state == L_HELD && strlen(e->token) == n && memcmp(e->token, tok, n) == 0)
                        return e;
        return NULL;
}

struct fill_state {
        char token[48];
        uint8_t *value; /* the loaded value, for local waiters; owned */
        size_t len;
};

static void
fill_state_free(struct req *r)
{
        struct fill_state *f = r->state;

        free(f->value);
        free(f);
}

static void
on_fill(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct req *r = cache_reply_req(priv, gen, reply, err);
        struct fill_state *f;
        struct lentry *e;

        if (r == NULL)
                return;
        f = r->state;
        e = entry_by_token(f->token, strlen(f->token));
        log_debug("lease", "fill_answer", "token=%s entry=%p result=%lld", f->token, (void *)e,
                  reply->type == REDIS_REPLY_INTEGER ? reply->integer : -1);
        if (reply->type != REDIS_REPLY_INTEGER) {
                req_fail(r, RPC_ERR_INTERNAL, "fill: unexpected reply");
                return;
        }
        if (reply->integer == 1) {
                CACHE_COUNT(r, fills, 1);
                if (e != NULL) {
                        entry_answer_all(e, f->value, f->len, false);
                        entry_free(e);
                }
                msgpack_pack_true(req_result(r));
                req_done(r);
                return;
        }
        CACHE_COUNT(r, fills_rejected, 1);
        req_fail(r, RPC_ERR_LEASE_INVALID,
                 "fill: the lease is gone: expired, released, or revoked by a write or an invalidation");
        if (e != NULL)
                entry_drive(e);
}

void
handler_fill(struct req *r, const msgpack_object *args, const struct opts *o)
{
        const msgpack_object *tags = (o->present & KC_OPT_tags) ? o->list[RPC_OPT_tags] : NULL;
        uint32_t n_tags = tags != NULL ? tags->via.array.size : 0;
        const char *key, *tok, *val, *field;
        size_t klen, tlen, vlen, flen;
        int64_t px, stale_px;
        const uint8_t *env;
        size_t env_len;
        struct fill_state *f;

        if (!cache_req_keyspace(r, o) || !cache_arg_key(r, &args[0], &key, &klen, "key") ||
            !arg_field(r, o, &field, &flen))
                return;
        if (!rpc_obj_bytes(&args[1], &tok, &tlen) || tlen == 0 || tlen >= sizeof(f->token) ||
            memchr(tok, ' ', tlen) != NULL || memchr(tok, '\0', tlen) != NULL) {
                req_fail(r, RPC_ERR_BAD_REQUEST, "fill: token must be the string get_or_set returned");
                return;
        }
        if (!rpc_obj_bytes(&args[2], &val, &vlen)) {
                req_fail(r, RPC_ERR_BAD_REQUEST, "fill: value must be bytes (bin or str)");
                return;
        }
        if (!cache_arg_expiry(r, o, &px, &stale_px) ||
            !cache_encode(r, val, vlen, stale_px > 0, &env, &env_len))
                return;
        if (field == NULL)
                cache_near_write(r, key, klen);
        f = calloc(1, sizeof(*f));
        if (f == NULL || (f->value = malloc(vlen + 1)) == NULL) {
                free(f);
                req_fail(r, RPC_ERR_INTERNAL, "out of memory");
                return;
        }
        memcpy(f->token, tok, tlen);
        memcpy(f->value, val, vlen);
        f->len = vlen;
        r->state = f;
        r->state_free = fill_state_free;
        cache_eval_start(r, SCRIPT_FILL, 7 + n_tags);
        cache_resp_bulk(key, klen);
        cache_resp_bulk(field != NULL ? field : "", flen);
        cache_resp_bulk(tok, tlen);
        cache_resp_bulk(env, env_len);
        cache_resp_int(px + stale_px);
        cache_resp_int(stale_px > 0 ? px : 0);
        cache_resp_int(n_tags);
        for (uint32_t t = 0; t < n_tags; t++) {
                const char *tp;
                size_t tn;
                if (!rpc_obj_bytes(&tags->via.array.ptr[t], &tp, &tn))
                        tn = 0, tp = "";
                cache_resp_bulk(tp, tn);
        }
        cache_submit(r, BACKEND_WRITE, 1, on_fill);
}

static void
on_release(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct req *r = cache_reply_req(priv, gen, reply, err);
        struct fill_state *f;
        struct lentry *e;

        if (r == NULL)
                return;
        f = r->state;
        if (reply->type != REDIS_REPLY_INTEGER) {
                req_fail(r, RPC_ERR_INTERNAL, "release: unexpected reply");
                return;
        }
        e = entry_by_token(f->token, strlen(f->token));
        log_debug("lease", "release_answer", "token=%s entry=%p result=%lld", f->token, (void *)e,
                  reply->integer);
        if (reply->integer == 1)
                msgpack_pack_true(req_result(r));
        else
                msgpack_pack_false(req_result(r));
        req_done(r);
        if (e != NULL)
                entry_drive(e);
}

void
handler_release(struct req *r, const msgpack_object *args, const struct opts *o)
{
        const char *key, *tok, *field;
        size_t klen, tlen, flen;
        struct fill_state *f;

        if (!cache_req_keyspace(r, o) || !cache_arg_key(r, &args[0], &key, &klen, "key") ||
            !arg_field(r, o, &field, &flen))
                return;
        if (!rpc_obj_bytes(&args[1], &tok, &tlen) || tlen == 0 || tlen >= sizeof(f->token)) {
                req_fail(r, RPC_ERR_BAD_REQUEST, "release: token must be the string get_or_set returned");
                return;
        }
        f = calloc(1, sizeof(*f));
        if (f == NULL) {
                req_fail(r, RPC_ERR_INTERNAL, "out of memory");
                return;
        }
        memcpy(f->token, tok, tlen);
        r->state = f;
        r->state_free = fill_state_free;
        cache_eval_start(r, SCRIPT_RELEASE, 3);
        cache_resp_bulk(key, klen);
        cache_resp_bulk(field != NULL ? field : "", flen);
        cache_resp_bulk(tok, tlen);
        cache_submit(r, BACKEND_WRITE, 1, on_release);
}

/* --- holders that vanish, and notices from other kcached ----------------------------- */

static void
on_sys_release(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct lentry *e = priv;

        log_debug("lease", "sys_release_answer", "entry=%p zombie=%d", (void *)e, e->is_zombie);
        e->call_pending = false;
        if (e->is_zombie) {
                entry_block_free(e);
                return;
        }
        if (gen != e->call_gen)
                return;
        entry_drive(e);
}

void
lease_conn_closed(uint64_t conn_id)
{
        struct lentry *e, *next;

        for (e = lease_entries; e != NULL; e = next) {
                next = e->next;
                if (e->state != L_HELD || e->holder != conn_id)
                        continue;
                LTRACE(e, "holder_gone", "conn=%" PRIu64 " pending=%d", conn_id, e->call_pending);
                if (e->call_pending) {
                        /* An earlier release is still on its way: the Redis lease
                         * expires by itself; pass it on here now. */
                        e->holder = 0;
                        entry_drive(e);
                        continue;
                }
                /* Give the lease back in Redis, then pass it on. */
                e->holder = 0;
                cache_eval_start(&e->proto, SCRIPT_RELEASE, 3);
                cache_resp_bulk(e->key, e->klen);
                cache_resp_bulk(e->field != NULL ? e->field : "", e->flen);
                cache_resp_bulk(e->token, strlen(e->token));
                {
                        size_t len;
                        const char *cmd = cache_scratch(&len);
                        if (backend_call(lease_srv->be, &e->call, BACKEND_WRITE, cmd, len, 1,
                                         ev_now(lease_srv->loop) +
                                                 lease_srv->cfg->command_timeout_ms / 1000.0,
                                         NULL, on_sys_release, e, ++e->call_gen) != 0)
                                entry_drive(e);
                        else
                                e->call_pending = true;
                }
        }
}

/*
 * Could the lease key lk (from a notice) be e's? Exact once the generation is
 * known; while the first script is on its way (no generation yet) everything
 * but the generation must match. A false match costs one more script run.
 */
static bool
notice_matches(const struct lentry *e, const char *lk, size_t n)
{
        size_t mlen, plen = strlen(lease_srv->cfg->key_prefix), head, tail;
        const char *m = cache_meta(&mlen);

        if (e->lk != NULL && e->lk_len == n && memcmp(e->lk, lk, n) == 0)
                return true;
        head = mlen + 6 + plen + (e->proto.has_ns ? 1 + e->proto.ns_len + 1 : 0);
        tail = e->klen + 1 + e->flen;
        if (n < head + tail || memcmp(lk, m, mlen) != 0 || memcmp(lk + mlen, "lease", 6) != 0 ||
            memcmp(lk + mlen + 6, lease_srv->cfg->key_prefix, plen) != 0)
                return false;
        if (e->proto.has_ns) {
                const char *ns = lk + mlen + 6 + plen;
                if (ns[0] != '\0' || memcmp(ns + 1, e->proto.ns, e->proto.ns_len) != 0 ||
                    ns[1 + e->proto.ns_len] != '\0' || n < head + 2 + tail ||
                    lk[n - tail - 1] != '\0')
                        return false;
        } else if (n != head + tail) {
                return false;
        }
        lk += n - tail;
        return memcmp(lk, e->key, e->klen) == 0 && lk[e->klen] == '\0' &&
               (e->flen == 0 || memcmp(lk + e->klen + 1, e->field, e->flen) == 0);
}

static void
on_event(void *priv, const char *msg, size_t n)
{
        size_t off;

        if (n > 5 && memcmp(msg, "fill ", 5) == 0)
                off = 5;
        else if (n > 8 && memcmp(msg, "release ", 8) == 0)
                off = 8;
        else
                return;
        log_debug("lease", "notice", "what=%.*s", (int)(n > 80 ? 80 : n), msg);
        for (struct lentry *e = lease_entries, *next; e != NULL; e = next) {
                next = e->next;
                if (e->state == L_REMOTE && e->lk != NULL && e->lk_len == n - off &&
                    memcmp(e->lk, msg + off, e->lk_len) == 0)
                        entry_drive(e);
                else if (e->state == L_ACQUIRING && e->leader != NULL &&
                         notice_matches(e, msg + off, n - off))
                        e->notice_seen = true;
        }
}

/* The subscription is back: notices may have been missed, so look again. */
static void
on_events_up(void *priv)
{
        for (struct lentry *e = lease_entries, *next; e != NULL; e = next) {
                next = e->next;
                if (e->state == L_REMOTE)
                        entry_drive(e);
        }
}

int
lease_init(struct server *srv)
{
        size_t mlen;
        const char *m = cache_meta(&mlen);
        char chan[512];

        lease_srv = srv;
        if (getrandom(&lease_seed, sizeof(lease_seed), 0) != (ssize_t)sizeof(lease_seed))
                lease_seed = (uint64_t)random() << 32 ^ (uint64_t)random();
        if (mlen + 6 > sizeof(chan))
                return -1;
        memcpy(chan, m, mlen);
        memcpy(chan + mlen, "events", 6);
        backend_subscribe(srv->be, chan, mlen + 6, on_event, on_events_up, NULL);
        return 0;
}

void
lease_deinit(void)
{
        while (lease_entries != NULL) {
                struct lentry *e = lease_entries;
                struct req *w = entry_take_waiters(e);
                (void)w; /* their connections are already gone at exit */
                if (e->leader != NULL) {
                        e->leader->state = NULL;
                        e->leader->state_free = NULL;
                }
                entry_free(e);
        }
        /* After the entries, which go to the spares; a zombie whose release
         * completes later (the backend's teardown) is freed at once. */
        lease_closed = true;
        while (lease_spare != NULL) {
                struct lentry *e = lease_spare;
                lease_spare = e->next;
                free(e);
        }
        lease_n_spare = 0;
}
