/* SPDX-License-Identifier: MIT */
/*
 * admin: the operators' socket, a line protocol on a Unix stream socket
 * (`socat - UNIX-CONNECT:PATH`), and optionally the same protocol, cut down,
 * on a loopback TCP port for scrapers. Owns both listening sockets, the Unix
 * socket's path, and the admin connections (at most ADMIN_MAX_CONNS per
 * listener), each with a bounded input line buffer and an output buffer
 * flushed once per loop iteration.
 *
 * One command per line; the answer is one line ("\n"-terminated), except
 * for `config` and `metrics`, whose answer is several lines followed by a
 * line holding a single "." (neither an INI line nor a Prometheus line can
 * be "." alone, so nothing needs escaping):
 *
 *   help                  the commands this listener serves, on one line
 *   health [live|ready]   live: ok. ready: ok | degraded: WHY | down: WHY
 *   stats                 JSON: uptime, clients, counters, requests by method,
 *                         errors by code, latency per method, cache counters
 *   clients               JSON: the client connections, peer pid/uid, age,
 *                         requests, in flight, buffered bytes
 *   backends              JSON: the Redis nodes
 *   config                the running configuration as INI with each value's
 *                         source; secrets as ***; then "."
 *   metrics               Prometheus text exposition 0.0.4; then "."
 *   flush NS              bumps namespace NS's generation: ok generation=G
 *   reset-stats           zeroes the request and cache counters and the latency
 *                         histograms (not gauges, not the per-node Redis
 *                         counters of `backends`): ok
 *   loglevel LEVEL        debug|info|warn|error: ok
 *   quit                  closes after the answers before it
 * Errors are one line starting "error: ".
 *
 * Access. Unix socket: bound under umask 0177, chmod socket_mode, chown to
 * socket_group; at accept, the peer's credentials (SO_PEERCRED) must name
 * root, kcached's own user, a user in allowed_uids, or a primary group in
 * allowed_gids, else the connection is closed before anything is read and
 * the refusal logged (rate-limited). TCP listener ([admin] listen): no
 * credentials exist, so it serves only help, health, stats, metrics and quit
 * (every container of a pod shares loopback: nothing that changes state is
 * reachable there); any other line answers `error: not allowed on the TCP
 * listener`. It also answers one HTTP/1.x GET per connection, for scrapers
 * that speak only HTTP: /metrics, /stats, /health, /health/live,
 * /health/ready (503 when down).
 *
 * The sockets are bound in admin_new(), before the client socket exists, so
 * that `health live` answers during start-up; they stay open during a drain
 * (an operator may watch one) and close in admin_free().
 *
 * Peers are trusted no more than clients: lines are bounded (ADMIN_LINE_MAX),
 * a peer's output is bounded (ADMIN_OUT_MAX), and nothing here blocks.
 */
#ifndef KCACHE_ADMIN_H
#define KCACHE_ADMIN_H

#include <stddef.h>

#define ADMIN_LINE_MAX  4096        /* bytes of one command line, without "\r\n" */
#define ADMIN_MAX_CONNS 16          /* per listener; more are told so and closed */
#define ADMIN_OUT_PAUSE (64u << 10) /* stop reading commands until answers drain */
#define ADMIN_OUT_MAX   (4u << 20)  /* a peer whose unread answers pass this is closed */

struct server;
struct admin;

/*
 * Binds srv->cfg->admin_socket (NULL or "" disables it) with the same
 * stale-socket rules as the client socket, under umask 0177, then chmod
 * admin_socket_mode and chown admin_socket_group; binds [admin] listen when
 * set; starts accepting on srv->loop. With neither, *out is NULL.
 * srv is a ref and must outlive the admin.
 * 0 (*out set), or -1 with a one-line reason in err.
 */
int admin_new(struct admin **out, struct server *srv, char *err, size_t errlen);

/*
 * Closes every admin connection (a `flush` in flight is cancelled) and the
 * sockets, unlinks the path. NULL-safe; returns NULL.
 */
struct admin *admin_free(struct admin *a);

#endif
