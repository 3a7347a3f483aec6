/* SPDX-License-Identifier: MIT */
/*
 * backend: the Redis nodes kcached talks to, and the choice of node for each
 * command. This is the seam between request handling (cache.c) and
 * connections (rconn.c): callers say whether a command reads or writes, and
 * get exactly one callback, or BACKEND_E_UNAVAILABLE at once when no node can
 * take it (never a wait for a timeout).
 *
 * v0: one connection to the primary, reconnected with capped exponential
 * backoff; host names resolved off the loop on every (re)connect; AUTH and
 * SELECT sent as the connection's handshake. Pools, replicas and failover
 * grow here without changing the interface.
 */
#ifndef KCACHE_BACKEND_H
#define KCACHE_BACKEND_H

#include <ev.h>
#include <stdbool.h>

#include "daemon/config.h"
#include "daemon/rconn.h"

enum { BACKEND_E_UNAVAILABLE = 1 };

enum backend_route { BACKEND_READ = 1, BACKEND_WRITE = 2 };

struct backend;

/* cfg is a ref: it must outlive the backend. */
int backend_new(struct backend **out, struct ev_loop *loop, const struct config *cfg);
struct backend *backend_free(struct backend *be);

/*
 * Starts connecting to every node. ready(priv) is called once, when the first
 * connection attempt to the primary has finished either way, so that the
 * server can open its socket only when a request would find a settled state.
 */
void backend_start(struct backend *be, void (*ready)(void *priv), void *priv);

/*
 * Sends a RESP command (n_replies replies' worth; fn sees the last) to a node
 * fit for route. 0: fn(priv, gen, ...) will be called exactly once, possibly
 * with RCONN_E_DOWN. BACKEND_E_UNAVAILABLE: no node can take it now; fn is
 * not called. -ENOMEM.
 */
int backend_submit(struct backend *be, enum backend_route route, const char *cmd, size_t len,
                   unsigned n_replies, rconn_reply_fn fn, void *priv, uint32_t gen);

/* True if some node accepts commands now. */
bool backend_is_up(const struct backend *be);

#endif
