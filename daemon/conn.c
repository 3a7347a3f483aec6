/* SPDX-License-Identifier: MIT */
/*
 * conn: one client connection (see conn.h).
 *
 * Read path: read() into in, then scan_feed() frames as many complete
 * requests as the buffer holds; each is decoded into the server's zone,
 * dispatched, and dropped from in. A scanner error is final for the stream:
 * the bytes after it cannot be trusted to start a new message, so the
 * connection is answered (when a msgid is readable) and closed.
 */
#include "daemon/conn.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "daemon/dispatch.h"
#include "daemon/lease.h"
#include "daemon/log.h"
#include "daemon/server.h"
#include "daemon/stats.h"
#include "rpc.h"

#define CONN_READ_MIN   (64 * 1024)
#define CONN_IDLE_KEEP  (16 * 1024)
#define CONN_CLOSE_WAIT 1.0 /* seconds to flush a final error to a peer that does not read */
/*
 * Backpressure: past either mark kcached stops reading from the client (and
 * stops executing requests already buffered) until answers drain, instead of
 * queueing without bound. The hardening issue makes both configurable.
 */
#define CONN_MAX_INFLIGHT 4096
#define CONN_OUT_HIGH     (32u << 20)

#define conn_of(ptr, member) ((struct conn *)((char *)(ptr) - offsetof(struct conn, member)))

static struct log_limit conn_log_limit;

static void conn_on_read(struct ev_loop *loop, ev_io *w, int revents);
static void conn_on_write(struct ev_loop *loop, ev_io *w, int revents);
static void conn_on_close_timer(struct ev_loop *loop, ev_timer *w, int revents);
static void conn_unthrottle(struct conn *c);

static bool
conn_over_limits(const struct conn *c)
{
        return c->n_inflight >= CONN_MAX_INFLIGHT || buf_size(&c->out) >= CONN_OUT_HIGH;
}

static int
conn_pack_write(void *data, const char *p, size_t n)
{
        struct conn *c = data;

        if (buf_append(&c->out, p, n) < 0) {
                c->pack_failed = true;
                return -1;
        }
        return 0;
}

/* Who connected, as the kernel saw it at connect(): for the admin `clients` and the logs. */
static void
conn_peer_cred(struct conn *c)
{
        struct ucred cred;
        socklen_t len = sizeof(cred);

        if (getsockopt(c->fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1 || len != sizeof(cred))
                return;
        c->has_cred = true;
        c->pid = (int32_t)cred.pid;
        c->uid = (uint32_t)cred.uid;
        c->gid = (uint32_t)cred.gid;
}

void
conn_accept(struct server *srv, int fd)
{
        struct conn *c = calloc(1, sizeof(*c));

        if (c == NULL) {
                close(fd);
                return;
        }
        c->srv = srv;
        c->fd = fd;
        c->id = ++srv->next_conn_id;
        c->accepted = ev_now(srv->loop);
        conn_peer_cred(c);
        buf_init(&c->in);
        buf_init(&c->out);
        scan_reset(&c->scan);
        msgpack_packer_init(&c->pk, c, conn_pack_write);
        ev_io_init(&c->rio, conn_on_read, fd, EV_READ);
        ev_io_init(&c->wio, conn_on_write, fd, EV_WRITE);
        ev_timer_init(&c->close_timer, conn_on_close_timer, CONN_CLOSE_WAIT, 0.);
        ev_io_start(srv->loop, &c->rio);
        c->next = srv->conns;
        if (srv->conns != NULL)
                srv->conns->prev = c;
        srv->conns = c;
        srv->n_clients++;
        stats.clients_accepted++;
        stats.clients_connected++;
        log_debug("conn", "accept", "conn: client %llu connected (pid %ld, uid %ld)",
                  (unsigned long long)c->id, c->has_cred ? (long)c->pid : -1L,
                  c->has_cred ? (long)c->uid : -1L);
}

void
conn_mark_dirty(struct conn *c)
{
        if (c->is_dirty || c->is_dead)
                return;
        c->is_dirty = true;
        c->dirty_next = c->srv->dirty;
        c->srv->dirty = c;
}

void
conn_close(struct conn *c, const char *why)
{
        struct server *srv = c->srv;

        if (c->is_dead)
                return;
        log_debug("conn", "close", "conn: client %llu: %s", (unsigned long long)c->id, why);
        c->is_dead = true;
        ev_io_stop(srv->loop, &c->rio);
        ev_io_stop(srv->loop, &c->wio);
        ev_timer_stop(srv->loop, &c->close_timer);
        close(c->fd);
        c->fd = -1;
        while (c->reqs != NULL)
                req_abandon(c->reqs);
        lease_conn_closed(c->id);
        if (c->prev != NULL)
                c->prev->next = c->next;
        else
                srv->conns = c->next;
        if (c->next != NULL)
                c->next->prev = c->prev;
        c->next = srv->dead;
        c->prev = NULL;
        srv->dead = c;
        srv->n_clients--;
        stats.clients_connected--;
        if (srv->is_draining)
                server_check_drained(srv);
}

void
conn_close_after_flush(struct conn *c)
{
        if (c->is_dead || c->is_closing)
                return;
        c->is_closing = true;
        ev_io_stop(c->srv->loop, &c->rio);
        if (c->n_inflight == 0)
                ev_timer_start(c->srv->loop, &c->close_timer);
        conn_mark_dirty(c);
}

static void
conn_on_close_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
        conn_close(conn_of(w, close_timer), "peer did not read its final reply");
}

