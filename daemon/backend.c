/* SPDX-License-Identifier: MIT */
/*
 * backend: nodes, pools, health, routing and retries (see backend.h).
 *
 * Node life:
 *
 *   (no address) --topology/resolve--> connecting --handshake ok--> healthy
 *        ^                                  ^   |                     |
 *        |                                  |   +-- conn lost ------->+ failures
 *        |                                  +---- backoff (50 ms .. reconnect_max_ms)
 *        |                                                            |
 *        +------------------ address moved (Sentinel) <---------------+
 *
 * A node is marked down after failure_threshold consecutive failures (probe
 * or command timeouts, lost connections, node-class error replies) or when
 * its in-flight count reaches max_inflight_per_node; marking it down tears
 * its connections down, so commands queued behind a frozen node fail over at
 * once and its memory cannot grow. It comes back after recovery_threshold
 * consecutive successes (a finished handshake counts as one).
 *
 * Invariants:
 *  - a bcall is active iff exactly one rconn command carries its current
 *    attempt_gen, or it waits for nothing but its owner's deadline;
 *  - teardown fails every pending command synchronously, so no callback ever
 *    names a node after node_free().
 */
#include "daemon/backend.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon/json.h"
#include "daemon/log.h"
#include "daemon/resolve.h"
#include "daemon/sentinel.h"
#include "daemon/stats.h"

#define BACKEND_BACKOFF_MIN_MS 50
#define BACKEND_HB_RING        64
#define BACKEND_HB_PX          "600000" /* an orphaned heartbeat key expires */
#define LAT_BUCKETS            32       /* log2 microseconds */

enum node_role { ROLE_PRIMARY, ROLE_REPLICA };
enum err_class { EC_CONN, EC_TIMEOUT, EC_NODE, EC_READONLY, EC_APP, EC_COUNT };
static const char *const err_class_names[EC_COUNT] = {"conn", "timeout", "node", "readonly",
                                                      "app"};

struct pconn {
        struct rconn rc;
        struct node *node; /* ref, owner */
        int idx;           /* in node->conns, for client affinity */
        bool is_retired;   /* a reload shrank the pool: drains, then goes */
};

struct node {
        struct backend *be; /* ref, owner */
        uint64_t id;        /* unique for the process's lifetime */
        struct sockaddr_storage ss; /* last address connected to, for the subscriber */
        socklen_t sslen;
        enum node_role role;
        struct config_addr addr;
        bool has_addr;
        char addr_str[CONFIG_HOST_MAX + 16];
        char label[CONFIG_HOST_MAX + 32];
        struct pconn **conns; /* owned, n_conns; separate allocations: watchers never move */
        struct pconn **retired; /* owned: left the pool, freed once their queue is empty */
        int n_retired;
        int n_conns;
        struct resolve_job *job; /* while resolving; owned by the resolver */
        ev_timer retry;
        int backoff_ms;
        unsigned addr_rr; /* which of a name's addresses to try next */
        ev_timer probe_timer;
        ev_timer probe_deadline;
        uint32_t probe_gen;
        bool probe_inflight;
        bool is_tearing_down;
        bool is_dead; /* being freed: no state changes, never picked */
        /* health */
        bool is_healthy;
        bool role_ok; /* the primary said ROLE master (Sentinel), always true if static */
        unsigned n_ok_needed;
        unsigned consec_fail, consec_ok;
        double since;
        char why_down[200];
        /* lag (replicas) */
        bool has_lag;
        int64_t lag_ms;
        /* counters */
        uint64_t requests, replies, errors, timeouts, probes, probe_failures, state_changes;
        uint64_t err_class[EC_COUNT];
        uint64_t max_inflight;
        ev_tstamp last_reply; /* when this node last answered anything */
        double lat_ewma_us;
        uint64_t lat_hist[LAT_BUCKETS];
        double lat_sum_s; /* for the histogram's _sum */
};

struct backend {
        struct ev_loop *loop;     /* ref */
        const struct config *cfg; /* ref */
        struct node *primary;     /* owned */
        struct node *replicas[CONFIG_MAX_REPLICAS]; /* owned */
        int n_replicas;
        unsigned rr;
        uint64_t next_node_id;
        bool policy_checked;
        uint64_t primary_epoch; /* bumped when the primary moves */
        void (*ready)(void *priv); /* first attempt finished; cleared once called */
        void *ready_priv;
        char *handshake; /* RESP: AUTH, SELECT, PING; owned */
        size_t handshake_len;
        unsigned n_handshake;
        struct sentinel *sn; /* owned; NULL without [sentinel] */
        /* pub/sub subscriber to the primary */
        struct rconn sub;
        char *sub_channel; /* owned */
        size_t sub_channel_len;
        void (*sub_fn)(void *priv, const char *msg, size_t n);
        void (*sub_up)(void *priv);
        void *sub_priv;
        ev_timer sub_retry;
        /* lag heartbeat: values written to the primary and acknowledged, ascending */
        char hb_key[96];
        int64_t hb_acked[BACKEND_HB_RING];
        int hb_n, hb_head;
        int64_t hb_last_sent;
};

static void node_connect(struct node *n);
static void node_teardown(struct node *n, const char *why);
static void sub_on_state(struct rconn *rc, enum rconn_event ev, const char *why);
static void sub_on_push(void *priv, redisReply *reply);
static void sub_on_retry(struct ev_loop *loop, ev_timer *w, int revents);

