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
#define CONN_OUT_HIGH     (32u << 20) /* stop reading past this much pending output */

#define conn_of(ptr, member) ((struct conn *)((char *)(ptr) - offsetof(struct conn, member)))

static struct log_limit conn_log_limit;

static void conn_on_read(struct ev_loop *loop, ev_io *w, int revents);
static void conn_on_write(struct ev_loop *loop, ev_io *w, int revents);
static void conn_on_close_timer(struct ev_loop *loop, ev_timer *w, int revents);
static void conn_unthrottle(struct conn *c);
static void conn_on_idle_timer(struct ev_loop *loop, ev_timer *w, int revents);

/*
 * One timer serves both idle_timeout_s (nothing in flight, nothing arriving)
 * and request_read_timeout_ms (a request left half-written). It is armed for
 * the nearer of the two and re-checks the facts when it fires, so activity
 * never touches the timer itself.
 */
static void
conn_arm_idle(struct conn *c)
{
        const struct config *cfg = c->srv->cfg;
        double at = 0;

        if (cfg->idle_timeout_s > 0)
                at = c->last_active + cfg->idle_timeout_s;
        if (cfg->request_read_timeout_ms > 0 && c->partial_since > 0) {
                double t = c->partial_since + cfg->request_read_timeout_ms / 1000.0;
                if (at == 0 || t < at)
                        at = t;
        }
        if (at == 0)
                return;
        ev_timer_stop(c->srv->loop, &c->idle_timer);
        ev_timer_set(&c->idle_timer, at - ev_now(c->srv->loop) > 0.001 ? at - ev_now(c->srv->loop)
                                                                        : 0.001,
                     0.);
        ev_timer_start(c->srv->loop, &c->idle_timer);
}

static void
conn_on_idle_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct conn *c = conn_of(w, idle_timer);
        const struct config *cfg = c->srv->cfg;
        double now = ev_now(loop);

        if (cfg->request_read_timeout_ms > 0 && c->partial_since > 0 &&
            now - c->partial_since >= cfg->request_read_timeout_ms / 1000.0 - 0.0005) {
                stats.clients_closed_slow++;
                conn_close(c, "request left half-written past request_read_timeout_ms");
                return;
        }
        if (cfg->idle_timeout_s > 0 && c->n_inflight == 0 && buf_size(&c->in) == 0 &&
            now - c->last_active >= cfg->idle_timeout_s - 0.0005) {
                stats.clients_closed_idle++;
                conn_close(c, "idle past idle_timeout_s");
                return;
        }
        conn_arm_idle(c);
}

static size_t
conn_out_high(const struct conn *c)
{
        size_t hard = (size_t)c->srv->cfg->max_output_bytes_per_client;

        return hard / 2 < CONN_OUT_HIGH ? hard / 2 : CONN_OUT_HIGH;
}

static bool
conn_over_limits(const struct conn *c)
{
        return c->n_inflight >= (unsigned)c->srv->cfg->max_inflight_per_client ||
               buf_size(&c->out) >= conn_out_high(c);
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

static bool
id_in(uint32_t id, const uint32_t *ids, int n)
{
        for (int i = 0; i < n; i++)
                if (ids[i] == id)
                        return true;
        return false;
}

/*
 * allowed_uids / allowed_gids, checked on the kernel's credentials before a
 * byte is read. Empty lists leave the decision to the socket's mode and
 * group. Root and kcached's own user are always let in.
 */
static bool
conn_peer_allowed(const struct server *srv, int fd, struct ucred *cred)
{
        const struct config *cfg = srv->cfg;
        socklen_t len = sizeof(*cred);

        if (cfg->n_client_uids == 0 && cfg->n_client_gids == 0)
                return true;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, cred, &len) == -1 || len != sizeof(*cred))
                return false;
        return cred->uid == 0 || cred->uid == geteuid() ||
               id_in(cred->uid, cfg->client_uids, cfg->n_client_uids) ||
               id_in(cred->gid, cfg->client_gids, cfg->n_client_gids);
}

static struct log_limit conn_refuse_limit;