int
conn_flush(struct conn *c)
{
        if (c->is_dead)
                return -1;
        if (c->pack_failed) {
                conn_close(c, "out of memory while packing a reply");
                return -1;
        }
        while (buf_size(&c->out) > 0) {
                ssize_t n = send(c->fd, buf_head(&c->out), buf_size(&c->out), MSG_NOSIGNAL);
                if (n == -1) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN) {
                                ev_io_start(c->srv->loop, &c->wio);
                                return 0;
                        }
                        conn_close(c, strerror(errno));
                        return -1;
                }
                buf_consume(&c->out, (size_t)n);
        }
        ev_io_stop(c->srv->loop, &c->wio);
        buf_shrink(&c->out, CONN_IDLE_KEEP);
        if (c->is_throttled && !conn_over_limits(c))
                conn_unthrottle(c);
        if (c->is_closing && c->n_inflight == 0) {
                conn_close(c, "closed after final reply");
                return -1;
        }
        return 0;
}

static void
conn_on_write(struct ev_loop *loop, ev_io *w, int revents)
{
        (void)conn_flush(conn_of(w, wio));
}

/* Protocol error on the stream: answer if we can, then close. */
static void
conn_stream_error(struct conn *c, int scan_err)
{
        uint32_t msgid;
        enum rpc_error code = scan_err == SCAN_E_TOO_LARGE ? RPC_ERR_TOO_LARGE : RPC_ERR_BAD_REQUEST;

        stats.protocol_errors++;
        if (log_ratelimit(&conn_log_limit, 10))
                log_warn("conn", "protocol_error", "conn: client %llu: %s; closing",
                         (unsigned long long)c->id, scan_strerror(scan_err));
        if (scan_err != SCAN_E_INVALID &&
            scan_peek_msgid(buf_head(&c->in), buf_size(&c->in), &msgid) == 0) {
                char msg[128];
                snprintf(msg, sizeof(msg), "%s (limits: max_request_bytes %zu, max_nesting %u)",
                         scan_strerror(scan_err), c->srv->limits.max_bytes,
                         c->srv->limits.max_nesting);
                stats.errors_by_code[code]++;
                rpc_pack_error(&c->pk, msgid, code, msg);
                buf_clear(&c->in);
                conn_close_after_flush(c);
                return;
        }
        buf_clear(&c->in);
        conn_close(c, scan_strerror(scan_err));
}

/* Frames and dispatches every complete request in c->in, unless throttled. */
static void
conn_process(struct conn *c)
{
        struct server *srv = c->srv;

        while (!c->is_dead && !c->is_closing && buf_size(&c->in) > 0) {
                if (conn_over_limits(c)) {
                        if (!c->is_throttled) {
                                c->is_throttled = true;
                                ev_io_stop(srv->loop, &c->rio);
                        }
                        return;
                }
                size_t flen = 0, off = 0;
                msgpack_object obj;
                int r = scan_feed(&c->scan, buf_head(&c->in), buf_size(&c->in), &srv->limits,
                                  &flen);
                if (r == SCAN_E_PARTIAL)
                        return;
                if (r != SCAN_OK) {
                        conn_stream_error(c, r);
                        return;
                }
                if (msgpack_unpack((const char *)buf_head(&c->in), flen, &off, &srv->zone, &obj) !=
                    MSGPACK_UNPACK_SUCCESS) {
                        /* The scanner accepted what msgpack-c refused: treat it as garbage. */
                        msgpack_zone_clear(&srv->zone);
                        conn_stream_error(c, SCAN_E_INVALID);
                        return;
                }
                dispatch_message(c, &obj);
                msgpack_zone_clear(&srv->zone);
                if (!c->is_dead)
                        buf_consume(&c->in, flen);
        }
}

static void
conn_on_read(struct ev_loop *loop, ev_io *w, int revents)
{
        struct conn *c = conn_of(w, rio);
        ssize_t n;

        if (c->in.off > 0 && buf_size(&c->in) < c->in.off)
                buf_compact(&c->in);
        if (buf_reserve(&c->in, CONN_READ_MIN) < 0) {
                conn_close(c, "out of memory");
                return;
        }
        n = recv(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len, 0);
        if (n == 0) {
                /* Requests already complete are still answered: a half-closed
                 * peer may be waiting for them. */
                if (c->n_inflight > 0 && buf_size(&c->in) == 0) {
                        conn_close_after_flush(c);
                        return;
                }
                conn_close(c, "closed by peer");
                return;
        }
        if (n == -1) {
                if (errno == EAGAIN || errno == EINTR)
                        return;
                conn_close(c, strerror(errno));
                return;
        }
        c->in.len += (size_t)n;
        conn_process(c);
        if (!c->is_dead && c->srv->is_draining)
                conn_drain(c);
}

static void
conn_unthrottle(struct conn *c)
{
        c->is_throttled = false;
        if (c->is_closing || c->is_dead)
                return;
        ev_io_start(c->srv->loop, &c->rio);
        /* Requests that arrived while throttled are already buffered. */
        conn_process(c);
}

void
conn_on_request_done(struct conn *c)
{
        if (c->is_dead)
                return;
        conn_mark_dirty(c);
        if (c->is_closing && c->n_inflight == 0) {
                /* half-closed peer: everything answered; flush then close */
                ev_timer_start(c->srv->loop, &c->close_timer);
        }
        if (c->srv->is_draining)
                conn_drain(c);
}

void
conn_drain(struct conn *c)
{
        if (c->is_dead)
                return;
        if (c->n_inflight == 0 && buf_size(&c->in) == 0) {
                if (buf_size(&c->out) == 0) {
                        conn_close(c, "drained");
                        return;
                }
                conn_close_after_flush(c);
        }
}

struct conn *
conn_free(struct conn *c)
{
        if (c == NULL)
                return NULL;
        buf_deinit(&c->in);
        buf_deinit(&c->out);
        free(c);
        return NULL;
}