static double
wall_now(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
backend_report_ready(struct backend *be)
{
        void (*ready)(void *) = be->ready;

        if (ready == NULL)
                return;
        be->ready = NULL;
        ready(be->ready_priv);
}

/* --- node health ---------------------------------------------------------- */

static size_t
node_inflight(const struct node *n)
{
        size_t sum = 0;

        for (int i = 0; i < n->n_conns; i++)
                sum += rconn_inflight(&n->conns[i]->rc);
        return sum;
}

static int
node_n_up(const struct node *n)
{
        int up = 0;

        for (int i = 0; i < n->n_conns; i++)
                up += n->conns[i]->rc.state == RCONN_UP;
        return up;
}

static bool
node_usable(const struct node *n)
{
        return !n->is_dead && n->has_addr && n->is_healthy && n->role_ok && node_n_up(n) > 0;
}

static bool
node_in_rotation(const struct node *n)
{
        if (!node_usable(n))
                return false;
        if (node_inflight(n) >= (size_t)n->be->cfg->max_inflight_per_node)
                return false;
        return n->role == ROLE_PRIMARY || !n->has_lag ||
               n->lag_ms <= n->be->cfg->max_replica_lag_ms;
}

static void
node_set_healthy(struct node *n, bool up, const char *why)
{
        if (n->is_healthy == up || n->is_dead)
                return;
        n->is_healthy = up;
        n->since = wall_now();
        n->state_changes++;
        if (up) {
                n->why_down[0] = '\0';
                log_info("backend", "node_up", "backend: %s: up", n->label);
                return;
        }
        snprintf(n->why_down, sizeof(n->why_down), "%s", why);
        log_warn("backend", "node_down", "backend: %s: marked down: %s", n->label, why);
        n->n_ok_needed = n->be->cfg->recovery_threshold;
        node_teardown(n, why);
}

static void
node_success(struct node *n)
{
        n->consec_fail = 0;
        n->consec_ok++;
        if (!n->is_healthy && n->consec_ok >= n->n_ok_needed && node_n_up(n) > 0)
                node_set_healthy(n, true, NULL);
}

static void
node_failure(struct node *n, enum err_class cls, const char *why)
{
        n->err_class[cls]++;
        n->consec_ok = 0;
        n->consec_fail++;
        if (n->is_healthy && n->consec_fail >= (unsigned)n->be->cfg->failure_threshold) {
                char msg[300];
                snprintf(msg, sizeof(msg), "%u failures in a row, last: %.200s", n->consec_fail,
                         why);
                node_set_healthy(n, false, msg);
        } else if (!n->is_healthy && n->why_down[0] == '\0') {
                snprintf(n->why_down, sizeof(n->why_down), "%.190s", why);
        }
}

static void
node_latency(struct node *n, double seconds)
{
        double us = seconds * 1e6;
        int b = 0;

        if (us < 0)
                us = 0;
        n->lat_ewma_us = n->lat_ewma_us == 0 ? us : n->lat_ewma_us * 0.9 + us * 0.1;
        n->lat_sum_s += us / 1e6;
        while (b < LAT_BUCKETS - 1 && us >= (double)(1ull << (b + 1)))
                b++;
        n->lat_hist[b]++;
}

static double
node_p99_us(const struct node *n)
{
        uint64_t total = 0, seen = 0;

        for (int b = 0; b < LAT_BUCKETS; b++)
                total += n->lat_hist[b];
        if (total == 0)
                return 0;
        for (int b = 0; b < LAT_BUCKETS; b++) {
                seen += n->lat_hist[b];
                if (seen * 100 >= total * 99)
                        return (double)(1ull << (b + 1)); /* bucket's upper bound */
        }
        return 0;
}

/* --- connections ------------------------------------------------------------ */

static void
node_schedule_retry(struct node *n)
{
        int cap = n->be->cfg->reconnect_max_ms;
        double ms;

        if (ev_is_active(&n->retry) || n->is_tearing_down || n->is_dead)
                return;
        if (n->backoff_ms == 0)
                n->backoff_ms = BACKEND_BACKOFF_MIN_MS;
        else
                n->backoff_ms = n->backoff_ms * 2 > cap ? cap : n->backoff_ms * 2;
        /* +-25% jitter: many kcached restarting together must not hit Redis in step */
        ms = n->backoff_ms * (0.75 + 0.5 * ((double)random() / RAND_MAX));
        ev_timer_set(&n->retry, ms / 1000.0, 0.);
        ev_timer_start(n->be->loop, &n->retry);
}

static void role_check(struct pconn *pc);

/*
 * kcached keeps its own metadata (generations, leases, tags, epochs) without
 * a TTL and gives every data key one, so it needs a policy that evicts only
 * keys with a TTL (volatile-*) or none at all (noeviction). allkeys-* may
 * evict metadata: generations still never repeat and fills are refused, but
 * tags and leases can be lost. Said once, at the first connection.
 */
static void
policy_on_reply(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct node *n = priv;
        const char *p;

        if (err != 0 || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
            reply->element[1]->type != REDIS_REPLY_STRING) {
                log_info("backend", "policy_unknown",
                         "backend: %s: cannot read maxmemory-policy (CONFIG GET refused?); kcached "
                         "needs noeviction or a volatile-* policy",
                         n->label);
                return;
        }
        p = reply->element[1]->str;
        if (strcmp(p, "noeviction") == 0 || strncmp(p, "volatile-", 9) == 0)
                return;
        log_warn("backend", "policy", "backend: %s: maxmemory-policy is %s; kcached needs noeviction "
                 "or a volatile-* policy (its metadata keys have no TTL)", n->label, p);
}

static void
policy_check(struct pconn *pc)
{
        static const char cmd[] = "*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$16\r\nmaxmemory-policy\r\n";

        (void)rconn_send(&pc->rc, cmd, sizeof(cmd) - 1, 1, policy_on_reply, pc->node, 0);
}

static void
pconn_on_state(struct rconn *rc, enum rconn_event ev, const char *why)
{
        struct pconn *pc = rc->owner;
        struct node *n = pc->node;

        if (pc->is_retired)
                return;
        if (ev == RCONN_EV_UP) {
                n->backoff_ms = 0;
                if (!n->is_healthy)
                        log_debug("backend", "conn_up", "backend: %s: connected", n->label);
                if (!n->role_ok)
                        role_check(pc);
                if (n->role == ROLE_PRIMARY && !n->be->policy_checked) {
                        n->be->policy_checked = true;
                        policy_check(pc);
                }
                /* The handshake's PING counts as a success at start; a node that was
                 * marked down must pass recovery_threshold probes instead. */
                if (n->n_ok_needed <= 1)
                        node_success(n);
                if (n->role == ROLE_PRIMARY)
                        backend_report_ready(n->be);
                return;
        }
        if (n->is_tearing_down)
                return;
        /* Say "auth failed" plainly: it is the one failure only an operator can fix. */
        char authwhy[300];
        if (why != NULL && strncmp(why, "handshake: ", 11) == 0 &&
            (strstr(why, "WRONGPASS") != NULL || strstr(why, "NOAUTH") != NULL ||
             strstr(why, "invalid password") != NULL || strstr(why, "invalid username") != NULL ||
             strstr(why, "AUTH") != NULL)) {
                snprintf(authwhy, sizeof(authwhy), "auth failed: %.250s", why + 11);
                why = authwhy;
        }
        if (n->is_healthy || n->consec_fail == 0)
                log_warn("backend", "conn_down", "backend: %s: %s", n->label, why);
        else
                log_debug("backend", "conn_down", "backend: %s: %s", n->label, why);
        node_failure(n, EC_CONN, why);
        node_schedule_retry(n);
        if (n->role == ROLE_PRIMARY)
                backend_report_ready(n->be);
}

static void
node_on_resolved(void *priv, int err, const struct sockaddr_storage *addrs, const socklen_t *lens,
                 int n_addrs)
{
        struct node *n = priv;
        const struct sockaddr *addr;
        socklen_t len;
        char why[300];

        n->job = NULL;
        if (err != 0) {
                snprintf(why, sizeof(why), "resolve %s: %s", n->addr.host, gai_strerror(err));
                log_warn("backend", "resolve", "backend: %s: %s", n->label, why);
                node_failure(n, EC_CONN, why);
                node_schedule_retry(n);
                if (n->role == ROLE_PRIMARY)
                        backend_report_ready(n->be);
                return;
        }
        /* A name with several addresses: each connect round tries the next one. */
        if (n->consec_fail > 0)
                n->addr_rr++;
        addr = (const struct sockaddr *)&addrs[n->addr_rr % (unsigned)n_addrs];
        len = lens[n->addr_rr % (unsigned)n_addrs];
        memcpy(&n->ss, addr, len);
        n->sslen = len;
        for (int i = 0; i < n->n_conns; i++) {
                struct rconn *rc = &n->conns[i]->rc;
                if (rc->state != RCONN_IDLE)
                        continue;
                int r = rconn_connect(rc, addr, len, n->be->handshake, n->be->handshake_len,
                                      n->be->n_handshake, n->be->cfg->connect_timeout_ms);
                if (r < 0) {
                        snprintf(why, sizeof(why), "connect: %s", strerror(-r));
                        node_failure(n, EC_CONN, why);
                        node_schedule_retry(n);
                }
        }
}

/* Connects every idle connection; names are resolved again each time. */
static void
node_connect(struct node *n)
{
        struct sockaddr_storage ss;
        socklen_t len;
        int r;

        if (!n->has_addr || n->job != NULL)
                return;
        r = resolve_literal(&n->addr, &ss, &len);
        if (r == 0) {
                node_on_resolved(n, 0, &ss, &len, 1);
                return;
        }
        r = resolve_start(&n->addr, node_on_resolved, n, &n->job);
        if (r < 0) {
                char why[200];
                snprintf(why, sizeof(why), "resolve: %s", strerror(-r));
                node_failure(n, EC_CONN, why);
                node_schedule_retry(n);
        }
}

static void
node_on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
        node_connect((struct node *)((char *)w - offsetof(struct node, retry)));
}

