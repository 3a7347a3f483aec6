/* SPDX-License-Identifier: MIT */
/*
 * near: near cache store (S3-FIFO) and its Redis tracking (see near.h).
 *
 * Store invariants:
 *  - every entry is in the hash table; filled ones are in exactly one of the
 *    small or main FIFOs, placeholders (a GET in flight) in neither;
 *  - bytes counts every filled entry's size and stays <= near_cache_bytes
 *    after each insertion;
 *  - nothing is served unless near_is_active(): tracking up, heartbeat fresh.
 */
#include "daemon/near.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "daemon/backend.h"
#include "daemon/json.h"
#include "daemon/log.h"
#include "daemon/rconn.h"
#include "daemon/server.h"

#define NEAR_OVERHEAD     (sizeof(struct nentry) + 16) /* malloc's own bookkeeping too */
#define NEAR_MAX_PENDING  100000
#define NEAR_GHOST_BITS   (1u << 16)
#define NEAR_GHOST_RING   8192
#define NEAR_RETRY_S      0.5

enum { W_PENDING = 0, W_SMALL, W_MAIN };

struct nentry {
        struct nentry *hnext;
        struct nentry *prev, *next; /* FIFO links; newest at head */
        uint64_t hash;
        uint32_t slot; /* placeholder: its slot in near.slots */
        double expires;
        uint32_t klen, vlen;
        uint8_t freq;
        uint8_t where;
        char data[]; /* key, then value */
};

struct fifo {
        struct nentry *head, *tail;
        size_t bytes;
};

enum tstate { T_OFF, T_SUB_CONNECTING, T_SUB_ID, T_SUBSCRIBING, T_TRK_CONNECTING, T_TRACKING,
              T_ACTIVE };

static struct {
        struct server *srv; /* ref */
        bool on;
        size_t cap;
        struct nentry **buckets;
        size_t n_buckets, n_entries, n_pending;
        size_t bytes;
        struct fifo small, main;
        uint8_t ghost_bits[NEAR_GHOST_BITS / 8];
        uint32_t ghost_ring[NEAR_GHOST_RING];
        size_t ghost_pos;
        /* placeholders by token: token = generation << 32 | slot index */
        struct nslot {
                struct nentry *e; /* NULL: free */
                uint32_t gen;
                uint32_t next_free;
        } *slots;
        uint32_t n_slots, free_slot; /* free_slot: UINT32_MAX for none */
        /* tracking */
        enum tstate state;
        struct rconn sub, trk;
        long long client_id;
        uint64_t epoch;
        char hb_channel[64];
        uint64_t hb_sent, hb_seen;
        double hb_ok_at;
        struct bcall hb_call;
        bool hb_call_busy;
        ev_timer tick;
        ev_timer retry;
        struct near_stats st;
} near;

static uint64_t
near_hash(const char *p, size_t n)
{
        uint64_t h = 1469598103934665603ull;

        for (size_t i = 0; i < n; i++)
                h = (h ^ (uint8_t)p[i]) * 1099511628211ull;
        return h;
}

static size_t
entry_size(const struct nentry *e)
{
        return NEAR_OVERHEAD + e->klen + e->vlen;
}

static void near_restart(const char *why);

/* --- FIFOs and the hash table ------------------------------------------------- */

static void
fifo_push(struct fifo *f, struct nentry *e)
{
        e->prev = NULL;
        e->next = f->head;
        if (f->head != NULL)
                f->head->prev = e;
        f->head = e;
        if (f->tail == NULL)
                f->tail = e;
        f->bytes += entry_size(e);
}

static void
fifo_remove(struct fifo *f, struct nentry *e)
{
        if (e->prev != NULL)
                e->prev->next = e->next;
        else
                f->head = e->next;
        if (e->next != NULL)
                e->next->prev = e->prev;
        else
                f->tail = e->prev;
        e->prev = e->next = NULL;
        f->bytes -= entry_size(e);
}

static struct nentry **
slot_of(const char *key, size_t n, uint64_t h)
{
        struct nentry **pp = &near.buckets[h & (near.n_buckets - 1)];

        while (*pp != NULL && !((*pp)->hash == h && (*pp)->klen == n &&
                                memcmp((*pp)->data, key, n) == 0))
                pp = &(*pp)->hnext;
        return pp;
}