/* max_clients: one notification, best effort on a fresh socket, then close. */
static void
conn_refuse_max(struct server *srv, int fd)
{
        struct buf b = BUF_INIT;
        msgpack_packer pk;
        char msg[96];

        snprintf(msg, sizeof(msg), "kcached serves at most %d clients (max_clients)",
                 srv->cfg->max_clients);
        msgpack_packer_init(&pk, &b, buf_msgpack_write);
        if (rpc_pack_error_notify_code(&pk, "TOO_MANY_CLIENTS", msg) == 0)
                (void)send(fd, b.data, b.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        buf_deinit(&b);
        close(fd);
        stats.clients_rejected_max++;
        if (log_ratelimit(&conn_refuse_limit, 5))
                log_warn("conn", "max_clients", "conn: refused a client: %d clients connected "
                         "(max_clients)", srv->n_clients);
}

void
conn_accept(struct server *srv, int fd)
{
        struct ucred cred = {0, 0, 0};
        struct conn *c;

        if (!conn_peer_allowed(srv, fd, &cred)) {
                close(fd);
                stats.clients_refused++;
                if (log_ratelimit(&conn_refuse_limit, 5))
                        log_warn("conn", "refused", "conn: refused a client (pid %ld, uid %ld, gid "
                                 "%ld): not in allowed_uids or allowed_gids",
                                 (long)cred.pid, (long)cred.uid, (long)cred.gid);
                return;
        }
        if (srv->n_clients >= (unsigned)srv->cfg->max_clients) {
                conn_refuse_max(srv, fd);
                return;
        }
        c = calloc(1, sizeof(*c));
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
        ev_timer_init(&c->idle_timer, conn_on_idle_timer, 0., 0.);
        /* ev_time(), not ev_now(): the loop time may be a long iteration old, and
         * an idle clock started in the past would close a new client early. */
        c->last_active = ev_time();
        conn_arm_idle(c);
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
        ev_timer_stop(srv->loop, &c->idle_timer);
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
                if (!c->is_dead) {
                        buf_consume(&c->in, flen);
                        /* A complete request: the half-written clock starts over. */
                        c->partial_since = 0;
                }
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
                if (c->is_throttled) {
                        /* Requests are still buffered behind backpressure: run them
                         * as answers drain, then close (conn_unthrottle). */
                        c->is_eof = true;
                        ev_io_stop(loop, &c->rio);
                        return;
                }
                if ((c->n_inflight > 0 || buf_size(&c->out) > 0) && !c->is_closing) {
                        /* Answers still to come or to send: flush them, then close.
                         * A truncated request left in the buffer has nothing to answer. */
                        buf_clear(&c->in);
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
        c->last_active = ev_now(loop);
        conn_process(c);
        if (!c->is_dead) {
                /* Only a request the client has not finished sending is charged; the
                 * time kcached itself stopped reading (backpressure) is not. */
                bool partial = buf_size(&c->in) > 0 && !c->is_throttled;
                if (partial && c->partial_since == 0)
                        c->partial_since = ev_now(loop);
                else if (!partial)
                        c->partial_since = 0;
                conn_arm_idle(c);
        }
        if (!c->is_dead && c->srv->is_draining)
                conn_drain(c);
}

static void
conn_unthrottle(struct conn *c)
{
        c->is_throttled = false;
        if (c->is_closing || c->is_dead)
                return;
        if (!c->is_eof)
                ev_io_start(c->srv->loop, &c->rio);
        /* Requests that arrived while throttled are already buffered. */
        conn_process(c);
        if (c->is_eof && !c->is_throttled && !c->is_dead) {
                buf_clear(&c->in);
                conn_close_after_flush(c);
        }
}

void
conn_on_request_done(struct conn *c)
{
        if (c->is_dead)
                return;
        c->last_active = ev_now(c->srv->loop);
        /* A client that does not read its answers may not pin memory without bound. */
        if (buf_size(&c->out) > (size_t)c->srv->cfg->max_output_bytes_per_client) {
                stats.clients_closed_output++;
                log_warn("conn", "output_limit", "conn: client %llu: %zu bytes of answers unread "
                         "(max_output_bytes_per_client); closing",
                         (unsigned long long)c->id, buf_size(&c->out));
                conn_close(c, "max_output_bytes_per_client");
                return;
        }
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