/* Closes every connection (pending commands fail over now) and reconnects later. */
static void
node_teardown(struct node *n, const char *why)
{
        n->is_tearing_down = true;
        n->probe_gen++;
        n->probe_inflight = false;
        ev_timer_stop(n->be->loop, &n->probe_deadline);
        for (int i = 0; i < n->n_conns; i++)
                rconn_close(&n->conns[i]->rc, why);
        n->is_tearing_down = false;
        node_schedule_retry(n);
}

/*
 * The connection for a command: one that already has commands queued in this
 * loop turn (unless it is deep in commands already), so that what the turn
 * read from many clients goes to Redis in one write and comes back in one
 * read: fewer system calls and wake-ups for both (bench/compare, 50
 * connections: 1.8x the rate, Redis's CPU per GET 2.6 -> 1.0 us); else the
 * least busy, which also spreads the next turns.
 */
#define PICK_DIRTY_MAX_INFLIGHT 256
static struct pconn *
node_pick_conn(struct node *n)
{
        struct pconn *best = NULL;

        for (int i = 0; i < n->n_conns; i++) {
                struct pconn *pc = n->conns[i];
                if (pc->rc.state != RCONN_UP)
                        continue;
                if (pc->rc.is_dirty && rconn_inflight(&pc->rc) < PICK_DIRTY_MAX_INFLIGHT)
                        return pc;
                if (best == NULL || rconn_inflight(&pc->rc) < rconn_inflight(&best->rc))
                        best = pc;
        }
        return best;
}

/* --- probes and the lag heartbeat ------------------------------------------ */

static enum err_class
classify_error(const char *s, size_t n)
{
        static const char *const node_errors[] = {"LOADING", "MASTERDOWN", "BUSY", "NOAUTH",
                                                  "TRYAGAIN"};

        for (size_t i = 0; i < sizeof(node_errors) / sizeof(node_errors[0]); i++) {
                size_t k = strlen(node_errors[i]);
                /* whole word: BUSYKEY is the app's error, BUSY is the node's */
                if (n >= k && memcmp(s, node_errors[i], k) == 0 && (n == k || s[k] == ' '))
                        return EC_NODE;
        }
        if (n >= 8 && memcmp(s, "READONLY", 8) == 0)
                return EC_READONLY;
        return EC_APP;
}

static void
hb_record_ack(struct backend *be, int64_t v)
{
        int idx = (be->hb_head + be->hb_n) % BACKEND_HB_RING;

        if (be->hb_n == BACKEND_HB_RING) {
                be->hb_head = (be->hb_head + 1) % BACKEND_HB_RING;
                be->hb_n--;
                idx = (be->hb_head + be->hb_n) % BACKEND_HB_RING;
        }
        be->hb_acked[idx] = v;
        be->hb_n++;
}

/*
 * How far behind a replica holding heartbeat value v (have_v false: none) is:
 * the age of the oldest acknowledged write it has not seen, 0 if none.
 */
static int64_t
hb_lag_ms(const struct backend *be, bool have_v, int64_t v, int64_t now_ms)
{
        for (int i = 0; i < be->hb_n; i++) {
                int64_t w = be->hb_acked[(be->hb_head + i) % BACKEND_HB_RING];
                if (!have_v || w > v)
                        return now_ms > w ? now_ms - w : 0;
        }
        return 0;
}

static void
probe_on_reply(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct node *n = priv;
        struct backend *be = n->be;

        if (gen != n->probe_gen || !n->probe_inflight)
                return;
        n->probe_inflight = false;
        if (err == 0)
                n->last_reply = ev_now(be->loop);
        ev_timer_stop(be->loop, &n->probe_deadline);
        if (err != 0) {
                n->probe_failures++;
                node_failure(n, EC_CONN, "probe: connection lost");
                return;
        }
        if (reply->type == REDIS_REPLY_ERROR) {
                char why[200];
                enum err_class cls = classify_error(reply->str, reply->len);
                n->probe_failures++;
                snprintf(why, sizeof(why), "probe: %.*s", (int)(reply->len > 150 ? 150 : reply->len),
                         reply->str);
                node_failure(n, cls == EC_APP ? EC_NODE : cls, why);
                if (cls == EC_READONLY && n->role == ROLE_PRIMARY && be->sn != NULL)
                        sentinel_rediscover(be->sn);
                return;
        }
        if (n->role == ROLE_PRIMARY) {
                hb_record_ack(be, be->hb_last_sent);
        } else {
                int64_t now_ms = (int64_t)(wall_now() * 1000);
                bool have = reply->type == REDIS_REPLY_STRING;
                int64_t v = have ? strtoll(reply->str, NULL, 10) : 0;
                int64_t lag = hb_lag_ms(be, have, v, now_ms);
                bool was_in = node_in_rotation(n);
                n->has_lag = true;
                n->lag_ms = lag;
                if (was_in && !node_in_rotation(n))
                        log_warn("backend", "lagging", "backend: %s: %" PRId64
                                 " ms behind the primary; out of rotation", n->label, lag);
                else if (!was_in && n->is_healthy && node_in_rotation(n))
                        log_info("backend", "caught_up", "backend: %s: caught up; back in rotation",
                                 n->label);
        }
        node_success(n);
}

static void
probe_on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct node *n = (struct node *)((char *)w - offsetof(struct node, probe_deadline));
        char why[100];

        n->probe_gen++; /* the late answer will be ignored */
        n->probe_inflight = false;
        n->probe_failures++;
        n->timeouts++;
        snprintf(why, sizeof(why), "probe: no answer within %d ms", n->be->cfg->health_timeout_ms);
        node_failure(n, EC_TIMEOUT, why);
}

static void
probe_on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct node *n = (struct node *)((char *)w - offsetof(struct node, probe_timer));
        struct backend *be = n->be;
        struct pconn *pc;
        char cmd[256];
        int len;

        /* Connections a reload took out of the pool leave once drained. */
        for (int i = 0; i < n->n_retired;) {
                if (rconn_inflight(&n->retired[i]->rc) > 0) {
                        i++;
                        continue;
                }
                rconn_deinit(&n->retired[i]->rc);
                free(n->retired[i]);
                n->retired[i] = n->retired[--n->n_retired];
        }
        if (n->probe_inflight || !n->has_addr)
                return;
        pc = node_pick_conn(n);
        if (pc == NULL)
                return; /* reconnecting: the handshake is the probe */
        if (n->role == ROLE_PRIMARY) {
                int64_t v = (int64_t)(wall_now() * 1000);
                char val[32];
                if (v <= be->hb_last_sent)
                        v = be->hb_last_sent + 1;
                be->hb_last_sent = v;
                int vlen = snprintf(val, sizeof(val), "%" PRId64, v);
                len = snprintf(cmd, sizeof(cmd),
                               "*5\r\n$3\r\nSET\r\n$%zu\r\n%s\r\n$%d\r\n%s\r\n$2\r\nPX\r\n$%zu\r\n%s\r\n",
                               strlen(be->hb_key), be->hb_key, vlen, val, strlen(BACKEND_HB_PX),
                               BACKEND_HB_PX);
        } else {
                len = snprintf(cmd, sizeof(cmd), "*2\r\n$3\r\nGET\r\n$%zu\r\n%s\r\n",
                               strlen(be->hb_key), be->hb_key);
        }
        n->probe_gen++;
        if (rconn_send(&pc->rc, cmd, (size_t)len, 1, probe_on_reply, n, n->probe_gen) < 0)
                return;
        n->probes++;
        n->probe_inflight = true;
        ev_timer_set(&n->probe_deadline, be->cfg->health_timeout_ms / 1000.0, 0.);
        ev_timer_start(loop, &n->probe_deadline);
}