static void
table_grow(void)
{
        size_t nb = near.n_buckets * 2;
        struct nentry **b = calloc(nb, sizeof(*b));

        if (b == NULL)
                return; /* longer chains, still correct */
        for (size_t i = 0; i < near.n_buckets; i++) {
                struct nentry *e = near.buckets[i];
                while (e != NULL) {
                        struct nentry *next = e->hnext;
                        e->hnext = b[e->hash & (nb - 1)];
                        b[e->hash & (nb - 1)] = e;
                        e = next;
                }
        }
        free(near.buckets);
        near.buckets = b;
        near.n_buckets = nb;
}

static void
ghost_add(uint64_t h)
{
        uint32_t bit = (uint32_t)(h % NEAR_GHOST_BITS);
        uint32_t old = near.ghost_ring[near.ghost_pos];

        /* The ring forgets the oldest: a shared bit may go early, a harmless miss. */
        near.ghost_bits[old / 8] &= (uint8_t)~(1u << (old % 8));
        near.ghost_ring[near.ghost_pos] = bit;
        near.ghost_pos = (near.ghost_pos + 1) % NEAR_GHOST_RING;
        near.ghost_bits[bit / 8] |= (uint8_t)(1u << (bit % 8));
}

static bool
ghost_has(uint64_t h)
{
        uint32_t bit = (uint32_t)(h % NEAR_GHOST_BITS);

        return (near.ghost_bits[bit / 8] >> (bit % 8)) & 1;
}

static void
slot_free(uint32_t i)
{
        near.slots[i].e = NULL;
        near.slots[i].gen++;
        near.slots[i].next_free = near.free_slot;
        near.free_slot = i;
}

/* A slot for placeholder e; UINT32_MAX when none can be had. */
static uint32_t
slot_alloc(struct nentry *e)
{
        uint32_t i;

        if (near.free_slot == UINT32_MAX) {
                uint32_t n = near.n_slots ? near.n_slots * 2 : 256;
                struct nslot *s;
                if (n > NEAR_MAX_PENDING)
                        n = NEAR_MAX_PENDING;
                if (n <= near.n_slots)
                        return UINT32_MAX;
                s = realloc(near.slots, n * sizeof(*s));
                if (s == NULL)
                        return UINT32_MAX;
                for (uint32_t k = near.n_slots; k < n; k++) {
                        s[k].e = NULL;
                        s[k].gen = 1;
                        s[k].next_free = k + 1 < n ? k + 1 : UINT32_MAX;
                }
                near.slots = s;
                near.free_slot = near.n_slots;
                near.n_slots = n;
        }
        i = near.free_slot;
        near.free_slot = near.slots[i].next_free;
        near.slots[i].e = e;
        return i;
}

/* Unlinks e from the table and its FIFO and frees it. */
static void
entry_drop(struct nentry *e)
{
        struct nentry **pp = slot_of(e->data, e->klen, e->hash);

        if (*pp == e)
                *pp = e->hnext;
        if (e->where == W_SMALL)
                fifo_remove(&near.small, e);
        else if (e->where == W_MAIN)
                fifo_remove(&near.main, e);
        if (e->where == W_PENDING) {
                slot_free(e->slot);
                near.n_pending--;
        } else {
                near.bytes -= entry_size(e);
        }
        near.n_entries--;
        free(e);
}

/* S3-FIFO eviction until the store fits its budget. */
static void
evict_until_fits(void)
{
        while (near.bytes > near.cap && (near.small.tail != NULL || near.main.tail != NULL)) {
                struct nentry *t;

                if (near.small.tail != NULL &&
                    (near.small.bytes > near.cap / 10 || near.main.tail == NULL)) {
                        t = near.small.tail;
                        if (t->freq > 0) {
                                /* seen again while young: promote */
                                fifo_remove(&near.small, t);
                                t->freq = 0;
                                t->where = W_MAIN;
                                fifo_push(&near.main, t);
                                continue;
                        }
                        ghost_add(t->hash);
                } else {
                        t = near.main.tail;
                        if (t->freq > 0) {
                                /* reinserted with one use less */
                                t->freq--;
                                fifo_remove(&near.main, t);
                                fifo_push(&near.main, t);
                                continue;
                        }
                }
                entry_drop(t);
                near.st.evictions++;
        }
}

/* --- the store API ------------------------------------------------------------------ */

bool
near_is_active(void)
{
        if (!near.on || near.state != T_ACTIVE)
                return false;
        /* The primary moved (reload, Sentinel): not one more answer from memory. */
        if (backend_primary_epoch(near.srv->be) != near.epoch) {
                near_restart("the primary changed");
                return false;
        }
        return true;
}

