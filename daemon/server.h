/* SPDX-License-Identifier: MIT */
/*
 * server: the event loop's top level. Owns the listening Unix socket, the
 * list of client connections, signal handling and the drain on shutdown, and
 * the once-per-iteration flush (an ev_prepare that writes what requests and
 * Redis commands queued during the iteration: one write per socket).
 *
 *   accept -> conn (read, frame, decode) -> dispatch -> cache handler
 *          -> backend -> rconn ... reply -> req -> conn out buf -> flush
 */
#ifndef KCACHE_SERVER_H
#define KCACHE_SERVER_H

#include <ev.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

#include "daemon/config.h"
#include "scan.h"

struct admin;
struct backend;
struct conn;

struct server {
        struct ev_loop *loop;     /* ref */
        struct config *cfg; /* ref, outlives the server; changed in place by reload */
        struct backend *be;       /* owned */
        struct admin *admin;      /* owned; NULL when [admin] socket is "" */
        int lfd;
        ev_io lio;
        ev_signal sig_term;
        ev_signal sig_int;
        ev_signal sig_hup;
        ev_prepare flush;
        ev_timer drain_timer;
        ev_timer ready_timer; /* listen even if the first Redis attempt hangs (slow DNS) */
        struct conn *conns;  /* owned, doubly linked */
        struct conn *dirty;  /* refs: conns with output to write this iteration */
        struct conn *dead;   /* owned: closed conns freed in the prepare hook */
        unsigned n_clients;
        uint64_t next_conn_id;
        struct scan_limits limits;
        msgpack_zone zone; /* decoded requests live here only while dispatched */
        bool is_draining;
        bool is_listening;
        int exit_code;
        double started;
};

/* 0, or -1 with a reason in err (socket in use, bind failed...). */
int server_init(struct server *srv, struct ev_loop *loop, struct config *cfg, char *err,
                size_t errlen);

/*
 * Re-reads the configuration file and applies what can change live (log
 * level, timeouts, TTLs, compression, limits, backends). Client connections
 * and requests in flight are untouched. 0 with a summary in msg, or -1 with
 * the reason (an invalid file changes nothing). SIGHUP does the same.
 */
int server_reload(struct server *srv, char *msg, size_t len);
void server_deinit(struct server *srv);

/* Runs the loop until drained after SIGTERM/SIGINT. Returns the exit code. */
int server_run(struct server *srv);

/* Called by conn when a drained connection goes away, to end the loop. */
void server_check_drained(struct server *srv);

/*
 * For the client and the admin socket alike. server_prepare_path: 0 when path
 * is free (a stale socket file left by a crash is removed), -1 with err when a
 * live process answers there or the file is not a socket.
 * server_bind_unix: a listening non-blocking socket bound to path under umask
 * 0177 and then chmod mode (never briefly open to everyone); the fd, or -1
 * with err.
 */
int server_prepare_path(const char *path, char *err, size_t errlen);
int server_bind_unix(const char *path, unsigned mode, char *err, size_t errlen);

#endif
