/* SPDX-License-Identifier: MIT */
/*
 * admin: the operators' socket, a line protocol on a Unix stream socket
 * (`socat - UNIX-CONNECT:PATH`). Owns the listening socket, its path, and the
 * admin connections (at most ADMIN_MAX_CONNS), each with a bounded input line
 * buffer and an output buffer flushed once per loop iteration.
 *
 * One command per line, one answer line per command ("\n"-terminated):
 *   help | health [live|ready] | stats | backends | loglevel LEVEL | quit
 * The socket is bound in admin_new(), before the client socket exists, so
 * that `health live` answers during start-up; it stays open during a drain
 * (an operator may watch one) and closes in admin_free().
 *
 * Peers are trusted no more than clients: lines are bounded (ADMIN_LINE_MAX),
 * a peer's output is bounded (ADMIN_OUT_MAX), and nothing here blocks.
 */
#ifndef KCACHE_ADMIN_H
#define KCACHE_ADMIN_H

#include <stddef.h>

#define ADMIN_LINE_MAX  4096        /* bytes of one command line, without "\r\n" */
#define ADMIN_MAX_CONNS 16          /* more are told so and closed */
#define ADMIN_OUT_PAUSE (64u << 10) /* stop reading commands until answers drain */
#define ADMIN_OUT_MAX   (1u << 20)  /* a peer whose unread answers pass this is closed */

struct server;
struct admin;

/*
 * Binds srv->cfg->admin_socket (NULL or "" disables it: *out is then NULL)
 * with the same stale-socket rules as the client socket, under umask 0177,
 * then chmod admin_socket_mode, and starts accepting on srv->loop.
 * srv is a ref and must outlive the admin.
 * 0 (*out set), or -1 with a one-line reason in err.
 */
int admin_new(struct admin **out, struct server *srv, char *err, size_t errlen);

/* Closes every admin connection and the socket, unlinks the path. NULL-safe; returns NULL. */
struct admin *admin_free(struct admin *a);

#endif