/* Sentinel: a primary is trusted for writes only after it says ROLE master. */
static void
role_on_reply(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct node *n = priv;

        if (err != 0 || n->role_ok)
                return;
        if (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 &&
            reply->element[0]->type == REDIS_REPLY_STRING &&
            strcmp(reply->element[0]->str, "master") == 0) {
                n->role_ok = true;
                log_info("backend", "role_ok", "backend: %s: ROLE master confirmed", n->label);
                return;
        }
        log_warn("backend", "role_wrong", "backend: %s: ROLE is not master; asking Sentinel again",
                 n->label);
        if (n->be->sn != NULL)
                sentinel_rediscover(n->be->sn);
}

static void
role_check(struct pconn *pc)
{
        static const char cmd[] = "*1\r\n$4\r\nROLE\r\n";

        (void)rconn_send(&pc->rc, cmd, sizeof(cmd) - 1, 1, role_on_reply, pc->node, 0);
}

/* --- nodes ------------------------------------------------------------------- */

static void
node_set_label(struct node *n)
{
        if (n->has_addr)
                config_addr_str(&n->addr, n->addr_str, sizeof(n->addr_str));
        else
                snprintf(n->addr_str, sizeof(n->addr_str), "(unknown)");
        snprintf(n->label, sizeof(n->label), "%s %s",
                 n->role == ROLE_PRIMARY ? "primary" : "replica", n->addr_str);
        for (int i = 0; i < n->n_conns; i++)
                snprintf(n->conns[i]->rc.name, sizeof(n->conns[i]->rc.name), "%s", n->label);
}

static struct node *
node_new(struct backend *be, enum node_role role, const struct config_addr *addr)
{
        struct node *n = calloc(1, sizeof(*n));

        if (n == NULL)
                return NULL;
        n->be = be;
        n->id = ++be->next_node_id;
        n->role = role;
        n->n_conns = role == ROLE_PRIMARY ? be->cfg->pool_size : be->cfg->replica_pool_size;
        if (n->n_conns < 1)
                n->n_conns = 1;
        n->conns = calloc((size_t)n->n_conns, sizeof(*n->conns));
        if (n->conns == NULL) {
                free(n);
                return NULL;
        }
        for (int i = 0; i < n->n_conns; i++) {
                n->conns[i] = calloc(1, sizeof(struct pconn));
                if (n->conns[i] == NULL) {
                        while (i-- > 0)
                                free(n->conns[i]);
                        free(n->conns);
                        free(n);
                        return NULL;
                }
        }
        if (addr != NULL) {
                n->addr = *addr;
                n->has_addr = true;
        }
        /* Static primaries are trusted; Sentinel's must confirm with ROLE. */
        n->role_ok = role != ROLE_PRIMARY || be->sn == NULL;
        n->n_ok_needed = 1;
        n->since = wall_now();
        for (int i = 0; i < n->n_conns; i++) {
                n->conns[i]->node = n;
                n->conns[i]->idx = i;
                rconn_init(&n->conns[i]->rc, be->loop, pconn_on_state, n->conns[i], "");
        }
        node_set_label(n);
        ev_timer_init(&n->retry, node_on_retry, 0., 0.);
        ev_timer_init(&n->probe_deadline, probe_on_deadline, 0., 0.);
        ev_timer_init(&n->probe_timer, probe_on_tick, be->cfg->health_interval_ms / 1000.0,
                      be->cfg->health_interval_ms / 1000.0);
        ev_timer_start(be->loop, &n->probe_timer);
        return n;
}

static struct node *
node_free(struct node *n)
{
        if (n == NULL)
                return NULL;
        resolve_cancel(n->job);
        n->job = NULL;
        n->is_dead = true; /* no retries or state changes from the closes below */
        n->is_tearing_down = true;
        ev_timer_stop(n->be->loop, &n->retry);
        ev_timer_stop(n->be->loop, &n->probe_timer);
        ev_timer_stop(n->be->loop, &n->probe_deadline);
        n->probe_gen++;
        for (int i = 0; i < n->n_conns; i++) {
                rconn_deinit(&n->conns[i]->rc);
                free(n->conns[i]);
        }
        for (int i = 0; i < n->n_retired; i++) {
                rconn_deinit(&n->retired[i]->rc);
                free(n->retired[i]);
        }
        free(n->conns);
        free(n->retired);
        free(n);
        return NULL;
}

/* Points n at another address: closes its connections, forgets its health. */
static void
node_move(struct node *n, const struct config_addr *addr)
{
        char why[300];

        snprintf(why, sizeof(why), "moved to %s", config_addr_str(addr, why + 200, 90));
        n->is_tearing_down = true;
        resolve_cancel(n->job);
        n->job = NULL;
        for (int i = 0; i < n->n_conns; i++)
                rconn_close(&n->conns[i]->rc, why);
        n->is_tearing_down = false;
        ev_timer_stop(n->be->loop, &n->retry);
        n->addr = *addr;
        n->has_addr = true;
        n->is_healthy = false;
        n->role_ok = n->role != ROLE_PRIMARY || n->be->sn == NULL;
        n->n_ok_needed = 1;
        n->consec_fail = n->consec_ok = 0;
        n->backoff_ms = 0;
        n->has_lag = false;
        n->since = wall_now();
        n->state_changes++;
        node_set_label(n);
        node_connect(n);
}

/*
 * A reload changed the pool size. Growing adds connections (they connect at
 * once); shrinking retires the last ones: they take no new commands, answer
 * what they carry, and are freed by the probe tick once empty — in-flight
 * requests never fail because of a reload.
 */
static int
node_resize(struct node *n, int size)
{
        if (size < 1 || size == n->n_conns)
                return 0;
        if (size < n->n_conns) {
                struct pconn **r = realloc(n->retired, (size_t)(n->n_retired + n->n_conns - size) *
                                                               sizeof(*r));
                if (r == NULL)
                        return -ENOMEM;
                n->retired = r;
                while (n->n_conns > size) {
                        struct pconn *pc = n->conns[--n->n_conns];
                        pc->is_retired = true;
                        n->retired[n->n_retired++] = pc;
                }
                return 0;
        }
        struct pconn **c = realloc(n->conns, (size_t)size * sizeof(*c));
        if (c == NULL)
                return -ENOMEM;
        n->conns = c;
        while (n->n_conns < size) {
                struct pconn *pc = calloc(1, sizeof(*pc));
                if (pc == NULL)
                        return -ENOMEM;
                pc->node = n;
                pc->idx = n->n_conns;
                rconn_init(&pc->rc, n->be->loop, pconn_on_state, pc, n->label);
                n->conns[n->n_conns++] = pc;
        }
        node_connect(n);
        return 0;
}

static void
node_reconfigure(struct node *n)
{
        const struct config *cfg = n->be->cfg;
        double every = cfg->health_interval_ms / 1000.0;

        if (n->probe_timer.repeat != every) {
                ev_timer_stop(n->be->loop, &n->probe_timer);
                ev_timer_set(&n->probe_timer, every, every);
                ev_timer_start(n->be->loop, &n->probe_timer);
        }
        (void)node_resize(n, n->role == ROLE_PRIMARY ? cfg->pool_size : cfg->replica_pool_size);
}

void
backend_reconfigure(struct backend *be)
{
        const struct config *cfg = be->cfg;

        if (be->sn == NULL)
                backend_set_topology(be, &cfg->primary_addr, cfg->replica_addrs, cfg->n_replicas);
        node_reconfigure(be->primary);
        for (int i = 0; i < be->n_replicas; i++)
                node_reconfigure(be->replicas[i]);
}

/* --- backend ------------------------------------------------------------------ */

