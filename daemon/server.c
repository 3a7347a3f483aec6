/* SPDX-License-Identifier: MIT */
/*
 * server: listener, signals, drain, and the per-iteration flush (server.h).
 *
 * The socket is created only once the first connection attempt to Redis
 * has finished (or connect_timeout_ms passed): its appearance means that a
 * request gets a settled answer, served or UNAVAILABLE, never a start-up race.
 *
 * Start-up on the socket path: a live kcached answering there is never
 * disturbed (we refuse to start); a stale socket file left by a crash is
 * removed; any other kind of file is left alone and reported. The socket is
 * bound under umask 0177 and then given socket_mode, so it is never briefly
 * open to everyone.
 *
 * Drain (SIGTERM/SIGINT): stop listening and unlink the path at once, let
 * each connection finish what it has in flight and what it already sent,
 * close connections as they become idle, and at drain_timeout_ms answer
 * whatever remains UNAVAILABLE and stop.
 */
#include "daemon/server.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon/admin.h"
#include "daemon/backend.h"
#include "daemon/cache.h"
#include "daemon/conn.h"
#include "daemon/dispatch.h"
#include "daemon/lease.h"
#include "daemon/near.h"
#include "daemon/log.h"
#include "daemon/rconn.h"
#include "daemon/resolve.h"
#include "daemon/stats.h"

#define SERVER_ACCEPT_BATCH 64

static void server_notify(const char *state);

#define server_of(ptr, member) ((struct server *)((char *)(ptr) - offsetof(struct server, member)))

int
server_prepare_path(const char *path, char *err, size_t errlen)
{
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        struct stat st;
        int fd;

        if (lstat(path, &st) == -1) {
                if (errno == ENOENT)
                        return 0;
                snprintf(err, errlen, "socket %s: %s", path, strerror(errno));
                return -1;
        }
        if (!S_ISSOCK(st.st_mode)) {
                snprintf(err, errlen, "socket %s: exists and is not a socket; not touching it", path);
                return -1;
        }
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd == -1) {
                snprintf(err, errlen, "socket: %s", strerror(errno));
                return -1;
        }
        snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
        if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
                close(fd);
                snprintf(err, errlen, "socket %s is in use by a running kcached; not starting", path);
                return -1;
        }
        close(fd);
        if (errno != ECONNREFUSED) {
                snprintf(err, errlen, "socket %s: probing it: %s", path, strerror(errno));
                return -1;
        }
        /* Nobody listens: a stale file from an earlier run. */
        if (unlink(path) == -1 && errno != ENOENT) {
                snprintf(err, errlen, "socket %s: removing stale file: %s", path, strerror(errno));
                return -1;
        }
        log_info("server", "stale_socket", "server: removed stale socket %s", path);
        return 0;
}

/*
 * The socket's directory, created (0755, parents too) when missing, e.g.
 * /run/kcache outside systemd's RuntimeDirectory. An existing one is left as
 * it is: its owner chose its mode.
 */
static int
server_make_parent(const char *path)
{
        char dir[sizeof(((struct sockaddr_un *)NULL)->sun_path)];
        char *slash;

        snprintf(dir, sizeof(dir), "%s", path);
        slash = strrchr(dir, '/');
        if (slash == NULL || slash == dir)
                return 0;
        *slash = '\0';
        for (char *p = dir + 1; ; p++) {
                char saved = *p;
                if (saved != '/' && saved != '\0')
                        continue;
                *p = '\0';
                if (mkdir(dir, 0755) == -1 && errno != EEXIST)
                        return -1;
                *p = saved;
                if (saved == '\0')
                        break;
        }
        return 0;
}

int
server_bind_unix(const char *path, unsigned mode, char *err, size_t errlen)
{
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        const char *what = "socket";
        mode_t old;
        int fd;

        snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
        fd = -1;
        what = "creating its directory";
        if (server_make_parent(sun.sun_path) < 0)
                goto fail;
        what = "socket";
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd == -1)
                goto fail;
        what = "bind";
        old = umask(0177);
        if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
                umask(old);
                goto fail;
        }
        umask(old);
        what = "chmod";
        if (chmod(sun.sun_path, (mode_t)mode) == -1)
                goto fail_unlink;
        what = "listen";
        if (listen(fd, 1024) == -1)
                goto fail_unlink;
        return fd;
fail_unlink:
        unlink(sun.sun_path);
fail:
        snprintf(err, errlen, "socket %s: %s: %s", sun.sun_path, what, strerror(errno));
        if (fd != -1)
                close(fd);
        return -1;
}

static int
server_listen(struct server *srv, char *err, size_t errlen)
{
        int fd = server_bind_unix(srv->cfg->socket, srv->cfg->socket_mode, err, errlen);

        if (fd == -1)
                return -1;
        /* socket_group: the group app containers run as, with socket_mode 0660. */
        if (srv->cfg->has_client_gid && chown(srv->cfg->socket, (uid_t)-1, srv->cfg->client_gid) == -1) {
                snprintf(err, errlen, "socket %s: chown to group %u: %s", srv->cfg->socket,
                         srv->cfg->client_gid, strerror(errno));
                unlink(srv->cfg->socket);
                close(fd);
                return -1;
        }
        srv->lfd = fd;
        srv->is_listening = true;
        return 0;
}