bool
near_get(const char *key, size_t n, const char **val, size_t *vlen)
{
        struct nentry *e;

        if (!near_is_active())
                return false;
        e = *slot_of(key, n, near_hash(key, n));
        if (e == NULL || e->where == W_PENDING) {
                near.st.misses++;
                return false;
        }
        if (ev_now(near.srv->loop) >= e->expires) {
                entry_drop(e);
                near.st.misses++;
                return false;
        }
        if (e->freq < 3)
                e->freq++;
        near.st.hits++;
        *val = e->data + e->klen;
        *vlen = e->vlen;
        return true;
}

uint64_t
near_begin(const char *key, size_t n)
{
        uint64_t h;
        struct nentry **pp, *e;

        if (!near_is_active() || near.n_pending >= NEAR_MAX_PENDING ||
            NEAR_OVERHEAD + n > near.cap / 4)
                return 0;
        h = near_hash(key, n);
        pp = slot_of(key, n, h);
        if (*pp != NULL) {
                if ((*pp)->where == W_PENDING)
                        return 0; /* a fill is already out: let it win */
                entry_drop(*pp);
        }
        e = malloc(sizeof(*e) + n);
        if (e == NULL)
                return 0;
        memset(e, 0, sizeof(*e));
        e->hash = h;
        e->klen = (uint32_t)n;
        e->where = W_PENDING;
        e->expires = ev_now(near.srv->loop); /* placeholder: when the GET left */
        e->slot = slot_alloc(e);
        if (e->slot == UINT32_MAX) {
                free(e);
                return 0;
        }
        memcpy(e->data, key, n);
        e->hnext = near.buckets[h & (near.n_buckets - 1)];
        near.buckets[h & (near.n_buckets - 1)] = e;
        near.n_entries++;
        near.n_pending++;
        if (near.n_entries > near.n_buckets)
                table_grow();
        return (uint64_t)near.slots[e->slot].gen << 32 | e->slot;
}

static struct nentry *
slot_entry(uint64_t token)
{
        uint32_t i = (uint32_t)token, gen = (uint32_t)(token >> 32);

        if (token == 0 || i >= near.n_slots || near.slots[i].gen != gen)
                return NULL;
        return near.slots[i].e;
}

void
near_cancel(uint64_t token)
{
        struct nentry *p = slot_entry(token);

        if (p != NULL)
                entry_drop(p);
}

void
near_fill(uint64_t token, const char *val, size_t vlen, int64_t pttl_ms)
{
        struct nentry *p = slot_entry(token), *e, **pp;
        double ttl;
        size_t n;

        if (p == NULL) {
                near.st.fills_dropped++; /* invalidated while the GET was out */
                return;
        }
        n = p->klen;
        if (val == NULL || pttl_ms == -2 || NEAR_OVERHEAD + n + vlen > near.cap / 4 ||
            !near_is_active()) {
                entry_drop(p);
                return;
        }
        ttl = near.srv->cfg->near_cache_ttl_ms / 1000.0;
        /* Expiry invalidations arrive late: never outlive the key's own TTL. */
        if (pttl_ms >= 0 && pttl_ms / 1000.0 < ttl)
                ttl = pttl_ms / 1000.0;
        if (ttl <= 0) {
                entry_drop(p);
                return;
        }
        e = malloc(sizeof(*e) + n + vlen);
        if (e == NULL) {
                entry_drop(p);
                return;
        }
        memcpy(e, p, sizeof(*e) + n);
        memcpy(e->data + n, val, vlen);
        e->vlen = (uint32_t)vlen;
        e->freq = 0;
        /* Counted from when the GET left, not when its answer came: a slow
         * reply must not stretch the key's life past its expiry in Redis. */
        e->expires = p->expires + ttl;
        pp = slot_of(p->data, n, p->hash);
        *pp = e; /* same chain position */
        slot_free(p->slot);
        near.n_pending--;
        free(p);
        e->where = ghost_has(e->hash) ? W_MAIN : W_SMALL;
        fifo_push(e->where == W_MAIN ? &near.main : &near.small, e);
        near.bytes += entry_size(e);
        near.st.fills++;
        evict_until_fits();
}

void
near_evict(const char *key, size_t n)
{
        struct nentry *e;

        if (!near.on)
                return;
        e = *slot_of(key, n, near_hash(key, n));
        if (e != NULL)
                entry_drop(e);
}

