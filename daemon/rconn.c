/* SPDX-License-Identifier: MIT */
/*
 * rconn: one Redis connection on libev (see rconn.h for the flow).
 *
 * Invariants:
 *  - q holds one entry per command handed to the socket or queued in out,
 *    in order; Redis answers in order, so the head owns the next reply.
 *  - Outside IDLE, fd is open and rio is started.
 *  - rconn_close() empties q before reporting DOWN, so every fn is called
 *    exactly once even if the owner reconnects from inside on_state.
 */
#include "daemon/rconn.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/log.h"
#include "daemon/stats.h"

#define RCONN_READ_CHUNK (64 * 1024)
#define RCONN_FEED_SLICE (4 * 1024)

static struct rconn *rconn_dirty_head;

/*
 * Reader guard: hiredis 0.14.1 callocs elements * 8 bytes for an array header
 * before any element arrives (`*2147483647` asks for 16 GiB), and has no
 * bound on a reply's size: it drops each element's bytes from its buffer once
 * parsed, so the buffer alone does not show a reply built from many pieces.
 * Every object the reader creates is counted against the reply being built
 * (struct rconn_guard, the reader's privdata; reset at each reply's root), and
 * refused past the limits by returning NULL, which the reader reports as out
 * of memory: a node failure, named by guard->why. The default functions the
 * reader came with do the work.
 */
static redisReplyObjectFunctions rconn_default_fns;
static long rconn_max_elements = 1 << 20;
static size_t rconn_max_bytes = 512u << 20;

void
rconn_set_limits(long max_elements, size_t max_bytes)
{
        rconn_max_elements = max_elements;
        rconn_max_bytes = max_bytes;
}
static redisReplyObjectFunctions rconn_guarded_fns;

/* Counts n more bytes of the reply task belongs to; false past the limit. */
static bool
rconn_guard_add(const redisReadTask *task, size_t n)
{
        struct rconn_guard *g = task->privdata;

        if (g == NULL)
                return true;
        if (task->parent == NULL)
                g->bytes = 0; /* a new reply: its root comes first (arrays) or alone */
        g->bytes += n;
        if (g->bytes > rconn_max_bytes) {
                g->why = "reply larger than max_reply_bytes";
                return false;
        }
        return true;
}

static void *
rconn_create_array(const redisReadTask *task, int elements)
{
        if (elements < 0 || elements > rconn_max_elements) {
                if (task->privdata != NULL)
                        ((struct rconn_guard *)task->privdata)->why =
                                "array longer than max_reply_elements";
                return NULL;
        }
        if (!rconn_guard_add(task, sizeof(redisReply) + (size_t)elements * sizeof(redisReply *)))
                return NULL;
        return rconn_default_fns.createArray(task, elements);
}

static void *
rconn_create_string(const redisReadTask *task, char *str, size_t len)
{
        if (!rconn_guard_add(task, sizeof(redisReply) + len + 1))
                return NULL;
        return rconn_default_fns.createString(task, str, len);
}

static void *
rconn_create_integer(const redisReadTask *task, long long v)
{
        if (!rconn_guard_add(task, sizeof(redisReply)))
                return NULL;
        return rconn_default_fns.createInteger(task, v);
}

static void *
rconn_create_nil(const redisReadTask *task)
{
        if (!rconn_guard_add(task, sizeof(redisReply)))
                return NULL;
        return rconn_default_fns.createNil(task);
}

static redisReader *
rconn_reader_new(struct rconn_guard *g)
{
        redisReader *r = redisReaderCreate();

        if (r == NULL)
                return NULL;
        if (rconn_default_fns.createArray == NULL) {
                rconn_default_fns = *r->fn;
                rconn_guarded_fns = rconn_default_fns;
                rconn_guarded_fns.createArray = rconn_create_array;
                rconn_guarded_fns.createString = rconn_create_string;
                rconn_guarded_fns.createInteger = rconn_create_integer;
                rconn_guarded_fns.createNil = rconn_create_nil;
        }
        r->fn = &rconn_guarded_fns;
        g->bytes = 0;
        g->why = NULL;
        r->privdata = g;
        return r;
}

bool
rconn_guard_exceeded(const redisReader *r)
{
        const struct rconn_guard *g = r->privdata;

        return g->bytes + (r->len - r->pos) > rconn_max_bytes;
}