static int
backend_build_handshake(struct backend *be)
{
        const struct config *cfg = be->cfg;
        char db[16];
        char *cmd = NULL;
        const char *argv[3];
        size_t argvlen[3];
        int len;
        struct buf b = BUF_INIT;

        be->n_handshake = 0;
        if (cfg->password[0] != '\0') {
                /* AUTH [username] password: an ACL user when one is configured. */
                int n = 0;
                argv[n] = "AUTH";
                argvlen[n++] = 4;
                if (cfg->username != NULL && cfg->username[0] != '\0') {
                        argv[n] = cfg->username;
                        argvlen[n++] = strlen(cfg->username);
                }
                argv[n] = cfg->password;
                argvlen[n++] = strlen(cfg->password);
                len = redisFormatCommandArgv(&cmd, n, argv, argvlen);
                if (len < 0 || buf_append(&b, cmd, (size_t)len) < 0)
                        goto fail;
                redisFreeCommand(cmd);
                cmd = NULL;
                be->n_handshake++;
        }
        if (cfg->db != 0) {
                snprintf(db, sizeof(db), "%d", cfg->db);
                argv[0] = "SELECT";
                argv[1] = db;
                argvlen[0] = 6;
                argvlen[1] = strlen(db);
                len = redisFormatCommandArgv(&cmd, 2, argv, argvlen);
                if (len < 0 || buf_append(&b, cmd, (size_t)len) < 0)
                        goto fail;
                redisFreeCommand(cmd);
                cmd = NULL;
                be->n_handshake++;
        }
        /* PING proves the node serves commands (a -LOADING node answers it with an error). */
        if (buf_append(&b, "*1\r\n$4\r\nPING\r\n", 14) < 0)
                goto fail;
        be->n_handshake++;
        be->handshake = (char *)b.data; /* consumed: owned by be */
        be->handshake_len = b.len;
        return 0;
fail:
        redisFreeCommand(cmd);
        buf_deinit(&b);
        return -ENOMEM;
}

int
backend_new(struct backend **out, struct ev_loop *loop, const struct config *cfg)
{
        struct backend *be = calloc(1, sizeof(*be));
        char host[64] = "";

        if (be == NULL)
                return -ENOMEM;
        be->loop = loop;
        be->cfg = cfg;
        rconn_set_limits(cfg->max_reply_elements, (size_t)cfg->max_reply_bytes);
        rconn_init(&be->sub, loop, sub_on_state, be, "subscriber");
        rconn_set_push(&be->sub, sub_on_push, be);
        ev_timer_init(&be->sub_retry, sub_on_retry, 0., 0.);
        gethostname(host, sizeof(host) - 1);
        snprintf(be->hb_key, sizeof(be->hb_key), "kcache:hb:%s:%ld:%08lx", host, (long)getpid(),
                 (unsigned long)random());
        if (backend_build_handshake(be) < 0)
                goto fail;
        if (cfg->n_sentinels > 0 && sentinel_new(&be->sn, loop, cfg, be) < 0)
                goto fail;
        be->primary = node_new(be, ROLE_PRIMARY, cfg->n_sentinels > 0 ? NULL : &cfg->primary_addr);
        if (be->primary == NULL)
                goto fail;
        if (cfg->n_sentinels == 0) {
                for (int i = 0; i < cfg->n_replicas; i++) {
                        be->replicas[i] = node_new(be, ROLE_REPLICA, &cfg->replica_addrs[i]);
                        if (be->replicas[i] == NULL)
                                goto fail;
                        be->n_replicas++;
                }
        }
        *out = be;
        return 0;
fail:
        backend_free(be);
        return -ENOMEM;
}

struct backend *
backend_free(struct backend *be)
{
        if (be == NULL)
                return NULL;
        be->sn = sentinel_free(be->sn);
        ev_timer_stop(be->loop, &be->sub_retry);
        rconn_deinit(&be->sub);
        free(be->sub_channel);
        for (int i = 0; i < be->n_replicas; i++)
                be->replicas[i] = node_free(be->replicas[i]);
        be->primary = node_free(be->primary);
        if (be->handshake != NULL) {
                /* scrub the password before giving the memory back */
                memset(be->handshake, 0, be->handshake_len);
                free(be->handshake);
        }
        free(be);
        return NULL;
}

void
backend_start(struct backend *be, void (*ready)(void *priv), void *priv)
{
        be->ready = ready;
        be->ready_priv = priv;
        if (be->sn != NULL) {
                sentinel_start(be->sn, ready, priv);
                be->ready = NULL;
                return;
        }
        node_connect(be->primary);
        for (int i = 0; i < be->n_replicas; i++)
                node_connect(be->replicas[i]);
}

static bool
addr_equal(const struct config_addr *a, const struct config_addr *b)
{
        return a->is_unix == b->is_unix && a->port == b->port && strcmp(a->host, b->host) == 0 &&
               strcmp(a->path, b->path) == 0;
}

void
backend_set_topology(struct backend *be, const struct config_addr *primary,
                     const struct config_addr *replicas, int n_replicas)
{
        struct node *n = be->primary;
        char a[CONFIG_HOST_MAX + 16];

        if (!n->has_addr || !addr_equal(&n->addr, primary)) {
                log_warn("backend", "primary_moved", "backend: primary is now %s (was %s)",
                         config_addr_str(primary, a, sizeof(a)), n->addr_str);
                node_move(n, primary);
                be->primary_epoch++;
                if (be->sub.state != RCONN_IDLE)
                        rconn_close(&be->sub, "primary moved");
        }
        /* Remove replicas that are gone (or became the primary). */
        for (int i = 0; i < be->n_replicas;) {
                bool keep = false;
                for (int k = 0; k < n_replicas; k++)
                        keep |= addr_equal(&be->replicas[i]->addr, &replicas[k]);
                keep &= !addr_equal(&be->replicas[i]->addr, primary);
                if (keep) {
                        i++;
                        continue;
                }
                log_info("backend", "replica_removed", "backend: %s: removed",
                         be->replicas[i]->label);
                node_free(be->replicas[i]);
                be->replicas[i] = be->replicas[--be->n_replicas];
                be->replicas[be->n_replicas] = NULL;
        }
        for (int k = 0; k < n_replicas; k++) {
                bool known = addr_equal(&replicas[k], primary);
                for (int i = 0; i < be->n_replicas && !known; i++)
                        known = addr_equal(&be->replicas[i]->addr, &replicas[k]);
                if (known)
                        continue;
                if (be->n_replicas == CONFIG_MAX_REPLICAS) {
                        log_warn("backend", "too_many_replicas",
                                 "backend: more than %d replicas; ignoring %s",
                                 CONFIG_MAX_REPLICAS, config_addr_str(&replicas[k], a, sizeof(a)));
                        continue;
                }
                struct node *r = node_new(be, ROLE_REPLICA, &replicas[k]);
                if (r == NULL)
                        continue;
                log_info("backend", "replica_added", "backend: %s: added", r->label);
                be->replicas[be->n_replicas++] = r;
                node_connect(r);
        }
}

/* --- subscriber -------------------------------------------------------------------- */

static void sub_connect(struct backend *be);

static void
sub_on_push(void *priv, redisReply *reply)
{
        struct backend *be = priv;

        /* Only ["message", channel, payload]; confirmations and others are ignored. */
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
            reply->element[0]->type != REDIS_REPLY_STRING ||
            strcmp(reply->element[0]->str, "message") != 0 ||
            reply->element[2]->type != REDIS_REPLY_STRING)
                return;
        be->sub_fn(be->sub_priv, reply->element[2]->str, reply->element[2]->len);
}

static void
sub_on_subscribed(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct backend *be = priv;

        if (err == 0 && reply->type == REDIS_REPLY_ARRAY && be->sub_up != NULL)
                be->sub_up(be->sub_priv);
}