static void
server_stop_listening(struct server *srv)
{
        if (!srv->is_listening)
                return;
        ev_io_stop(srv->loop, &srv->lio);
        close(srv->lfd);
        srv->lfd = -1;
        unlink(srv->cfg->socket);
        srv->is_listening = false;
}

static void
server_on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
        struct server *srv = server_of(w, lio);

        for (int i = 0; i < SERVER_ACCEPT_BATCH; i++) {
                int fd = accept4(srv->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd == -1) {
                        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                                log_warn("server", "accept", "server: accept: %s", strerror(errno));
                        return;
                }
                conn_accept(srv, fd);
        }
}

/* Once per loop iteration, before blocking: write what this iteration queued. */
static void
server_on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
        struct server *srv = server_of(w, flush);

        /* A client flush can unthrottle it and run buffered requests, which
         * queue Redis commands: repeat until both sides are written. */
        do {
                rconn_flush_all();
                while (srv->dirty != NULL) {
                        struct conn *c = srv->dirty;
                        srv->dirty = c->dirty_next;
                        c->is_dirty = false;
                        (void)conn_flush(c);
                }
        } while (rconn_any_dirty());
        while (srv->dead != NULL) {
                struct conn *c = srv->dead;
                srv->dead = c->next;
                conn_free(c);
        }
}

void
server_check_drained(struct server *srv)
{
        if (srv->is_draining && srv->conns == NULL)
                ev_break(srv->loop, EVBREAK_ALL);
}

static void
server_on_drain_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct server *srv = server_of(w, drain_timer);

        log_warn("server", "drain_timeout", "server: drain_timeout_ms passed with %u client(s) open",
                 srv->n_clients);
        for (struct conn *c = srv->conns; c != NULL; c = c->next)
                dispatch_fail_all(c, "kcached is shutting down");
        for (struct conn *c = srv->conns; c != NULL; c = c->next)
                (void)conn_flush(c); /* best effort: one write each, then we leave */
        while (srv->conns != NULL)
                conn_close(srv->conns, "shutting down");
        ev_break(loop, EVBREAK_ALL);
}

static void
server_on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
        struct server *srv = w->signum == SIGTERM ? server_of(w, sig_term) : server_of(w, sig_int);
        struct conn *c, *next;

        if (srv->is_draining)
                return;
        log_info("server", "drain", "server: signal %d: draining %u client(s)", w->signum,
                 srv->n_clients);
        srv->is_draining = true;
        server_notify("STOPPING=1");
        server_stop_listening(srv);
        ev_timer_set(&srv->drain_timer, srv->cfg->drain_timeout_ms / 1000.0, 0.);
        ev_timer_start(loop, &srv->drain_timer);
        for (c = srv->conns; c != NULL; c = next) {
                next = c->next;
                conn_drain(c);
        }
        server_check_drained(srv);
}

/*
 * systemd's readiness protocol without libsystemd: one datagram to
 * $NOTIFY_SOCKET (a path, or an abstract name starting with '@'). Silent
 * when not run by systemd.
 */
static void
server_notify(const char *state)
{
        const char *path = getenv("NOTIFY_SOCKET");
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        size_t n;
        int fd;

        if (path == NULL || (path[0] != '/' && path[0] != '@') ||
            (n = strlen(path)) >= sizeof(sun.sun_path))
                return;
        memcpy(sun.sun_path, path, n);
        if (sun.sun_path[0] == '@')
                sun.sun_path[0] = '\0';
        fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd == -1)
                return;
        (void)sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sun,
                     (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n));
        close(fd);
}

/* The first Redis attempt finished (or took too long): open the socket. */
static void
server_on_ready(void *priv)
{
        struct server *srv = priv;
        char err[300];

        ev_timer_stop(srv->loop, &srv->ready_timer);
        if (srv->is_listening || srv->is_draining)
                return;
        /* Someone may have taken the path meanwhile; check again, then bind. */
        if (server_prepare_path(srv->cfg->socket, err, sizeof(err)) < 0 ||
            server_listen(srv, err, sizeof(err)) < 0) {
                log_error("server", "listen_failed", "server: %s", err);
                srv->exit_code = 1;
                ev_break(srv->loop, EVBREAK_ALL);
                return;
        }
        ev_io_set(&srv->lio, srv->lfd, EV_READ);
        ev_io_start(srv->loop, &srv->lio);
        log_info("server", "listening", "server: listening on %s", srv->cfg->socket);
        server_notify("READY=1");
}

static void
server_on_ready_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
        server_on_ready(server_of(w, ready_timer));
}