void
near_flush(const char *why)
{
        if (!near.on)
                return;
        for (size_t i = 0; i < near.n_buckets; i++) {
                struct nentry *e = near.buckets[i];
                while (e != NULL) {
                        struct nentry *next = e->hnext;
                        if (e->where == W_PENDING)
                                slot_free(e->slot);
                        free(e);
                        e = next;
                }
                near.buckets[i] = NULL;
        }
        near.small.head = near.small.tail = near.main.head = near.main.tail = NULL;
        near.small.bytes = near.main.bytes = 0;
        near.bytes = near.n_entries = near.n_pending = 0;
        near.st.flushes++;
        log_debug("near", "flush", "near: flushed: %s", why);
}

/* --- tracking ------------------------------------------------------------------------- */


static void
near_set_active(bool on, const char *why)
{
        if (on == (near.state == T_ACTIVE))
                return;
        if (on) {
                near.state = T_ACTIVE;
                log_info("near", "active", "near: tracking established; serving from memory");
                return;
        }
        log_warn("near", "inactive", "near: %s; flushed, reading from Redis until tracking is back",
                 why);
}

static void
on_sub_push(void *priv, redisReply *r)
{
        const redisReply *ch, *payload;

        /* Only ["message", channel, payload]: subscribe confirmations and others are ignored. */
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
            r->element[0]->type != REDIS_REPLY_STRING || strcmp(r->element[0]->str, "message") != 0)
                return;
        ch = r->element[1];
        payload = r->element[2];
        if (ch->type == REDIS_REPLY_STRING && strcmp(ch->str, near.hb_channel) == 0) {
                if (payload->type == REDIS_REPLY_STRING) {
                        uint64_t seq = strtoull(payload->str, NULL, 10);
                        if (seq > near.hb_seen)
                                near.hb_seen = seq;
                        near.hb_ok_at = ev_now(near.srv->loop);
                        if (near.state == T_TRACKING)
                                near_set_active(true, NULL);
                }
                return;
        }
        if (ch->type != REDIS_REPLY_STRING || strcmp(ch->str, "__redis__:invalidate") != 0)
                return;
        if (payload->type == REDIS_REPLY_NIL) {
                /* FLUSHDB / FLUSHALL */
                near.st.invalidations++;
                near_flush("Redis flushed the database");
                return;
        }
        if (payload->type != REDIS_REPLY_ARRAY)
                return;
        for (size_t i = 0; i < payload->elements; i++) {
                const redisReply *k = payload->element[i];
                struct nentry *e;
                if (k->type != REDIS_REPLY_STRING)
                        continue;
                near.st.invalidations++;
                e = *slot_of(k->str, k->len, near_hash(k->str, k->len));
                if (e != NULL)
                        entry_drop(e); /* a placeholder too: its fill will be dropped */
        }
}

static void
on_tracking(void *priv, uint32_t gen, redisReply *r, int err)
{
        if (err != 0 || r->type == REDIS_REPLY_ERROR) {
                near_restart(err != 0 ? "tracking connection lost"
                                      : "CLIENT TRACKING refused (another BCAST prefix overlaps?)");
                return;
        }
        /* Entries are served once a heartbeat made it through the subscriber. */
        near.state = T_TRACKING;
}

static void
trk_on_state(struct rconn *rc, enum rconn_event ev, const char *why)
{
        char cmd[512];
        const char *p = near.srv->cfg->key_prefix;
        char id[32];
        int len;

        if (ev == RCONN_EV_DOWN) {
                if (near.state != T_OFF)
                        near_restart(why != NULL ? why : "tracking connection closed");
                return;
        }
        snprintf(id, sizeof(id), "%lld", near.client_id);
        if (p[0] != '\0')
                len = snprintf(cmd, sizeof(cmd),
                               "*8\r\n$6\r\nCLIENT\r\n$8\r\nTRACKING\r\n$2\r\non\r\n$8\r\nREDIRECT\r\n"
                               "$%zu\r\n%s\r\n$5\r\nBCAST\r\n$6\r\nPREFIX\r\n$%zu\r\n",
                               strlen(id), id, strlen(p));
        else
                len = snprintf(cmd, sizeof(cmd),
                               "*6\r\n$6\r\nCLIENT\r\n$8\r\nTRACKING\r\n$2\r\non\r\n$8\r\nREDIRECT\r\n"
                               "$%zu\r\n%s\r\n$5\r\nBCAST\r\n",
                               strlen(id), id);
        {
                struct buf b = BUF_INIT;
                buf_append(&b, cmd, (size_t)len);
                if (p[0] != '\0') {
                        buf_append(&b, p, strlen(p));
                        buf_append(&b, "\r\n", 2);
                }
                if (b.len == 0 || rconn_send(rc, (const char *)b.data, b.len, 1, on_tracking, NULL, 0) < 0)
                        near_restart("out of memory");
                buf_deinit(&b);
        }
}

