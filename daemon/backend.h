/* SPDX-License-Identifier: MIT */
/*
 * backend: the Redis nodes kcached talks to, their health, and the choice of
 * node for each command. This is the seam between request handling (cache.c)
 * and connections (rconn.c): a caller says whether a command reads or writes
 * and gets exactly one completion, or BACKEND_E_UNAVAILABLE at once when no
 * node can take it (never a wait for a timeout).
 *
 *   backend_call() --pick node--> node pool (least in-flight conn) --> rconn
 *        ^                                                          |
 *        +-- retry a read once elsewhere on conn loss / attempt ----+
 *            timeout / node-class error (-LOADING, -BUSY, ...)
 *
 * Nodes: one primary and any number of replicas, each with a pool of
 * connections, a probe every [health] interval_ms (the primary's probe writes
 * the lag heartbeat, the replicas' probes read it back), and up/down state
 * from consecutive failures and successes of probes and real commands.
 * With [sentinel], the topology comes from Sentinel (sentinel.c) and moves
 * at run time through backend_set_topology().
 */
#ifndef KCACHE_BACKEND_H
#define KCACHE_BACKEND_H

#include <ev.h>
#include <stdbool.h>

#include "daemon/config.h"
#include "daemon/rconn.h"

struct json;
struct node;
struct backend;

enum {
        BACKEND_E_UNAVAILABLE = 1, /* returned: no node can take the command now */
        /* completion err values besides 0 (reply) */
        BACKEND_E_DOWN = RCONN_E_DOWN, /* the node's connection was lost */
        BACKEND_E_READONLY = 10,       /* a write hit a replica: the primary moved */
};

enum backend_route {
        BACKEND_READ = 1,         /* where read_from says */
        BACKEND_WRITE = 2,        /* the primary, never retried */
        BACKEND_READ_PRIMARY = 3, /* a read that must see the primary (read-your-writes) */
};

/*
 * Which pool connection a client last used. A client's requests that are
 * pipelined (sent while earlier ones are in flight) stay on that connection,
 * so Redis sees them in the client's order; otherwise the least loaded
 * connection is taken. Ids, not pointers: nodes come and go with Sentinel.
 */
struct backend_affinity {
        uint64_t node_id;
        int idx;
        bool is_sticky; /* set by the owner: it has other requests in flight */
};

/*
 * One command in flight through the backend, embedded in its owner (a
 * request). It must stay valid until completion or backend_call_cancel():
 * the owner's memory is never freed while a call is active.
 */
struct bcall {
        rconn_reply_fn fn; /* the owner's completion */
        void *priv;        /* opaque, the owner's */
        uint32_t gen;      /* the owner's generation, passed back to fn */
        struct backend *be;  /* ref */
        struct node *node;   /* ref: node of the current attempt */
        struct rconn *rc;    /* ref: the connection carrying the current attempt */
        struct backend_affinity *aff; /* ref, owned by the client connection; may be NULL */
        uint32_t attempt_gen; /* handed to rconn; bumped so stale replies miss */
        unsigned n_replies;
        enum backend_route route;
        bool is_active;
        int n_tries;
        char *cmd; /* copy for a retry (cmd_inline, or owned if longer); NULL: no retry possible */
        size_t len;
        char cmd_inline[160]; /* most reads fit: no allocation per request */
        ev_tstamp sent_at;
        ev_tstamp deadline;
        ev_timer attempt_timer;
};

/* cfg is a ref: it must outlive the backend. */
int backend_new(struct backend **out, struct ev_loop *loop, const struct config *cfg);
struct backend *backend_free(struct backend *be);

/*
 * Starts connecting to every node. ready(priv) is called once, when the first
 * connection attempt to the primary has finished either way (or, with
 * Sentinel, when discovery first finished), so that the server opens its
 * socket only when a request would find a settled state.
 */
void backend_start(struct backend *be, void (*ready)(void *priv), void *priv);

/* Once per bcall before first use. */
void bcall_init(struct bcall *c);

/*
 * Sends a RESP command (n_replies replies' worth; fn sees the last). 0: fn
 * will be called exactly once (err 0 with the reply, BACKEND_E_DOWN, or
 * BACKEND_E_READONLY), unless backend_call_cancel() comes first.
 * BACKEND_E_UNAVAILABLE: no node can take it; fn is not called. -ENOMEM.
 * cmd is copied if needed. deadline is absolute (ev_now time).
 */
int backend_call(struct backend *be, struct bcall *c, enum backend_route route, const char *cmd,
                 size_t len, unsigned n_replies, ev_tstamp deadline,
                 struct backend_affinity *aff, rconn_reply_fn fn, void *priv, uint32_t gen);

/* The owner gave up (deadline): fn will not be called. Safe on idle calls. */
void backend_call_cancel(struct bcall *c);

/* True if some node accepts commands now. */
bool backend_is_up(const struct backend *be);

/* Readiness: 0 ok, 1 degraded, 2 down, with a reason in why. */
int backend_health(struct backend *be, char *why, size_t whylen);

/* The admin socket's `backends` object. */
void backend_write_json(struct backend *be, struct json *j);

struct stats_prom;
/* The admin `metrics` series of every node (kcache_redis_*, labels role and addr). */
void backend_write_metrics(struct backend *be, struct stats_prom *p);

/*
 * Sentinel's view of the topology: moves the primary (its connections are
 * closed and remade; client connections are not touched) and adds/removes
 * replicas. Addresses are IP literals or host names.
 */
void backend_set_topology(struct backend *be, const struct config_addr *primary,
                          const struct config_addr *replicas, int n_replicas);

/*
 * Keeps one subscriber connection to the primary, SUBSCRIBEd to channel
 * (copied), following the primary when it moves and reconnecting when the
 * link drops. fn gets every pub/sub message's payload (valid during the
 * call); up(priv) is called each time the subscription is (re)established,
 * so the caller can re-check what it may have missed.
 */
void backend_subscribe(struct backend *be, const char *channel, size_t len,
                       void (*fn)(void *priv, const char *msg, size_t n), void (*up)(void *priv),
                       void *priv);

/*
 * The configuration changed (reload): follow the static topology (primary,
 * replicas), pool sizes and probe periods. Client connections and requests
 * in flight are not disturbed.
 */
void backend_reconfigure(struct backend *be);

/*
 * The primary's last connected socket address, when it is usable now (for
 * connections kept outside the pool: near-cache tracking). *epoch changes
 * whenever the primary moved, so holders of such connections know to redo
 * them. false when the primary is not usable.
 */
bool backend_primary_sockaddr(const struct backend *be, struct sockaddr_storage *ss,
                              socklen_t *len, uint64_t *epoch);
/* Changes whenever the primary moved. */
uint64_t backend_primary_epoch(const struct backend *be);
/* Handshake (AUTH, SELECT, PING) for such connections; n_cmds replies. */
const char *backend_handshake(const struct backend *be, size_t *len, unsigned *n_cmds);

/* The primary's address as now used (for logs and the admin socket). */
const struct config_addr *backend_primary_addr(const struct backend *be);

#endif