static void
server_set_limits(struct server *srv)
{
        const struct config *cfg = srv->cfg;

        srv->limits.max_bytes = (size_t)cfg->max_request_bytes;
        srv->limits.max_nesting = (unsigned)cfg->max_nesting;
        /* mset's map counts keys and values; room for the envelope and options. */
        srv->limits.max_elems = 2 * (size_t)cfg->max_batch_keys + 64;
}

int
server_reload(struct server *srv, char *msg, size_t len)
{
        if (srv->cfg->path == NULL) {
                snprintf(msg, len, "kcached was started without -c: nothing to reload");
                return -1;
        }
        if (config_reload(srv->cfg, msg, len) < 0) {
                log_warn("server", "reload_refused", "server: reload refused, the running "
                         "configuration stays: %s", msg);
                return -1;
        }
        server_notify("RELOADING=1");
        log_set_level(srv->cfg->log_level);
        server_set_limits(srv);
        cache_reconfigure();
        backend_reconfigure(srv->be);
        log_info("server", "reload", "server: configuration reloaded: %s", msg);
        server_notify("READY=1");
        return 0;
}

static void
server_on_hup(struct ev_loop *loop, ev_signal *w, int revents)
{
        struct server *srv = server_of(w, sig_hup);
        char msg[1100];

        (void)server_reload(srv, msg, sizeof(msg));
}

int
server_init(struct server *srv, struct ev_loop *loop, struct config *cfg, char *err,
            size_t errlen)
{
        memset(srv, 0, sizeof(*srv));
        srv->loop = loop;
        srv->cfg = cfg;
        srv->lfd = -1;
        srv->started = ev_now(loop);
        server_set_limits(srv);
        if (!msgpack_zone_init(&srv->zone, 64 * 1024)) {
                snprintf(err, errlen, "out of memory");
                return -1;
        }
        if (resolve_init(loop) < 0 || backend_new(&srv->be, loop, cfg) < 0) {
                snprintf(err, errlen, "out of memory");
                msgpack_zone_destroy(&srv->zone);
                return -1;
        }
        if (cache_init(srv) < 0 || lease_init(srv) < 0 || near_init(srv) < 0) {
                snprintf(err, errlen, "out of memory");
                goto fail;
        }
        if (strlen(cfg->socket) >= sizeof(((struct sockaddr_un *)NULL)->sun_path)) {
                snprintf(err, errlen, "socket %s: path too long", cfg->socket);
                goto fail;
        }
        /* Refuse early when another kcached serves the path; bind comes later. */
        if (server_prepare_path(cfg->socket, err, errlen) < 0)
                goto fail;
        /* Bound now, not when the client socket opens: `health live` answers during start-up. */
        if (admin_new(&srv->admin, srv, err, errlen) < 0)
                goto fail;
        ev_io_init(&srv->lio, server_on_accept, -1, EV_READ);
        ev_timer_init(&srv->ready_timer, server_on_ready_timer,
                      cfg->connect_timeout_ms / 1000.0 + 1.0, 0.);
        ev_signal_init(&srv->sig_term, server_on_signal, SIGTERM);
        ev_signal_init(&srv->sig_int, server_on_signal, SIGINT);
        ev_signal_init(&srv->sig_hup, server_on_hup, SIGHUP);
        ev_prepare_init(&srv->flush, server_on_prepare);
        ev_timer_init(&srv->drain_timer, server_on_drain_timeout, 0., 0.);
        return 0;
fail:
        srv->admin = admin_free(srv->admin);
        near_deinit();
        lease_deinit();
        cache_deinit();
        srv->be = backend_free(srv->be);
        msgpack_zone_destroy(&srv->zone);
        return -1;
}

int
server_run(struct server *srv)
{
        signal(SIGPIPE, SIG_IGN);
        ev_signal_start(srv->loop, &srv->sig_term);
        ev_signal_start(srv->loop, &srv->sig_int);
        ev_signal_start(srv->loop, &srv->sig_hup);
        ev_prepare_start(srv->loop, &srv->flush);
        ev_timer_start(srv->loop, &srv->ready_timer);
        backend_start(srv->be, server_on_ready, srv);
        ev_run(srv->loop, 0);
        log_info("server", "exit", "server: stopped");
        return srv->exit_code;
}

void
server_deinit(struct server *srv)
{
        server_stop_listening(srv);
        while (srv->conns != NULL)
                conn_close(srv->conns, "shutting down");
        while (srv->dead != NULL) {
                struct conn *c = srv->dead;
                srv->dead = c->next;
                conn_free(c);
        }
        ev_prepare_stop(srv->loop, &srv->flush);
        ev_signal_stop(srv->loop, &srv->sig_term);
        ev_signal_stop(srv->loop, &srv->sig_int);
        ev_signal_stop(srv->loop, &srv->sig_hup);
        ev_timer_stop(srv->loop, &srv->drain_timer);
        ev_timer_stop(srv->loop, &srv->ready_timer);
        srv->admin = admin_free(srv->admin); /* open through the drain, closed at exit */
        near_deinit();
        lease_deinit();
        cache_deinit();
        srv->be = backend_free(srv->be);
        resolve_deinit();
        msgpack_zone_destroy(&srv->zone);
}