static void
on_subscribed(void *priv, uint32_t gen, redisReply *r, int err)
{
        struct sockaddr_storage ss;
        socklen_t len;
        size_t hlen;
        unsigned n_hs;
        const char *hs;

        if (err != 0 || r->type == REDIS_REPLY_ERROR) {
                near_restart("SUBSCRIBE failed");
                return;
        }
        if (!backend_primary_sockaddr(near.srv->be, &ss, &len, &near.epoch)) {
                near_restart("primary not usable");
                return;
        }
        hs = backend_handshake(near.srv->be, &hlen, &n_hs);
        near.state = T_TRK_CONNECTING;
        if (rconn_connect(&near.trk, (struct sockaddr *)&ss, len, hs, hlen, n_hs,
                          near.srv->cfg->connect_timeout_ms) < 0)
                near_restart("connect failed");
}

static void
on_client_id(void *priv, uint32_t gen, redisReply *r, int err)
{
        char cmd[160];
        int len;

        if (err != 0 || r->type != REDIS_REPLY_INTEGER) {
                near_restart("CLIENT ID failed");
                return;
        }
        near.client_id = r->integer;
        near.state = T_SUBSCRIBING;
        len = snprintf(cmd, sizeof(cmd),
                       "*3\r\n$9\r\nSUBSCRIBE\r\n$20\r\n__redis__:invalidate\r\n$%zu\r\n%s\r\n",
                       strlen(near.hb_channel), near.hb_channel);
        /* Two channels: two confirmations; the callback runs on the second. */
        if (rconn_send(&near.sub, cmd, (size_t)len, 2, on_subscribed, NULL, 0) < 0)
                near_restart("out of memory");
}

static void
sub_on_state(struct rconn *rc, enum rconn_event ev, const char *why)
{
        static const char cmd[] = "*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n";

        if (ev == RCONN_EV_DOWN) {
                if (near.state != T_OFF)
                        near_restart(why != NULL ? why : "subscriber closed");
                return;
        }
        near.state = T_SUB_ID;
        if (rconn_send(rc, cmd, sizeof(cmd) - 1, 1, on_client_id, NULL, 0) < 0)
                near_restart("out of memory");
}

static void
near_connect(void)
{
        struct sockaddr_storage ss;
        socklen_t len;
        size_t hlen;
        unsigned n_hs;
        const char *hs;

        if (near.state != T_OFF)
                return;
        if (!backend_primary_sockaddr(near.srv->be, &ss, &len, &near.epoch)) {
                ev_timer_set(&near.retry, NEAR_RETRY_S, 0.);
                ev_timer_start(near.srv->loop, &near.retry);
                return;
        }
        hs = backend_handshake(near.srv->be, &hlen, &n_hs);
        near.state = T_SUB_CONNECTING;
        near.hb_ok_at = 0;
        if (rconn_connect(&near.sub, (struct sockaddr *)&ss, len, hs, hlen, n_hs,
                          near.srv->cfg->connect_timeout_ms) < 0)
                near_restart("connect failed");
}

/* Any doubt: nothing is served, everything goes, tracking starts over. */
static void
near_restart(const char *why)
{
        bool was_active = near.state == T_ACTIVE;

        if (near.state == T_OFF)
                return;
        if (was_active)
                log_warn("near", "inactive", "near: %s; flushed, reading from Redis until "
                         "tracking is back", why);
        near.state = T_OFF; /* the closes below must not recurse */
        rconn_close(&near.sub, why);
        rconn_close(&near.trk, why);
        near_flush(why);
        if (!was_active)
                log_debug("near", "retry", "near: tracking not established: %s", why);
        if (!ev_is_active(&near.retry)) {
                ev_timer_set(&near.retry, NEAR_RETRY_S, 0.);
                ev_timer_start(near.srv->loop, &near.retry);
        }
}

static void
on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
        near_connect();
}

static void
on_hb_published(void *priv, uint32_t gen, redisReply *r, int err)
{
        near.hb_call_busy = false;
}