static void
sub_on_state(struct rconn *rc, enum rconn_event ev, const char *why)
{
        struct backend *be = rc->owner;
        struct buf b = BUF_INIT;
        char hdr[32];

        if (ev == RCONN_EV_UP) {
                buf_append(&b, "*2\r\n$9\r\nSUBSCRIBE\r\n", 19);
                buf_append(&b, hdr, (size_t)snprintf(hdr, sizeof(hdr), "$%zu\r\n", be->sub_channel_len));
                buf_append(&b, be->sub_channel, be->sub_channel_len);
                buf_append(&b, "\r\n", 2);
                if (b.len == 0 || rconn_send(rc, (const char *)b.data, b.len, 1, sub_on_subscribed,
                                             be, 0) < 0)
                        rconn_close(rc, "out of memory");
                buf_deinit(&b);
                return;
        }
        log_debug("backend", "sub_down", "backend: subscriber: %s", why != NULL ? why : "closed");
        if (!ev_is_active(&be->sub_retry)) {
                ev_timer_set(&be->sub_retry, 0.2, 0.);
                ev_timer_start(be->loop, &be->sub_retry);
        }
}

static void
sub_on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
        sub_connect((struct backend *)((char *)w - offsetof(struct backend, sub_retry)));
}

static void
sub_connect(struct backend *be)
{
        struct node *p = be->primary;

        if (be->sub_fn == NULL || be->sub.state != RCONN_IDLE)
                return;
        if (p->sslen == 0 || !node_usable(p)) {
                ev_timer_set(&be->sub_retry, 0.2, 0.);
                ev_timer_start(be->loop, &be->sub_retry);
                return;
        }
        if (rconn_connect(&be->sub, (struct sockaddr *)&p->ss, p->sslen, be->handshake,
                          be->handshake_len, be->n_handshake, be->cfg->connect_timeout_ms) < 0) {
                ev_timer_set(&be->sub_retry, 0.5, 0.);
                ev_timer_start(be->loop, &be->sub_retry);
        }
}

void
backend_subscribe(struct backend *be, const char *channel, size_t len,
                  void (*fn)(void *priv, const char *msg, size_t n), void (*up)(void *priv),
                  void *priv)
{
        be->sub_channel = malloc(len);
        if (be->sub_channel == NULL)
                return;
        memcpy(be->sub_channel, channel, len);
        be->sub_channel_len = len;
        be->sub_fn = fn;
        be->sub_up = up;
        be->sub_priv = priv;
        sub_connect(be);
}

bool
backend_primary_sockaddr(const struct backend *be, struct sockaddr_storage *ss, socklen_t *len,
                         uint64_t *epoch)
{
        const struct node *p = be->primary;

        *epoch = be->primary_epoch;
        if (p->sslen == 0 || !node_usable(p))
                return false;
        memcpy(ss, &p->ss, p->sslen);
        *len = p->sslen;
        return true;
}

uint64_t
backend_primary_epoch(const struct backend *be)
{
        return be->primary_epoch;
}

const char *
backend_handshake(const struct backend *be, size_t *len, unsigned *n_cmds)
{
        *len = be->handshake_len;
        *n_cmds = be->n_handshake;
        return be->handshake;
}

const struct config_addr *
backend_primary_addr(const struct backend *be)
{
        return be->primary->has_addr ? &be->primary->addr : NULL;
}

/* --- routing -------------------------------------------------------------------- */

static struct node *
pick_best(struct backend *be, struct node **cand, int n_cand)
{
        struct node *best = NULL;
        size_t best_load = 0;

        if (n_cand == 0)
                return NULL;
        /* Least outstanding; ties go round-robin by starting the scan at rr. */
        unsigned start = be->rr++;
        for (int k = 0; k < n_cand; k++) {
                struct node *n = cand[(start + (unsigned)k) % (unsigned)n_cand];
                size_t load = node_inflight(n);
                if (best == NULL || load < best_load) {
                        best = n;
                        best_load = load;
                }
        }
        return best;
}

static struct node *
pick_node(struct backend *be, enum backend_route route, const struct node *exclude)
{
        struct node *cand[CONFIG_MAX_REPLICAS + 1];
        int n_cand = 0;
        struct node *p = be->primary;
        bool p_ok = p != exclude && node_usable(p);

        if (route == BACKEND_WRITE || route == BACKEND_READ_PRIMARY ||
            be->cfg->read_from == READ_FROM_PRIMARY)
                return p_ok ? p : NULL;
        for (int i = 0; i < be->n_replicas; i++)
                if (be->replicas[i] != exclude && node_in_rotation(be->replicas[i]))
                        cand[n_cand++] = be->replicas[i];
        if (be->cfg->read_from == READ_FROM_ANY && p_ok)
                cand[n_cand++] = p;
        if (n_cand == 0)
                return p_ok ? p : NULL;
        return pick_best(be, cand, n_cand);
}

static void bcall_on_reply(void *priv, uint32_t gen, redisReply *reply, int err);

static void
bcall_drop_cmd(struct bcall *c)
{
        if (c->cmd != c->cmd_inline)
                free(c->cmd);
        c->cmd = NULL;
}

static void
bcall_finish(struct bcall *c, redisReply *reply, int err)
{
        c->rc = NULL;
        c->is_active = false;
        c->node = NULL;
        ev_timer_stop(c->be->loop, &c->attempt_timer);
        bcall_drop_cmd(c);
        c->fn(c->priv, c->gen, reply, err);
}

static int
bcall_attempt(struct bcall *c, struct node *n, const char *cmd, size_t len)
{
        struct backend *be = c->be;
        struct pconn *pc;
        size_t inflight = node_inflight(n);

        if (inflight >= (size_t)be->cfg->max_inflight_per_node) {
                /* Busy but answering: skip it for now. Silent for an attempt's
                 * length with the queue full: frozen, so tear it down before the
                 * queue behind it grows (marking a merely busy node down would
                 * push its load onto the others and cascade). */
                int ms = be->cfg->replica_attempt_timeout_ms;
                if (ms == 0)
                        ms = be->cfg->command_timeout_ms / 3;
                if (ev_now(be->loop) - n->last_reply > ms / 1000.0) {
                        char why[100];
                        snprintf(why, sizeof(why),
                                 "%zu commands in flight (max_inflight_per_node) and no answer",
                                 inflight);
                        node_set_healthy(n, false, why);
                }
                return -EAGAIN;
        }
        pc = NULL;
        if (c->aff != NULL && c->n_tries == 0 && c->aff->is_sticky && c->aff->node_id == n->id &&
            c->aff->idx < n->n_conns && n->conns[c->aff->idx]->rc.state == RCONN_UP)
                pc = n->conns[c->aff->idx];
        if (pc == NULL)
                pc = node_pick_conn(n);
        if (pc == NULL)
                return -ENOTCONN;
        if (c->aff != NULL && c->n_tries == 0) {
                c->aff->node_id = n->id;
                c->aff->idx = pc->idx;
        }
        c->attempt_gen++;
        int r = rconn_send(&pc->rc, cmd, len, c->n_replies, bcall_on_reply, c, c->attempt_gen);
        if (r < 0)
                return r;
        c->rc = &pc->rc;
        n->requests++;
        if (inflight + 1 > n->max_inflight)
                n->max_inflight = inflight + 1;
        c->node = n;
        c->n_tries++;
        c->sent_at = ev_now(be->loop);
        if (c->cmd != NULL && c->n_tries == 1) {
                /* A retry is possible: bound this attempt so one can still fit. */
                int ms = be->cfg->replica_attempt_timeout_ms;
                double at;
                if (ms == 0)
                        ms = be->cfg->command_timeout_ms / 3;
                at = c->sent_at + ms / 1000.0;
                if (at < c->deadline) {
                        ev_timer_set(&c->attempt_timer, at - ev_now(be->loop), 0.);
                        ev_timer_start(be->loop, &c->attempt_timer);
                }
        }
        return 0;
}