redisReader *
rconn_reader_new_for_tests(struct rconn_guard *g)
{
        return rconn_reader_new(g);
}

static void rconn_on_read(struct ev_loop *loop, ev_io *w, int revents);
static void rconn_on_write(struct ev_loop *loop, ev_io *w, int revents);
static void rconn_on_timer(struct ev_loop *loop, ev_timer *w, int revents);

void
rconn_init(struct rconn *rc, struct ev_loop *loop, rconn_state_fn on_state, void *owner,
           const char *name)
{
        memset(rc, 0, sizeof(*rc));
        rc->loop = loop;
        rc->fd = -1;
        rc->on_state = on_state;
        rc->owner = owner;
        buf_init(&rc->out);
        ev_io_init(&rc->rio, rconn_on_read, -1, EV_READ);
        ev_io_init(&rc->wio, rconn_on_write, -1, EV_WRITE);
        ev_timer_init(&rc->timer, rconn_on_timer, 0., 0.);
        snprintf(rc->name, sizeof(rc->name), "%s", name);
}

void
rconn_deinit(struct rconn *rc)
{
        /* Its memory is about to go: it must not stay on the flush list. */
        if (rc->is_dirty) {
                struct rconn **pp = &rconn_dirty_head;
                while (*pp != NULL && *pp != rc)
                        pp = &(*pp)->flush_next;
                if (*pp == rc)
                        *pp = rc->flush_next;
                rc->is_dirty = false;
        }
        rc->on_state = NULL;
        if (rc->state != RCONN_IDLE)
                rconn_close(rc, "shutting down");
        buf_deinit(&rc->out);
        free(rc->q);
        rc->q = NULL;
}

static void
rconn_mark_dirty(struct rconn *rc)
{
        if (rc->is_dirty)
                return;
        rc->is_dirty = true;
        rc->flush_next = rconn_dirty_head;
        rconn_dirty_head = rc;
}

static int
rconn_q_push(struct rconn *rc, rconn_reply_fn fn, void *priv, uint32_t gen, unsigned n_replies)
{
        if (rc->q_len == rc->q_cap) {
                size_t cap = rc->q_cap ? rc->q_cap * 2 : 64;
                struct rconn_pending *q = malloc(cap * sizeof(*q));
                if (q == NULL)
                        return -ENOMEM;
                for (size_t i = 0; i < rc->q_len; i++)
                        q[i] = rc->q[(rc->q_head + i) % rc->q_cap];
                free(rc->q);
                rc->q = q;
                rc->q_cap = cap;
                rc->q_head = 0;
        }
        rc->q[(rc->q_head + rc->q_len) % rc->q_cap] = (struct rconn_pending){fn, priv, gen, n_replies};
        rc->q_len++;
        return 0;
}