/*
 * Heartbeat: PUBLISH a sequence number from a pool connection; it must come
 * back through the subscriber within two periods, else invalidations may be
 * getting lost (frozen or broken subscriber) and the cache cannot be trusted.
 */
static void
on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
        double now = ev_now(loop), period = near.srv->cfg->near_heartbeat_ms / 1000.0;
        struct sockaddr_storage ss;
        socklen_t len;
        uint64_t epoch;
        char cmd[160], seq[24];
        int n;

        if (near.state == T_OFF)
                return;
        if (!backend_primary_sockaddr(near.srv->be, &ss, &len, &epoch) || epoch != near.epoch) {
                near_restart("the primary changed");
                return;
        }
        if (near.state == T_ACTIVE && now - near.hb_ok_at > 2 * period) {
                near_restart("heartbeat missed: invalidations may be lost");
                return;
        }
        if (near.state < T_TRACKING || near.hb_call_busy)
                return;
        n = snprintf(seq, sizeof(seq), "%" PRIu64, ++near.hb_sent);
        n = snprintf(cmd, sizeof(cmd), "*3\r\n$7\r\nPUBLISH\r\n$%zu\r\n%s\r\n$%d\r\n%s\r\n",
                     strlen(near.hb_channel), near.hb_channel, n, seq);
        if (backend_call(near.srv->be, &near.hb_call, BACKEND_WRITE, cmd, (size_t)n, 1,
                         now + period, NULL, on_hb_published, NULL, 0) == 0)
                near.hb_call_busy = true;
}

int
near_init(struct server *srv)
{
        uint64_t r = 0;

        memset(&near, 0, sizeof(near));
        near.srv = srv;
        near.cap = (size_t)srv->cfg->near_cache_bytes;
        near.on = near.cap > 0;
        if (!near.on)
                return 0;
        near.free_slot = UINT32_MAX;
        near.n_buckets = 1024;
        near.buckets = calloc(near.n_buckets, sizeof(*near.buckets));
        if (near.buckets == NULL)
                return -1;
        if (getrandom(&r, sizeof(r), 0) != (ssize_t)sizeof(r))
                r = (uint64_t)random();
        snprintf(near.hb_channel, sizeof(near.hb_channel), "kcache:near-hb:%016" PRIx64, r);
        rconn_init(&near.sub, srv->loop, sub_on_state, NULL, "near subscriber");
        /* Invalidations first: libev would otherwise run a client's read, in the
         * same loop pass, before an invalidation that had already arrived. */
        ev_set_priority(&near.sub.rio, EV_MAXPRI);
        rconn_set_push(&near.sub, on_sub_push, NULL);
        rconn_init(&near.trk, srv->loop, trk_on_state, NULL, "near tracking");
        bcall_init(&near.hb_call);
        ev_timer_init(&near.retry, on_retry, 0., 0.);
        ev_timer_init(&near.tick, on_tick, srv->cfg->near_heartbeat_ms / 1000.0,
                      srv->cfg->near_heartbeat_ms / 1000.0);
        ev_timer_start(srv->loop, &near.tick);
        ev_timer_set(&near.retry, 0.05, 0.);
        ev_timer_start(srv->loop, &near.retry);
        return 0;
}

void
near_deinit(void)
{
        if (!near.on)
                return;
        near.state = T_OFF;
        ev_timer_stop(near.srv->loop, &near.tick);
        ev_timer_stop(near.srv->loop, &near.retry);
        backend_call_cancel(&near.hb_call);
        rconn_deinit(&near.sub);
        rconn_deinit(&near.trk);
        near_flush("exit");
        free(near.buckets);
        near.buckets = NULL;
        free(near.slots);
        near.slots = NULL;
        near.on = false;
}

void
near_get_stats(struct near_stats *st)
{
        *st = near.st;
        st->bytes = near.bytes;
        st->entries = near.n_entries - near.n_pending;
        st->active = near_is_active();
}

void
near_write_json(struct json *j)
{
        struct near_stats st;

        near_get_stats(&st);
        json_obj_begin(j);
        json_key(j, "enabled");
        json_bool(j, near.on);
        json_key(j, "active");
        json_bool(j, st.active);
        json_key(j, "capacity_bytes");
        json_uint(j, near.cap);
#define F(name)                                                                                    \
        json_key(j, #name);                                                                        \
        json_uint(j, st.name);
        NEAR_STATS_FIELDS(F)
#undef F
        json_obj_end(j);
}