static bool
bcall_can_retry(struct bcall *c)
{
        return c->cmd != NULL && c->n_tries < 2 && ev_now(c->be->loop) < c->deadline &&
               pick_node(c->be, c->route, c->node) != NULL;
}

/* Retries elsewhere; false if no attempt could be made. */
static bool
bcall_retry(struct bcall *c)
{
        struct node *from = c->node;
        struct node *n = pick_node(c->be, c->route, from);

        if (n == NULL)
                return false;
        ev_timer_stop(c->be->loop, &c->attempt_timer);
        log_debug("backend", "retry", "backend: retrying a read on %s after %s failed", n->label,
                  from != NULL ? from->label : "?");
        return bcall_attempt(c, n, c->cmd, c->len) == 0;
}

static void
bcall_on_attempt_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct bcall *c = (struct bcall *)((char *)w - offsetof(struct bcall, attempt_timer));
        struct node *n = c->node;
        char why[100];

        if (!c->is_active || n == NULL)
                return;
        n->timeouts++;
        snprintf(why, sizeof(why), "command: no answer within %.0f ms",
                 (ev_now(loop) - c->sent_at) * 1000);
        if (bcall_can_retry(c)) {
                /* Abandon it: its late reply is dropped by the connection. */
                if (c->rc != NULL)
                        rconn_forget(c->rc, c, c->attempt_gen);
                c->rc = NULL;
                c->attempt_gen++;
                node_failure(n, EC_TIMEOUT, why);
                if (!bcall_retry(c))
                        bcall_finish(c, NULL, BACKEND_E_DOWN);
                return;
        }
        /* No other node: keep waiting for this one until the owner's deadline. */
        node_failure(n, EC_TIMEOUT, why);
}

static void
bcall_on_reply(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct bcall *c = priv;
        struct node *n = c->node;

        if (!c->is_active || gen != c->attempt_gen || n == NULL) {
                stats.late_redis_replies++;
                return;
        }
        c->rc = NULL; /* this attempt's queue entry is consumed */
        ev_timer_stop(c->be->loop, &c->attempt_timer);
        node_latency(n, ev_now(c->be->loop) - c->sent_at);
        n->last_reply = ev_now(c->be->loop);
        if (err != 0) {
                node_failure(n, EC_CONN, "connection lost with commands in flight");
                if (bcall_can_retry(c) && bcall_retry(c))
                        return;
                bcall_finish(c, NULL, BACKEND_E_DOWN);
                return;
        }
        n->replies++;
        if (reply->type == REDIS_REPLY_ERROR) {
                enum err_class cls = classify_error(reply->str, reply->len);
                char why[200];
                n->errors++;
                snprintf(why, sizeof(why), "%.*s", (int)(reply->len > 150 ? 150 : reply->len),
                         reply->str);
                if (cls == EC_NODE) {
                        node_failure(n, EC_NODE, why);
                        if (bcall_can_retry(c) && bcall_retry(c))
                                return;
                        bcall_finish(c, reply, 0);
                        return;
                }
                if (cls == EC_READONLY && c->route == BACKEND_WRITE) {
                        n->err_class[EC_READONLY]++;
                        if (c->be->sn != NULL)
                                sentinel_rediscover(c->be->sn);
                        bcall_finish(c, NULL, BACKEND_E_READONLY);
                        return;
                }
                n->err_class[EC_APP]++;
        }
        node_success(n);
        bcall_finish(c, reply, 0);
}

void
bcall_init(struct bcall *c)
{
        memset(c, 0, sizeof(*c));
        ev_timer_init(&c->attempt_timer, bcall_on_attempt_timeout, 0., 0.);
}

int
backend_call(struct backend *be, struct bcall *c, enum backend_route route, const char *cmd,
             size_t len, unsigned n_replies, ev_tstamp deadline, struct backend_affinity *aff,
             rconn_reply_fn fn, void *priv, uint32_t gen)
{
        struct node *n = pick_node(be, route, NULL);
        int r;

        if (n == NULL)
                return BACKEND_E_UNAVAILABLE;
        c->be = be;
        c->fn = fn;
        c->priv = priv;
        c->gen = gen;
        c->route = route;
        c->n_replies = n_replies;
        c->deadline = deadline;
        c->n_tries = 0;
        c->node = NULL;
        c->cmd = NULL;
        c->aff = aff;
        /* Keep a copy only when a read could be retried on another node. */
        if (route != BACKEND_WRITE && pick_node(be, route, n) != NULL) {
                c->cmd = len <= sizeof(c->cmd_inline) ? c->cmd_inline : malloc(len);
                if (c->cmd == NULL)
                        return -ENOMEM;
                memcpy(c->cmd, cmd, len);
                c->len = len;
        }
        c->is_active = true;
        r = bcall_attempt(c, n, cmd, len);
        if (r == -EAGAIN || r == -ENOTCONN) {
                /* that node just went down: one more choice */
                n = pick_node(be, route, n);
                r = n != NULL ? bcall_attempt(c, n, cmd, len) : -ENOTCONN;
        }
        if (r < 0) {
                c->is_active = false;
                bcall_drop_cmd(c);
                return r == -ENOMEM ? -ENOMEM : BACKEND_E_UNAVAILABLE;
        }
        return 0;
}

void
backend_call_cancel(struct bcall *c)
{
        if (!c->is_active)
                return;
        /* The owner may free c now: nothing queued may name it any more. */
        if (c->rc != NULL)
                rconn_forget(c->rc, c, c->attempt_gen);
        c->rc = NULL;
        c->is_active = false;
        c->attempt_gen++;
        c->node = NULL;
        ev_timer_stop(c->be->loop, &c->attempt_timer);
        bcall_drop_cmd(c);
}

bool
backend_is_up(const struct backend *be)
{
        if (node_usable(be->primary))
                return true;
        for (int i = 0; i < be->n_replicas; i++)
                if (node_usable(be->replicas[i]))
                        return true;
        return false;
}

int
backend_health(struct backend *be, char *why, size_t whylen)
{
        bool p = node_usable(be->primary);
        int n_up = 0;

        for (int i = 0; i < be->n_replicas; i++)
                n_up += node_in_rotation(be->replicas[i]);
        if (!p && n_up == 0) {
                snprintf(why, whylen, "no Redis node reachable (primary %s: %s)",
                         be->primary->addr_str,
                         be->primary->why_down[0] ? be->primary->why_down : "connecting");
                return 2;
        }
        if (!p) {
                snprintf(why, whylen, "primary %s down (%s): reads only", be->primary->addr_str,
                         be->primary->why_down[0] ? be->primary->why_down : "connecting");
                return 1;
        }
        if (n_up < be->n_replicas) {
                snprintf(why, whylen, "%d of %d replicas out of rotation", be->n_replicas - n_up,
                         be->n_replicas);
                return 1;
        }
        snprintf(why, whylen, "ok");
        return 0;
}