int
rconn_connect(struct rconn *rc, const struct sockaddr *addr, socklen_t len, const char *handshake,
              size_t handshake_len, unsigned n_handshake, int timeout_ms)
{
        int fd, r;

        if (rc->state != RCONN_IDLE)
                return -EALREADY;
        fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd == -1)
                return -errno;
        if (addr->sa_family != AF_UNIX) {
                int one = 1;
                (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        rc->reader = rconn_reader_new(&rc->guard);
        if (rc->reader == NULL) {
                close(fd);
                return -ENOMEM;
        }
        buf_clear(&rc->out);
        if (handshake_len > 0 && buf_append(&rc->out, handshake, handshake_len) < 0) {
                redisReaderFree(rc->reader);
                rc->reader = NULL;
                close(fd);
                return -ENOMEM;
        }
        rc->n_handshake = n_handshake;
        rc->fd = fd;
        rc->state = RCONN_CONNECTING;
        ev_io_set(&rc->rio, fd, EV_READ);
        ev_io_set(&rc->wio, fd, EV_WRITE);
        ev_io_start(rc->loop, &rc->rio);
        ev_timer_set(&rc->timer, timeout_ms / 1000.0, 0.);
        ev_timer_start(rc->loop, &rc->timer);

        r = connect(fd, addr, len);
        if (r == -1 && errno != EINPROGRESS) {
                char why[200];
                snprintf(why, sizeof(why), "connect: %s", strerror(errno));
                rconn_close(rc, why);
                return 0; /* reported through on_state, like an asynchronous failure */
        }
        /* Completion (or failure) shows up as writability. */
        ev_io_start(rc->loop, &rc->wio);
        return 0;
}

int
rconn_send(struct rconn *rc, const char *cmd, size_t len, unsigned n_replies, rconn_reply_fn fn,
           void *priv, uint32_t gen)
{
        if (rc->state != RCONN_UP)
                return -ENOTCONN;
        if (buf_append(&rc->out, cmd, len) < 0)
                return -ENOMEM;
        if (rconn_q_push(rc, fn, priv, gen, n_replies) < 0) {
                rc->out.len -= len;
                return -ENOMEM;
        }
        rconn_mark_dirty(rc);
        return 0;
}

static void
rconn_dropped(void *priv, uint32_t gen, redisReply *reply, int err)
{
        stats.late_redis_replies++;
}

void
rconn_forget(struct rconn *rc, void *priv, uint32_t gen)
{
        for (size_t i = 0; i < rc->q_len; i++) {
                struct rconn_pending *p = &rc->q[(rc->q_head + i) % rc->q_cap];
                if (p->priv == priv && p->gen == gen) {
                        p->fn = rconn_dropped;
                        p->priv = NULL;
                }
        }
}

void
rconn_set_push(struct rconn *rc, rconn_push_fn fn, void *priv)
{
        rc->on_push = fn;
        rc->push_priv = priv;
}

void
rconn_close(struct rconn *rc, const char *why)
{
        if (rc->state == RCONN_IDLE)
                return;
        ev_io_stop(rc->loop, &rc->rio);
        ev_io_stop(rc->loop, &rc->wio);
        ev_timer_stop(rc->loop, &rc->timer);
        close(rc->fd);
        rc->fd = -1;
        if (rc->state == RCONN_UP)
                stats.redis_disconnects++;
        rc->state = RCONN_IDLE;
        if (rc->reader != NULL) {
                redisReaderFree(rc->reader);
                rc->reader = NULL;
        }
        buf_clear(&rc->out);
        buf_shrink(&rc->out, 0);
        /* Fail the queue before reporting DOWN: the owner may reconnect from on_state. */
        while (rc->q_len > 0) {
                struct rconn_pending p = rc->q[rc->q_head];
                rc->q_head = (rc->q_head + 1) % rc->q_cap;
                rc->q_len--;
                p.fn(p.priv, p.gen, NULL, RCONN_E_DOWN);
        }
        if (rc->on_state != NULL)
                rc->on_state(rc, RCONN_EV_DOWN, why);
}

static void
rconn_fail_errno(struct rconn *rc, const char *what, int err)
{
        char why[200];

        snprintf(why, sizeof(why), "%s: %s", what, strerror(err));
        rconn_close(rc, why);
}

/* Writes out; on a short write waits for EV_WRITE. 0, or -1 when closed. */
static int
rconn_flush(struct rconn *rc)
{
        while (buf_size(&rc->out) > 0) {
                ssize_t n = write(rc->fd, buf_head(&rc->out), buf_size(&rc->out));
                if (n == -1) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN) {
                                ev_io_start(rc->loop, &rc->wio);
                                return 0;
                        }
                        rconn_fail_errno(rc, "write", errno);
                        return -1;
                }
                buf_consume(&rc->out, (size_t)n);
        }
        ev_io_stop(rc->loop, &rc->wio);
        return 0;
}

void
rconn_flush_all(void)
{
        while (rconn_dirty_head != NULL) {
                struct rconn *rc = rconn_dirty_head;
                rconn_dirty_head = rc->flush_next;
                rc->is_dirty = false;
                if (rc->state == RCONN_UP)
                        (void)rconn_flush(rc);
        }
}

bool
rconn_any_dirty(void)
{
        return rconn_dirty_head != NULL;
}

static void
rconn_on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct rconn *rc = (struct rconn *)((char *)w - offsetof(struct rconn, timer));

        rconn_close(rc, rc->state == RCONN_CONNECTING ? "connect: timed out"
                                                      : "handshake: timed out");
}

