/* SPDX-License-Identifier: MIT */
/*
 * backend: node state and routing (see backend.h).
 *
 *   IDLE --(start / backoff timer)--> RESOLVING --> CONNECTING (rconn) --> UP
 *     ^                                   |              |                  |
 *     +---------------- backoff <---------+--------------+------------------+
 *
 * Backoff starts at BACKEND_BACKOFF_MIN_MS after a failure, doubles on each
 * failure in a row up to BACKEND_BACKOFF_MAX_MS, with +-25% jitter so that
 * many kcached restarting together do not hit Redis in step; a connection
 * that reaches UP resets it.
 */
#include "daemon/backend.h"

#include <errno.h>
#include <hiredis.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "daemon/resolve.h"

#define BACKEND_BACKOFF_MIN_MS 50
#define BACKEND_BACKOFF_MAX_MS 1000

struct node {
        struct backend *be; /* ref, owner */
        struct config_addr addr;
        char label[CONFIG_HOST_MAX + 32];
        struct rconn rc;
        struct resolve_job *job; /* while resolving; owned by the resolver */
        ev_timer retry;
        int backoff_ms;
        bool was_up;         /* for logging transitions once */
        unsigned n_failures; /* in a row */
};

struct backend {
        struct ev_loop *loop;      /* ref */
        const struct config *cfg;  /* ref */
        struct node primary;
        void (*ready)(void *priv); /* first attempt finished; cleared once called */
        void *ready_priv;
        char *handshake; /* RESP: AUTH, SELECT, PING; owned (hiredis format) */
        size_t handshake_len;
        unsigned n_handshake;
};

static void node_connect(struct node *n);

static void
backend_report_ready(struct backend *be)
{
        void (*ready)(void *) = be->ready;

        if (ready == NULL)
                return;
        be->ready = NULL;
        ready(be->ready_priv);
}

static void
node_schedule_retry(struct node *n)
{
        double ms;

        if (n->backoff_ms == 0)
                n->backoff_ms = BACKEND_BACKOFF_MIN_MS;
        else if (n->backoff_ms < BACKEND_BACKOFF_MAX_MS)
                n->backoff_ms = n->backoff_ms * 2 > BACKEND_BACKOFF_MAX_MS ? BACKEND_BACKOFF_MAX_MS
                                                                          : n->backoff_ms * 2;
        ms = n->backoff_ms * (0.75 + 0.5 * ((double)random() / RAND_MAX));
        ev_timer_set(&n->retry, ms / 1000.0, 0.);
        ev_timer_start(n->be->loop, &n->retry);
}

static void
node_failed(struct node *n, const char *why)
{
        n->n_failures++;
        /* Log the first failure and then one per backoff step at most, never a flood. */
        if (n->was_up || n->n_failures == 1)
                log_warn("backend", "down", "backend: %s: %s", n->label, why);
        else
                log_debug("backend", "retry_failed", "backend: %s: %s", n->label, why);
        n->was_up = false;
        node_schedule_retry(n);
        backend_report_ready(n->be);
}

static void
node_on_state(struct rconn *rc, enum rconn_event ev, const char *why)
{
        struct node *n = rc->owner;

        if (ev == RCONN_EV_UP) {
                log_info("backend", "up", "backend: %s: connected", n->label);
                n->was_up = true;
                n->n_failures = 0;
                n->backoff_ms = 0;
                backend_report_ready(n->be);
                return;
        }
        node_failed(n, why);
}

static void
node_on_resolved(void *priv, int err, const struct sockaddr *addr, socklen_t len)
{
        struct node *n = priv;
        char why[300];
        int r;

        n->job = NULL;
        if (err != 0) {
                snprintf(why, sizeof(why), "resolve %s: %s", n->addr.host, gai_strerror(err));
                node_failed(n, why);
                return;
        }
        r = rconn_connect(&n->rc, addr, len, n->be->handshake, n->be->handshake_len,
                          n->be->n_handshake, n->be->cfg->connect_timeout_ms);
        if (r < 0) {
                snprintf(why, sizeof(why), "connect: %s", strerror(-r));
                node_failed(n, why);
        }
}

static void
node_connect(struct node *n)
{
        struct sockaddr_storage ss;
        socklen_t len;
        int r;

        if (n->rc.state != RCONN_IDLE || n->job != NULL)
                return;
        r = resolve_literal(&n->addr, &ss, &len);
        if (r == 0) {
                node_on_resolved(n, 0, (struct sockaddr *)&ss, len);
                return;
        }
        /* A name: resolve again on every connect, the address may have moved. */
        r = resolve_start(&n->addr, node_on_resolved, n, &n->job);
        if (r < 0) {
                char why[200];
                snprintf(why, sizeof(why), "resolve: %s", strerror(-r));
                node_failed(n, why);
        }
}

static void
node_on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct node *n = (struct node *)((char *)w - offsetof(struct node, retry));

        node_connect(n);
}

static void
node_init(struct node *n, struct backend *be, const struct config_addr *addr, const char *role)
{
        char a[CONFIG_HOST_MAX + 16];

        memset(n, 0, sizeof(*n));
        n->be = be;
        n->addr = *addr;
        snprintf(n->label, sizeof(n->label), "%s %s", role, config_addr_str(addr, a, sizeof(a)));
        rconn_init(&n->rc, be->loop, node_on_state, n, n->label);
        ev_timer_init(&n->retry, node_on_retry, 0., 0.);
}

static void
node_deinit(struct node *n)
{
        resolve_cancel(n->job);
        n->job = NULL;
        ev_timer_stop(n->be->loop, &n->retry);
        rconn_deinit(&n->rc);
}

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
                argv[0] = "AUTH";
                argv[1] = cfg->password;
                argvlen[0] = 4;
                argvlen[1] = strlen(cfg->password);
                len = redisFormatCommandArgv(&cmd, 2, argv, argvlen);
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

        if (be == NULL)
                return -ENOMEM;
        be->loop = loop;
        be->cfg = cfg;
        if (backend_build_handshake(be) < 0) {
                free(be);
                return -ENOMEM;
        }
        node_init(&be->primary, be, &cfg->primary_addr, "primary");
        *out = be;
        return 0;
}

struct backend *
backend_free(struct backend *be)
{
        if (be == NULL)
                return NULL;
        node_deinit(&be->primary);
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
        node_connect(&be->primary);
}

int
backend_submit(struct backend *be, enum backend_route route, const char *cmd, size_t len,
               unsigned n_replies, rconn_reply_fn fn, void *priv, uint32_t gen)
{
        int r;

        (void)route; /* v0: the primary serves reads and writes */
        r = rconn_send(&be->primary.rc, cmd, len, n_replies, fn, priv, gen);
        if (r == -ENOTCONN)
                return BACKEND_E_UNAVAILABLE;
        return r;
}

bool
backend_is_up(const struct backend *be)
{
        return be->primary.rc.state == RCONN_UP;
}