static void
node_write_json(struct node *n, struct json *j)
{
        json_obj_begin(j);
        json_key(j, "name");
        json_str(j, n->label);
        json_key(j, "role");
        json_str(j, n->role == ROLE_PRIMARY ? "primary" : "replica");
        json_key(j, "addr");
        json_str(j, n->addr_str);
        json_key(j, "state");
        json_str(j, node_usable(n) ? "up" : "down");
        json_key(j, "since");
        json_double(j, n->since);
        json_key(j, "why_down");
        if (n->is_healthy)
                json_null(j);
        else
                json_str(j, n->why_down[0] ? n->why_down : "connecting");
        json_key(j, "in_rotation");
        json_bool(j, node_in_rotation(n));
        json_key(j, "pool_size");
        json_int(j, n->n_conns);
        json_key(j, "connected");
        json_int(j, node_n_up(n));
        json_key(j, "inflight");
        json_uint(j, node_inflight(n));
        json_key(j, "max_inflight");
        json_uint(j, n->max_inflight);
        json_key(j, "requests");
        json_uint(j, n->requests);
        json_key(j, "replies");
        json_uint(j, n->replies);
        json_key(j, "errors");
        json_uint(j, n->errors);
        json_key(j, "timeouts");
        json_uint(j, n->timeouts);
        json_key(j, "errors_by_class");
        json_obj_begin(j);
        for (int i = 0; i < EC_COUNT; i++) {
                json_key(j, err_class_names[i]);
                json_uint(j, n->err_class[i]);
        }
        json_obj_end(j);
        json_key(j, "latency_ewma_us");
        json_double(j, n->lat_ewma_us);
        json_key(j, "latency_p99_us");
        json_double(j, node_p99_us(n));
        json_key(j, "lag_ms");
        if (n->role == ROLE_REPLICA && n->has_lag)
                json_int(j, n->lag_ms);
        else
                json_null(j);
        json_key(j, "state_changes");
        json_uint(j, n->state_changes);
        json_key(j, "probes");
        json_uint(j, n->probes);
        json_key(j, "probe_failures");
        json_uint(j, n->probe_failures);
        json_obj_end(j);
}

void
backend_write_json(struct backend *be, struct json *j)
{
        json_obj_begin(j);
        json_key(j, "read_from");
        json_str(j, config_read_from_name(be->cfg->read_from));
        json_key(j, "primary");
        json_str(j, be->primary->addr_str);
        json_key(j, "replies_after_deadline");
        json_uint(j, stats.replies_after_deadline);
        json_key(j, "sentinel");
        if (be->sn != NULL)
                sentinel_write_json(be->sn, j);
        else
                json_null(j);
        json_key(j, "nodes");
        json_arr_begin(j);
        node_write_json(be->primary, j);
        for (int i = 0; i < be->n_replicas; i++)
                node_write_json(be->replicas[i], j);
        json_arr_end(j);
        json_obj_end(j);
}

/* --- Prometheus (admin `metrics`) --------------------------------------------- */

static void
node_metric_labels(const struct node *n, char *labels, size_t size)
{
        const char *role = n->role == ROLE_PRIMARY ? "primary" : "replica";

        labels[0] = '\0';
        stats_prom_label(labels, size, "role", role, strlen(role));
        stats_prom_label(labels, size, "addr", n->addr_str, strlen(n->addr_str));
}

/* One family over every node: value(n) for each. */
static void
node_metric(struct backend *be, struct stats_prom *p, const char *name, const char *type,
            const char *help, uint64_t (*value)(const struct node *n))
{
        char labels[512];

        stats_prom_family(p, name, type, help);
        for (int i = -1; i < be->n_replicas; i++) {
                const struct node *n = i < 0 ? be->primary : be->replicas[i];
                node_metric_labels(n, labels, sizeof(labels));
                stats_prom_u64(p, name, labels, value(n));
        }
}

static uint64_t
node_m_up(const struct node *n)
{
        return node_usable(n);
}

static uint64_t
node_m_rotation(const struct node *n)
{
        return node_in_rotation(n);
}

static uint64_t
node_m_connected(const struct node *n)
{
        return (uint64_t)node_n_up(n);
}

static uint64_t
node_m_pool(const struct node *n)
{
        return (uint64_t)n->n_conns;
}

static uint64_t
node_m_inflight(const struct node *n)
{
        return node_inflight(n);
}

static uint64_t
node_m_requests(const struct node *n)
{
        return n->requests;
}

static uint64_t
node_m_replies(const struct node *n)
{
        return n->replies;
}

static uint64_t
node_m_timeouts(const struct node *n)
{
        return n->timeouts;
}

static uint64_t
node_m_probes(const struct node *n)
{
        return n->probes;
}

static uint64_t
node_m_probe_failures(const struct node *n)
{
        return n->probe_failures;
}

static uint64_t
node_m_state_changes(const struct node *n)
{
        return n->state_changes;
}

void
backend_write_metrics(struct backend *be, struct stats_prom *p)
{
        char labels[512];

        node_metric(be, p, "kcache_redis_node_up", "gauge",
                    "1 if the node accepts commands now (healthy, connected), else 0", node_m_up);
        node_metric(be, p, "kcache_redis_node_in_rotation", "gauge",
                    "1 if reads may go to the node now (up, not lagging, not saturated)",
                    node_m_rotation);
        node_metric(be, p, "kcache_redis_node_connections", "gauge",
                    "pool connections to the node that are up", node_m_connected);
        node_metric(be, p, "kcache_redis_node_pool_size", "gauge",
                    "pool connections kcached keeps to the node", node_m_pool);
        node_metric(be, p, "kcache_redis_node_inflight", "gauge",
                    "commands sent to the node and not answered yet", node_m_inflight);
        node_metric(be, p, "kcache_redis_node_requests_total", "counter",
                    "commands sent to the node", node_m_requests);
        node_metric(be, p, "kcache_redis_node_replies_total", "counter",
                    "replies received from the node", node_m_replies);
        node_metric(be, p, "kcache_redis_node_timeouts_total", "counter",
                    "commands to the node that timed out", node_m_timeouts);
        node_metric(be, p, "kcache_redis_node_probes_total", "counter",
                    "health probes sent to the node", node_m_probes);
        node_metric(be, p, "kcache_redis_node_probe_failures_total", "counter",
                    "health probes of the node that failed", node_m_probe_failures);
        node_metric(be, p, "kcache_redis_node_state_changes_total", "counter",
                    "times the node went up or down", node_m_state_changes);

        stats_prom_family(p, "kcache_redis_node_errors_total", "counter",
                          "failed commands to the node, by class (conn, timeout, node, readonly, "
                          "app)");
        for (int i = -1; i < be->n_replicas; i++) {
                const struct node *n = i < 0 ? be->primary : be->replicas[i];
                for (int c = 0; c < EC_COUNT; c++) {
                        node_metric_labels(n, labels, sizeof(labels));
                        stats_prom_label(labels, sizeof(labels), "class", err_class_names[c],
                                         strlen(err_class_names[c]));
                        stats_prom_u64(p, "kcache_redis_node_errors_total", labels,
                                       n->err_class[c]);
                }
        }

        stats_prom_family(p, "kcache_redis_replica_lag_seconds", "gauge",
                          "how far the replica is behind the primary (lag heartbeat); replicas "
                          "whose lag is unknown are left out");
        for (int i = 0; i < be->n_replicas; i++) {
                const struct node *n = be->replicas[i];
                if (!n->has_lag)
                        continue;
                node_metric_labels(n, labels, sizeof(labels));
                stats_prom_f64(p, "kcache_redis_replica_lag_seconds", labels,
                               (double)n->lag_ms / 1000.0);
        }

        /*
         * lat_hist[b] holds latencies in [2^b, 2^(b+1)) us (b = 0 from 0): the
         * bucket bound 2^(b+1) us is exclusive here, inclusive in Prometheus; a
         * latency of exactly a power of two lands one bucket up. The node keeps
         * no sum, so the series has no _sum line.
         */
        stats_prom_family(p, "kcache_redis_command_duration_seconds", "histogram",
                          "Redis command latency per node, from send to reply");
        for (int i = -1; i < be->n_replicas; i++) {
                const struct node *n = i < 0 ? be->primary : be->replicas[i];
                node_metric_labels(n, labels, sizeof(labels));
                stats_prom_log2_hist(p, "kcache_redis_command_duration_seconds", labels,
                                     n->lat_hist, LAT_BUCKETS, 1, &n->lat_sum_s);
        }
}
