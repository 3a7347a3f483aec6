/* SPDX-License-Identifier: MIT */
/*
 * resolve: host name resolution off the event loop.
 *
 * getaddrinfo() blocks, and a slow DNS must not freeze every client, so each
 * lookup runs on a short-lived detached thread. Results come back to the loop
 * through one ev_async; the callback then runs on the loop thread. A job can
 * be cancelled at any time from the loop thread: its callback is then never
 * called, and the thread's result is dropped. IP literals and unix: paths
 * never reach a thread (resolve_literal()).
 */
#ifndef KCACHE_RESOLVE_H
#define KCACHE_RESOLVE_H

#include <ev.h>
#include <sys/socket.h>

#include "daemon/config.h"

struct resolve_job;

#define RESOLVE_MAX_ADDRS 8

/* err is 0 or an EAI_* code; addrs (n of them, in getaddrinfo's order) are
 * valid only during the call. */
typedef void (*resolve_cb)(void *priv, int err, const struct sockaddr_storage *addrs,
                           const socklen_t *lens, int n);

int resolve_init(struct ev_loop *loop);
void resolve_deinit(void);

/*
 * Fills addr for unix paths and IP literals without any lookup: 0, or
 * RESOLVE_E_NAME when a is a host name that needs resolve_start().
 */
enum { RESOLVE_E_NAME = 1 };
int resolve_literal(const struct config_addr *a, struct sockaddr_storage *addr, socklen_t *len);

/* Starts a lookup; cb(priv, ...) runs later on the loop. 0 or -errno. */
int resolve_start(const struct config_addr *a, resolve_cb cb, void *priv, struct resolve_job **out);
/* The job's callback will not be called. NULL is accepted. */
void resolve_cancel(struct resolve_job *job);

#endif