static void
rconn_on_write(struct ev_loop *loop, ev_io *w, int revents)
{
        struct rconn *rc = (struct rconn *)((char *)w - offsetof(struct rconn, wio));

        if (rc->state == RCONN_CONNECTING) {
                int err = 0;
                socklen_t len = sizeof(err);
                if (getsockopt(rc->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
                        err = errno;
                if (err != 0) {
                        rconn_fail_errno(rc, "connect", err);
                        return;
                }
                rc->state = RCONN_HANDSHAKE;
                if (rc->n_handshake == 0) {
                        ev_timer_stop(loop, &rc->timer);
                        rc->state = RCONN_UP;
                        stats.redis_connects++;
                        if (rc->on_state != NULL)
                                rc->on_state(rc, RCONN_EV_UP, NULL);
                        if (rc->state != RCONN_UP)
                                return;
                }
        }
        (void)rconn_flush(rc);
}

/* One reply for the queue head (or the handshake). 0, or -1 when closed. */
static int
rconn_dispatch(struct rconn *rc, redisReply *reply)
{
        if (rc->state == RCONN_HANDSHAKE) {
                if (reply->type == REDIS_REPLY_ERROR) {
                        char why[300];
                        snprintf(why, sizeof(why), "handshake: %.*s", (int)reply->len, reply->str);
                        rconn_close(rc, why);
                        return -1;
                }
                if (--rc->n_handshake == 0) {
                        ev_timer_stop(rc->loop, &rc->timer);
                        rc->state = RCONN_UP;
                        stats.redis_connects++;
                        if (rc->on_state != NULL)
                                rc->on_state(rc, RCONN_EV_UP, NULL);
                        if (rc->state != RCONN_UP)
                                return -1;
                }
                return 0;
        }
        if (rc->q_len == 0) {
                if (rc->on_push != NULL) {
                        rc->on_push(rc->push_priv, reply);
                        return rc->state == RCONN_UP ? 0 : -1;
                }
                rconn_close(rc, "protocol: reply without a command");
                return -1;
        }
        struct rconn_pending *p = &rc->q[rc->q_head];
        if (--p->n_replies > 0)
                return 0;
        struct rconn_pending done = *p;
        rc->q_head = (rc->q_head + 1) % rc->q_cap;
        rc->q_len--;
        done.fn(done.priv, done.gen, reply, 0);
        return rc->state == RCONN_UP ? 0 : -1;
}

static void
rconn_on_read(struct ev_loop *loop, ev_io *w, int revents)
{
        struct rconn *rc = (struct rconn *)((char *)w - offsetof(struct rconn, rio));
        char chunk[RCONN_READ_CHUNK];
        ssize_t n;

        if (rc->state == RCONN_CONNECTING)
                return; /* wait for writability to learn the connect result */
        n = read(rc->fd, chunk, sizeof(chunk));
        if (n == 0) {
                rconn_close(rc, "read: connection closed by Redis");
                return;
        }
        if (n == -1) {
                if (errno == EAGAIN || errno == EINTR)
                        return;
                rconn_fail_errno(rc, "read", errno);
                return;
        }
        /*
         * Fed in slices: after each reply, hiredis 0.14 moves what is left of its
         * buffer to the front once 1 KiB is consumed, so a 64 KiB read of 4 KiB
         * replies moved ~32 KiB per reply (10 % of kcached's CPU at 4 KiB x 50 x
         * 16). With 4 KiB slices at most a slice's rest moves.
         */
        for (size_t off = 0; off < (size_t)n; off += RCONN_FEED_SLICE) {
                size_t m = (size_t)n - off < RCONN_FEED_SLICE ? (size_t)n - off : RCONN_FEED_SLICE;
                if (redisReaderFeed(rc->reader, chunk + off, m) != REDIS_OK) {
                        rconn_close(rc, "protocol: reader feed failed");
                        return;
                }
                for (;;) {
                        void *reply = NULL;
                        if (redisReaderGetReply(rc->reader, &reply) != REDIS_OK) {
                                char why[200];
                                snprintf(why, sizeof(why), "protocol: %s (reply refused)",
                                         rc->guard.why != NULL ? rc->guard.why
                                                               : rc->reader->errstr);
                                rconn_close(rc, why);
                                return;
                        }
                        if (reply == NULL)
                                break;
                        rc->guard.bytes = 0;
                        int r = rconn_dispatch(rc, reply);
                        freeReplyObject(reply);
                        if (r < 0)
                                return;
                }
                /* A reply still incomplete: what it built plus what waits in the buffer. */
                if (rconn_guard_exceeded(rc->reader)) {
                        rconn_close(rc, "protocol: reply larger than max_reply_bytes (reply refused)");
                        return;
                }
        }
}
