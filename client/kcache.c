/* SPDX-License-Identifier: MIT */
/*
 * libkcache: one handle = one Unix stream connection to kcached, one call in
 * flight at a time. This file owns the connection life cycle (lazy connect,
 * fork and breakage detection, reconnect), the deadline of each call, request
 * encoding and reply decoding. The wire format and its tables come from proto/.
 *
 *   kc_call()  --forked? too many abandoned replies?-->  kc_close()
 *      |                                                      |
 *      v                                                      v
 *   kc_connect() (lazy) ---> kc_exchange(): send request + read frames until
 *      ^                     our msgid shows up; late replies and notifications
 *      |                     are dropped on the way
 *      +--- retried once if the connection broke and the method is an idempotent
 *           read (or nothing of the request was sent at all)
 *
 * Invariants: kc->in holds unread input whose first byte starts a frame, and
 * kc->scan is the framer state for that frame; both survive a timed-out call
 * so that a late reply is framed and discarded later. kc->fd == -1 means no
 * connection, and then kc->in is empty and kc->n_pending is 0. Nothing here
 * blocks except poll() bounded by the call's deadline.
 *
 * Internal helpers return the public KCACHE_* codes (the documented outcomes
 * the API passes on unchanged) or KC_BROKEN, a private positive code meaning
 * "the connection broke, the caller decides whether to retry".
 */
#include "kcache.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "proto/buf.h"
#include "proto/rpc.h"
#include "proto/scan.h"

#define KC_ERR_MAX 256
/* More abandoned (timed-out) replies than this on one connection: reconnect
 * rather than keep reading answers nobody waits for. */
#define KC_MAX_PENDING 16
/* Bytes asked from recv() at least; the buffer grows beyond when a frame is big. */
#define KC_READ_CHUNK 65536
/* Backoff while the listen backlog of kcached is full (connect: EAGAIN). */
#define KC_BACKLOG_WAIT_MS 5

/* Frame limits for replies: a value can be large, but a hostile or broken
 * server must not make us allocate gigabytes from a header. */
static const struct scan_limits kc_limits = {
        .max_bytes = 256u << 20,
        .max_elems = 4u << 20,
        .max_nesting = 32,
};

enum {
        KC_BROKEN = 1, /* the connection broke; kc->err says how */
};

struct kcache {
        int fd;    /* -1: not connected */
        pid_t pid; /* process that connected fd (fork detection) */
        int timeout_ms;
        uint32_t next_msgid; /* wraps below 2^32 by unsigned arithmetic */
        unsigned n_pending;  /* replies abandoned by timed-out calls, still due */
        bool is_eof;         /* the peer closed (or reset) the connection */
        char *socket_path;
        struct buf in;     /* unread input; starts at a frame boundary */
        struct scan scan;  /* framer state of the frame at in's head */
        struct buf params; /* the current call's params array, packed once */
        struct buf out;    /* the current request: head + params */
        /* facts of the last successful hello */
        char *srv_server;
        char *srv_version;
        int protocol;
        size_t n_limits;
        char **limit_names;
        int64_t *limit_values;
        char err[KC_ERR_MAX];
};

struct kc_call {
        enum rpc_method method;   /* unless raw_name is set */
        const char *raw_name;     /* kcache_call_raw(): the caller's method name */
        bool is_raw_read;         /* kcache_call_raw(): a method known as idempotent */
        int timeout_ms;           /* > 0: this call's deadline instead of the handle's */
        bool is_close_on_timeout; /* do not keep the connection for a late reply */
        int64_t deadline_ns;
        uint32_t msgid;
        size_t sent;         /* bytes of out already sent */
        bool is_close_after; /* reply came before the request was sent whole */
        bool has_reply;      /* up and msg are valid, the frame is at in's head */
        size_t frame_len;
        msgpack_unpacked up; /* our reply; refers into kc->in until consumed */
        struct rpc_msg msg;
};

/* --- small helpers ------------------------------------------------------ */

static const char *
kc_call_name(const struct kc_call *c)
{
        return c->raw_name != NULL ? c->raw_name : rpc_methods[c->method].name;
}

static int
kc_call_timeout_ms(const struct kcache *kc, const struct kc_call *c)
{
        return c->timeout_ms > 0 ? c->timeout_ms : kc->timeout_ms;
}

__attribute__((format(printf, 2, 3))) static void
kc_seterr(struct kcache *kc, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(kc->err, sizeof(kc->err), fmt, ap);
        va_end(ap);
}

/* strerror() may use a static buffer; the GNU strerror_r does not. */
static const char *
kc_errno_str(int e, char *tmp, size_t n)
{
        return strerror_r(e, tmp, n);
}

static int64_t
kc_now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Milliseconds left before the deadline, rounded up so that poll() never
 * returns before it; 0 once it passed. */
static int
kc_remaining_ms(int64_t deadline_ns)
{
        int64_t left = deadline_ns - kc_now_ns();

        if (left <= 0)
                return 0;
        left = (left + 999999) / 1000000;
        return left > INT_MAX ? INT_MAX : (int)left;
}

static char *
kc_strndup(const char *p, size_t n)
{
        char *s = malloc(n + 1);

        if (s == NULL)
                return NULL;
        memcpy(s, p, n);
        s[n] = '\0';
        return s;
}

/* Forgets the connection. Only close(): after fork() the socket is shared
 * with the parent, and anything sent or shut down would break its calls. */
static void
kc_close(struct kcache *kc)
{
        if (kc->fd != -1)
                close(kc->fd);
        kc->fd = -1;
        kc->is_eof = false;
        kc->n_pending = 0;
        buf_clear(&kc->in);
        scan_reset(&kc->scan);
}

/* --- connecting --------------------------------------------------------- */

static int
kc_connect_fail(struct kcache *kc, int fd, int e)
{
        char tmp[128];

        close(fd);
        kc_seterr(kc, "connect to %s: %s", kc->socket_path, kc_errno_str(e, tmp, sizeof(tmp)));
        return KCACHE_E_CONNECT;
}

static int
kc_connect(struct kcache *kc, int64_t deadline_ns, int timeout_ms)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        char tmp[128];
        int fd;

        /* kcache_new() checked that the path fits */
        memcpy(sa.sun_path, kc->socket_path, strlen(kc->socket_path) + 1);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd == -1) {
                int e = errno;

                kc_seterr(kc, "socket: %s", kc_errno_str(e, tmp, sizeof(tmp)));
                return e == ENOMEM || e == ENOBUFS ? KCACHE_E_NOMEM : KCACHE_E_CONNECT;
        }
        for (;;) {
                struct pollfd pfd = {.fd = fd, .events = POLLOUT};
                socklen_t elen = sizeof(int);
                int e, ms, r;

                if (connect(fd, (const struct sockaddr *)&sa, sizeof(sa)) == 0)
                        break;
                e = errno;
                ms = kc_remaining_ms(deadline_ns);
                if (e == EAGAIN) {
                        /* AF_UNIX: the backlog is full and nothing is in
                         * progress, so there is nothing to poll for; wait a
                         * little and try again within the deadline. */
                        if (ms == 0)
                                goto timeout;
                        poll(NULL, 0, ms < KC_BACKLOG_WAIT_MS ? ms : KC_BACKLOG_WAIT_MS);
                        continue;
                }
                if (e != EINPROGRESS && e != EINTR)
                        return kc_connect_fail(kc, fd, e);
                do {
                        r = poll(&pfd, 1, kc_remaining_ms(deadline_ns));
                } while (r == -1 && errno == EINTR);
                if (r == 0)
                        goto timeout;
                if (r == -1)
                        return kc_connect_fail(kc, fd, errno);
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &elen) == -1)
                        return kc_connect_fail(kc, fd, errno);
                if (e != 0)
                        return kc_connect_fail(kc, fd, e);
                break;
        }
        kc->fd = fd;
        kc->pid = getpid();
        kc->is_eof = false;
        kc->n_pending = 0;
        buf_clear(&kc->in);
        scan_reset(&kc->scan);
        return KCACHE_OK;

timeout:
        close(fd);
        kc_seterr(kc, "connect to %s: timed out after %d ms", kc->socket_path, timeout_ms);
        return KCACHE_E_TIMEOUT;
}

/* --- reading and framing ------------------------------------------------ */

enum { KC_READ_DATA, KC_READ_AGAIN, KC_READ_EOF };

/* One recv() into kc->in. KC_READ_* or KCACHE_E_NOMEM/KCACHE_E_IO. */
static int
kc_read_some(struct kcache *kc)
{
        char tmp[128];
        ssize_t n;

        if (kc->in.off > 0)
                buf_compact(&kc->in);
        if (buf_reserve(&kc->in, KC_READ_CHUNK) < 0) {
                kc_seterr(kc, "out of memory reading a reply");
                return KCACHE_E_NOMEM;
        }
        do {
                n = recv(kc->fd, kc->in.data + kc->in.len, kc->in.cap - kc->in.len, 0);
        } while (n == -1 && errno == EINTR);
        if (n > 0) {
                kc->in.len += (size_t)n;
                return KC_READ_DATA;
        }
        if (n == 0) {
                kc->is_eof = true;
                kc_seterr(kc, "kcached closed the connection");
                return KC_READ_EOF;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK)
                return KC_READ_AGAIN;
        if (errno == ECONNRESET) {
                kc->is_eof = true;
                kc_seterr(kc, "recv: %s", kc_errno_str(errno, tmp, sizeof(tmp)));
                return KC_READ_EOF;
        }
        kc_seterr(kc, "recv: %s", kc_errno_str(errno, tmp, sizeof(tmp)));
        return KCACHE_E_IO;
}

/*
 * Frames and classifies what kc->in holds. Notifications and replies to other
 * msgids (late replies of timed-out calls) are dropped. Stops at the reply to
 * c->msgid and leaves it unconsumed in kc->in, decoded into c->up/c->msg: 1.
 * Otherwise 0 when the input is used up (a partial frame may remain), or
 * KCACHE_E_PROTOCOL/KCACHE_E_NOMEM, after which the stream cannot be trusted and the caller closes
 * it.
 */
static int
kc_scan_input(struct kcache *kc, struct kc_call *c)
{
        while (buf_size(&kc->in) > 0) {
                const char *why = NULL;
                msgpack_unpacked up;
                struct rpc_msg m;
                size_t flen = 0, off = 0;
                int r;

                r = scan_feed(&kc->scan, buf_head(&kc->in), buf_size(&kc->in), &kc_limits, &flen);
                if (r == SCAN_E_PARTIAL)
                        return 0;
                if (r != SCAN_OK) {
                        kc_seterr(kc, "kcached sent a bad frame: %s", scan_strerror(r));
                        return KCACHE_E_PROTOCOL;
                }
                msgpack_unpacked_init(&up);
                r = msgpack_unpack_next(&up, (const char *)buf_head(&kc->in), flen, &off);
                if (r == MSGPACK_UNPACK_NOMEM_ERROR) {
                        msgpack_unpacked_destroy(&up);
                        kc_seterr(kc, "out of memory decoding a reply");
                        return KCACHE_E_NOMEM;
                }
                if (r != MSGPACK_UNPACK_SUCCESS || off != flen) {
                        msgpack_unpacked_destroy(&up);
                        kc_seterr(kc, "kcached sent a frame that does not decode");
                        return KCACHE_E_PROTOCOL;
                }
                if (rpc_parse(&up.data, &m, &why) != RPC_OK || m.type == RPC_REQUEST) {
                        msgpack_unpacked_destroy(&up);
                        kc_seterr(kc, "kcached sent a bad message: %s",
                                  why != NULL ? why : "a request");
                        return KCACHE_E_PROTOCOL;
                }
                if (m.type == RPC_RESPONSE && m.msgid == c->msgid) {
                        /* m points into up's zone and up into kc->in: both
                         * stay put until kc_call_end() consumes the frame. */
                        c->up = up;
                        c->msg = m;
                        c->frame_len = flen;
                        c->has_reply = true;
                        return 1;
                }
                if (m.type == RPC_RESPONSE && kc->n_pending > 0)
                        kc->n_pending--;
                msgpack_unpacked_destroy(&up);
                buf_consume(&kc->in, flen);
        }
        return 0;
}

/* --- one request/reply exchange ------------------------------------------ */

static int
kc_build_request(struct kcache *kc, struct kc_call *c)
{
        msgpack_packer pk;

        buf_clear(&kc->out);
        msgpack_packer_init(&pk, &kc->out, buf_msgpack_write);
        if (rpc_pack_request_head(&pk, c->msgid, kc_call_name(c)) != 0 ||
            buf_append(&kc->out, buf_head(&kc->params), buf_size(&kc->params)) < 0) {
                kc_seterr(kc, "out of memory encoding the request");
                return KCACHE_E_NOMEM;
        }
        return KCACHE_OK;
}

static int
kc_timeout(struct kcache *kc, struct kc_call *c)
{
        if (c->is_close_on_timeout) {
                /* get_or_set: kcached ties a lease to the connection it was
                 * granted on. A late {"lease"} nobody reads would block the
                 * key for lease_ms; closing passes it on to a waiter now. */
                kc_close(kc);
        } else if (c->sent == buf_size(&kc->out)) {
                /* Keep the connection: the reply is due later and will be
                 * recognised by its msgid and dropped. */
                kc->n_pending++;
        } else if (c->sent > 0) {
                /* Half a request on the wire cannot be taken back. */
                kc_close(kc);
        }
        kc_seterr(kc, "%s: no reply from kcached within %d ms", kc_call_name(c),
                  kc_call_timeout_ms(kc, c));
        return KCACHE_E_TIMEOUT;
}

/*
 * Sends kc->out and reads until the reply to c->msgid arrives (c->has_reply),
 * the deadline passes, or the connection breaks. Reads while sending too, so
 * that an early error reply to a big request is seen, and after a failed send
 * reads what is already there before reporting the break. KCACHE_OK, KC_BROKEN
 * (c->sent tells whether anything went out), or a KCACHE_E_* with the
 * connection already closed when it cannot be reused.
 */
static int
kc_exchange(struct kcache *kc, struct kc_call *c)
{
        const size_t total = buf_size(&kc->out);
        bool is_send_broken = false;
        char tmp[128];

        c->sent = 0;
        for (;;) {
                struct pollfd pfd = {.fd = kc->fd, .events = POLLIN};
                int r, ms;

                r = kc_scan_input(kc, c);
                if (r < 0) {
                        kc_close(kc);
                        return r;
                }
                if (r == 1) {
                        c->is_close_after = c->sent < total || is_send_broken;
                        return KCACHE_OK;
                }
                if (kc->is_eof)
                        return KC_BROKEN;
                if (!is_send_broken && c->sent < total) {
                        ssize_t n = send(kc->fd, buf_head(&kc->out) + c->sent, total - c->sent,
                                         MSG_NOSIGNAL);

                        if (n >= 0) {
                                c->sent += (size_t)n;
                        } else if (errno == EPIPE || errno == ECONNRESET) {
                                /* The peer is gone, but it may have answered
                                 * first (an error for a too large request):
                                 * read what is left before giving up. */
                                kc_seterr(kc, "send: %s", kc_errno_str(errno, tmp, sizeof(tmp)));
                                is_send_broken = true;
                        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                                kc_seterr(kc, "send: %s", kc_errno_str(errno, tmp, sizeof(tmp)));
                                kc_close(kc);
                                return KCACHE_E_IO;
                        }
                }
                if (is_send_broken) {
                        /* Take what already arrived, without waiting: a peer
                         * that only shut its reading side sends no EOF. */
                        r = kc_read_some(kc);
                        if (r < 0) {
                                kc_close(kc);
                                return r;
                        }
                        if (r == KC_READ_AGAIN)
                                return KC_BROKEN;
                        continue;
                }
                if (c->sent < total)
                        pfd.events |= POLLOUT;
                ms = kc_remaining_ms(c->deadline_ns);
                if (ms == 0)
                        return kc_timeout(kc, c);
                r = poll(&pfd, 1, ms);
                if (r == -1 && errno == EINTR)
                        continue;
                if (r == -1) {
                        kc_seterr(kc, "poll: %s", kc_errno_str(errno, tmp, sizeof(tmp)));
                        kc_close(kc);
                        return KCACHE_E_IO;
                }
                if (r == 0)
                        return kc_timeout(kc, c);
                if (pfd.revents & POLLNVAL) {
                        kc_seterr(kc, "poll: the socket is not open");
                        kc->fd = -1; /* not ours any more: do not close it */
                        kc_close(kc);
                        return KCACHE_E_IO;
                }
                if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
                        r = kc_read_some(kc);
                        if (r < 0) {
                                kc_close(kc);
                                return r;
                        }
                        /* EOF: the loop frames what arrived, then reports it */
                }
        }
}

/*
 * Runs c->method with kc->params. KCACHE_OK with the reply in c (the caller
 * decodes it, then calls kc_call_end()), or an error with kc->err set.
 */
static int
kc_call(struct kcache *kc, struct kc_call *c)
{
        const bool is_idempotent =
                c->raw_name != NULL
                        ? c->is_raw_read
                        : (rpc_methods[c->method].flags & (KC_M_READ | KC_M_LOCAL)) != 0;
        const int timeout_ms = kc_call_timeout_ms(kc, c);
        bool is_retried = false;

        c->deadline_ns = kc_now_ns() + (int64_t)timeout_ms * 1000000;
        c->has_reply = false;
        c->is_close_after = false;
        for (;;) {
                int r;

                if (kc->fd != -1 && kc->pid != getpid())
                        kc_close(kc); /* inherited from the parent: never use it */
                if (kc->fd != -1 && kc->n_pending > KC_MAX_PENDING)
                        kc_close(kc);
                if (kc->fd == -1) {
                        r = kc_connect(kc, c->deadline_ns, timeout_ms);
                        if (r != KCACHE_OK)
                                return r;
                }
                c->msgid = kc->next_msgid++;
                r = kc_build_request(kc, c);
                if (r != KCACHE_OK)
                        return r;
                r = kc_exchange(kc, c);
                if (r != KC_BROKEN)
                        return r;
                kc_close(kc);
                /* A write that never left is not applied, so it may go again. */
                if (!is_retried && (is_idempotent || c->sent == 0)) {
                        is_retried = true;
                        continue;
                }
                {
                        char why[KC_ERR_MAX];

                        memcpy(why, kc->err, sizeof(why));
                        kc_seterr(kc, "%s: connection to %s broke: %s", kc_call_name(c),
                                  kc->socket_path, why);
                }
                return KCACHE_E_IO;
        }
}

static void
kc_call_end(struct kcache *kc, struct kc_call *c)
{
        if (!c->has_reply)
                return;
        msgpack_unpacked_destroy(&c->up);
        buf_consume(&kc->in, c->frame_len);
        c->has_reply = false;
        if (c->is_close_after)
                kc_close(kc);
}

/* --- decoding ----------------------------------------------------------- */

static const int kc_error_codes[RPC_ERR_COUNT] = {
        [RPC_ERR_BAD_REQUEST] = KCACHE_E_BAD_REQUEST,
        [RPC_ERR_NO_METHOD] = KCACHE_E_NO_METHOD,
        [RPC_ERR_TOO_LARGE] = KCACHE_E_TOO_LARGE,
        [RPC_ERR_UNAVAILABLE] = KCACHE_E_UNAVAILABLE,
        [RPC_ERR_TIMEOUT] = KCACHE_E_TIMEOUT,
        [RPC_ERR_BACKEND] = KCACHE_E_BACKEND,
        [RPC_ERR_INTERNAL] = KCACHE_E_INTERNAL,
        [RPC_ERR_LEASE_INVALID] = KCACHE_E_LEASE_INVALID,
};

static bool
kc_key_is(const msgpack_object *o, const char *name)
{
        const char *p;
        size_t n;

        return rpc_obj_bytes(o, &p, &n) && n == strlen(name) && memcmp(p, name, n) == 0;
}

static const msgpack_object *
kc_map_get(const msgpack_object *map, const char *name)
{
        for (uint32_t i = 0; i < map->via.map.size; i++)
                if (kc_key_is(&map->via.map.ptr[i].key, name))
                        return &map->via.map.ptr[i].val;
        return NULL;
}

static bool
kc_obj_int(const msgpack_object *o, int64_t *v)
{
        if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) {
                *v = (int64_t)o->via.u64;
                return true;
        }
        if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
                *v = o->via.i64;
                return true;
        }
        return false;
}

/* Copies a server string for kc->err: bounded, control bytes replaced, so a
 * CLI can print it as one line. */
static void
kc_copy_printable(char *dst, size_t cap, const char *p, size_t n)
{
        size_t i;

        for (i = 0; i < n && i + 1 < cap; i++) {
                unsigned char ch = (unsigned char)p[i];

                dst[i] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
        }
        dst[i] = '\0';
}

/* An error reply -> its KCACHE_E_* with the message in kc->err. */
static int
kc_server_error(struct kcache *kc, const msgpack_object *err)
{
        const msgpack_object *code_o, *msg_o;
        const char *code = "", *msg = "";
        size_t code_len = 0, msg_len = 0;
        char code_s[64], msg_s[KC_ERR_MAX];
        int e;

        if (err->type != MSGPACK_OBJECT_MAP || (code_o = kc_map_get(err, "code")) == NULL ||
            !rpc_obj_bytes(code_o, &code, &code_len)) {
                kc_seterr(kc, "kcached sent an error without a code");
                return KCACHE_E_PROTOCOL;
        }
        msg_o = kc_map_get(err, "message");
        if (msg_o != NULL && !rpc_obj_bytes(msg_o, &msg, &msg_len))
                msg_len = 0;
        kc_copy_printable(msg_s, sizeof(msg_s), msg, msg_len);
        e = rpc_error_find(code, code_len);
        if (e >= 0 && e < RPC_ERR_COUNT && kc_error_codes[e] != 0) {
                kc_seterr(kc, "%s", msg_s);
                return kc_error_codes[e];
        }
        /* A code newer than this library: keep its name in the detail. */
        kc_copy_printable(code_s, sizeof(code_s), code, code_len);
        kc_seterr(kc, "%s: %s", code_s, msg_s);
        return KCACHE_E_SERVER;
}

/* Runs the call and hands out the result object (valid until kc_call_end()). */
static int
kc_run(struct kcache *kc, struct kc_call *c, const msgpack_object **result)
{
        int r = kc_call(kc, c);

        if (r != KCACHE_OK)
                return r;
        if (c->msg.error->type != MSGPACK_OBJECT_NIL) {
                r = kc_server_error(kc, c->msg.error);
                kc_call_end(kc, c);
                return r;
        }
        *result = c->msg.result;
        return KCACHE_OK;
}

/* A well-framed reply of the wrong shape: the server is not what we expect,
 * so its connection is not reused either. */
static int
kc_bad_result(struct kcache *kc, struct kc_call *c, const char *expected)
{
        c->is_close_after = true;
        kc_seterr(kc, "%s: kcached answered something other than %s", kc_call_name(c), expected);
        return KCACHE_E_PROTOCOL;
}

/* Finishes a call whose result is an integer. */
static int
kc_int_result(struct kcache *kc, struct kc_call *c, int64_t *out)
{
        const msgpack_object *res;
        int64_t v;
        int r = kc_run(kc, c, &res);

        if (r != KCACHE_OK)
                return r;
        if (kc_obj_int(res, &v)) {
                if (out != NULL)
                        *out = v;
        } else {
                r = kc_bad_result(kc, c, "an integer");
        }
        kc_call_end(kc, c);
        return r;
}

/* Finishes a call whose result is `true`. */
static int
kc_true_result(struct kcache *kc, struct kc_call *c)
{
        const msgpack_object *res;
        int r = kc_run(kc, c, &res);

        if (r != KCACHE_OK)
                return r;
        if (res->type != MSGPACK_OBJECT_BOOLEAN || !res->via.boolean)
                r = kc_bad_result(kc, c, "true");
        kc_call_end(kc, c);
        return r;
}

/* A malloc()ed NUL-terminated copy of a value (bin, or str from a lenient server). */
static int
kc_copy_value(struct kcache *kc, const msgpack_object *o, void **val, size_t *len)
{
        const char *p;
        size_t n;
        char *v;

        if (!rpc_obj_bytes(o, &p, &n))
                return KCACHE_E_PROTOCOL;
        v = kc_strndup(p, n);
        if (v == NULL) {
                kc_seterr(kc, "out of memory for a %zu byte value", n);
                return KCACHE_E_NOMEM;
        }
        *val = v;
        *len = n;
        return KCACHE_OK;
}

/* --- packing ------------------------------------------------------------ */

/* Starts kc->params; returns the packer writing into it. */
static void
kc_params_start(struct kcache *kc, msgpack_packer *pk)
{
        buf_clear(&kc->params);
        msgpack_packer_init(pk, &kc->params, buf_msgpack_write);
}

static int
kc_pack_nomem(struct kcache *kc)
{
        kc_seterr(kc, "out of memory encoding the request");
        return KCACHE_E_NOMEM;
}

/* The options of o that are set, as KC_OPT_* bits (options.def order). */
static unsigned
kc_opts_present(const struct kcache_call_opts *o)
{
        unsigned m = 0;

        if (o == NULL)
                return 0;
        if (o->ttl_s > 0)
                m |= KC_OPT_ttl;
        if (o->consistency != NULL)
                m |= KC_OPT_consistency;
        if (o->ttl_ms > 0)
                m |= KC_OPT_ttl_ms;
        if (o->stale_ttl_s > 0)
                m |= KC_OPT_stale_ttl;
        if (o->stale_ttl_ms > 0)
                m |= KC_OPT_stale_ttl_ms;
        if (o->ns != NULL)
                m |= KC_OPT_ns;
        if (o->schema != NULL)
                m |= KC_OPT_schema;
        if (o->n_tags > 0)
                m |= KC_OPT_tags;
        if (o->field != NULL)
                m |= KC_OPT_field;
        if (o->lease_ms > 0)
                m |= KC_OPT_lease_ms;
        if (o->wait_ms > 0)
                m |= KC_OPT_wait_ms;
        return m;
}

/*
 * Checks what kcached cannot tell apart from "not set" or would only reject
 * after a round trip, and returns the options to send: those set that the
 * call's method accepts (methods.def), so that one struct can serve several
 * methods. KCACHE_OK or KCACHE_E_ARG.
 */
static int
kc_opts_prepare(struct kcache *kc, const struct kc_call *c, const struct kcache_call_opts *o,
                unsigned *mask)
{
        const char *m = kc_call_name(c);

        *mask = 0;
        if (o == NULL)
                return KCACHE_OK;
        if (o->ttl_s < 0 || o->ttl_ms < 0 || o->stale_ttl_s < 0 || o->stale_ttl_ms < 0 ||
            o->lease_ms < 0 || o->wait_ms < 0) {
                kc_seterr(kc, "%s: a negative ttl, stale ttl, lease_ms or wait_ms", m);
                return KCACHE_E_ARG;
        }
        if ((o->ttl_s > 0 && o->ttl_ms > 0) || (o->stale_ttl_s > 0 && o->stale_ttl_ms > 0)) {
                kc_seterr(kc, "%s: a ttl in seconds and in milliseconds at once", m);
                return KCACHE_E_ARG;
        }
        if ((o->schema == NULL && o->schema_len > 0) || o->schema_len > UINT32_MAX ||
            (o->field == NULL && o->field_len > 0) || o->field_len > UINT32_MAX) {
                kc_seterr(kc, "%s: invalid schema or field", m);
                return KCACHE_E_ARG;
        }
        if (o->n_tags > UINT32_MAX || (o->n_tags > 0 && o->tags == NULL)) {
                kc_seterr(kc, "%s: invalid tag list", m);
                return KCACHE_E_ARG;
        }
        for (size_t i = 0; i < o->n_tags; i++) {
                if (o->tags[i] == NULL) {
                        kc_seterr(kc, "%s: tag %zu is NULL", m, i);
                        return KCACHE_E_ARG;
                }
        }
        *mask = kc_opts_present(o) & rpc_methods[c->method].opts;
        return KCACHE_OK;
}

/* Packs the trailing options map: the options in mask, in table order.
 * Nothing when mask is 0 (the request then looks as it did before options). */
static int
kc_pack_opts(msgpack_packer *pk, const struct kcache_call_opts *o, unsigned mask)
{
        uint32_t n = 0;

        if (mask == 0)
                return 0;
        for (int i = 0; i < RPC_OPT_COUNT; i++)
                n += (mask & KC_OPT_BIT(i)) != 0;
        if (msgpack_pack_map(pk, n))
                return -1;
        for (int i = 0; i < RPC_OPT_COUNT; i++) {
                int r;

                if (!(mask & KC_OPT_BIT(i)))
                        continue;
                if (rpc_pack_str(pk, rpc_options[i].name))
                        return -1;
                switch (i) {
                case RPC_OPT_ttl:
                        r = msgpack_pack_int64(pk, o->ttl_s);
                        break;
                case RPC_OPT_consistency:
                        r = rpc_pack_str(pk, o->consistency);
                        break;
                case RPC_OPT_ttl_ms:
                        r = msgpack_pack_int64(pk, o->ttl_ms);
                        break;
                case RPC_OPT_stale_ttl:
                        r = msgpack_pack_int64(pk, o->stale_ttl_s);
                        break;
                case RPC_OPT_stale_ttl_ms:
                        r = msgpack_pack_int64(pk, o->stale_ttl_ms);
                        break;
                case RPC_OPT_ns:
                        r = rpc_pack_str(pk, o->ns);
                        break;
                case RPC_OPT_schema:
                        r = rpc_pack_bin(pk, o->schema, o->schema_len);
                        break;
                case RPC_OPT_tags:
                        r = msgpack_pack_array(pk, (uint32_t)o->n_tags);
                        for (size_t t = 0; r == 0 && t < o->n_tags; t++)
                                r = rpc_pack_str(pk, o->tags[t]);
                        break;
                case RPC_OPT_field:
                        r = rpc_pack_bin(pk, o->field, o->field_len);
                        break;
                case RPC_OPT_lease_ms:
                        r = msgpack_pack_int64(pk, o->lease_ms);
                        break;
                case RPC_OPT_wait_ms:
                        r = msgpack_pack_int64(pk, o->wait_ms);
                        break;
                default:
                        r = -1; /* not in kc_opts_present(): cannot happen */
                        break;
                }
                if (r)
                        return -1;
        }
        return 0;
}

static int
kc_check_bytes(struct kcache *kc, const void *p, size_t n, const char *what)
{
        if ((p == NULL && n > 0) || n > UINT32_MAX) {
                kc_seterr(kc, "invalid %s", what);
                return KCACHE_E_ARG;
        }
        return KCACHE_OK;
}

static int
kc_check_keys(struct kcache *kc, size_t n, const void *const *keys, const size_t *klens)
{
        if (n > UINT32_MAX || (n > 0 && (keys == NULL || klens == NULL))) {
                kc_seterr(kc, "invalid key list");
                return KCACHE_E_ARG;
        }
        for (size_t i = 0; i < n; i++)
                if (kc_check_bytes(kc, keys[i], klens[i], "key") != KCACHE_OK)
                        return KCACHE_E_ARG;
        return KCACHE_OK;
}

static int
kc_check_str(struct kcache *kc, const char *s, const char *what)
{
        if (s == NULL || strlen(s) > UINT32_MAX) {
                kc_seterr(kc, "invalid %s", what);
                return KCACHE_E_ARG;
        }
        return KCACHE_OK;
}

/* Packs n binary strings as an array. */
static int
kc_pack_bin_array(msgpack_packer *pk, size_t n, const void *const *p, const size_t *lens)
{
        if (msgpack_pack_array(pk, (uint32_t)n))
                return -1;
        for (size_t i = 0; i < n; i++)
                if (rpc_pack_bin(pk, p[i], lens[i]))
                        return -1;
        return 0;
}

/* Packs [[key, ...], opts] for del, mget, exists. */
static int
kc_pack_key_list(struct kcache *kc, size_t n, const void *const *keys, const size_t *klens,
                 const struct kcache_call_opts *o, unsigned mask)
{
        msgpack_packer pk;

        kc_params_start(kc, &pk);
        if (msgpack_pack_array(&pk, mask ? 2 : 1) || kc_pack_bin_array(&pk, n, keys, klens) ||
            kc_pack_opts(&pk, o, mask))
                return kc_pack_nomem(kc);
        return KCACHE_OK;
}

/* Packs [key, opts] for get, ttl, hgetall, get_or_set. */
static int
kc_pack_one_key(struct kcache *kc, const void *key, size_t klen, const struct kcache_call_opts *o,
                unsigned mask)
{
        msgpack_packer pk;

        kc_params_start(kc, &pk);
        if (msgpack_pack_array(&pk, mask ? 2 : 1) || rpc_pack_bin(&pk, key, klen) ||
            kc_pack_opts(&pk, o, mask))
                return kc_pack_nomem(kc);
        return KCACHE_OK;
}

/* Entry checks shared by every call: a handle, and a fresh error detail. */
#define KC_ENTER(kc)                                                                               \
        do {                                                                                       \
                if ((kc) == NULL)                                                                  \
                        return KCACHE_E_ARG;                                                       \
                (kc)->err[0] = '\0';                                                               \
        } while (0)

/* Clears the detail after a success, as the header promises. */
static int
kc_leave(struct kcache *kc, int r)
{
        if (r == KCACHE_OK || r == KCACHE_MISS || r == KCACHE_LEASE)
                kc->err[0] = '\0';
        return r;
}

/* --- public API --------------------------------------------------------- */

KCACHE_API int
kcache_new(struct kcache **out, const struct kcache_options *opts)
{
        struct sockaddr_un sa;
        const char *path = NULL;
        struct kcache *kc;

        if (out == NULL)
                return KCACHE_E_ARG;
        if (opts != NULL)
                path = opts->socket_path;
        if (path == NULL)
                path = getenv("KCACHE_SOCKET");
        if (path == NULL)
                path = KCACHE_DEFAULT_SOCKET;
        if (path[0] == '\0' || strlen(path) >= sizeof(sa.sun_path))
                return KCACHE_E_ARG;
        kc = calloc(1, sizeof(*kc));
        if (kc == NULL)
                return KCACHE_E_NOMEM;
        kc->socket_path = kc_strndup(path, strlen(path));
        if (kc->socket_path == NULL) {
                free(kc);
                return KCACHE_E_NOMEM;
        }
        kc->fd = -1;
        kc->next_msgid = 1;
        kc->timeout_ms = KCACHE_DEFAULT_TIMEOUT_MS;
        if (opts != NULL && opts->timeout_ms > 0)
                kc->timeout_ms = opts->timeout_ms;
        buf_init(&kc->in);
        buf_init(&kc->params);
        buf_init(&kc->out);
        scan_reset(&kc->scan);
        *out = kc;
        return KCACHE_OK;
}

static void
kc_forget_hello(struct kcache *kc)
{
        free(kc->srv_server);
        free(kc->srv_version);
        for (size_t i = 0; i < kc->n_limits; i++)
                free(kc->limit_names[i]);
        free(kc->limit_names);
        free(kc->limit_values);
        kc->srv_server = kc->srv_version = NULL;
        kc->limit_names = NULL;
        kc->limit_values = NULL;
        kc->n_limits = 0;
}

KCACHE_API void
kcache_free(struct kcache *kc)
{
        if (kc == NULL)
                return;
        kc_close(kc);
        buf_deinit(&kc->in);
        buf_deinit(&kc->params);
        buf_deinit(&kc->out);
        kc_forget_hello(kc);
        free(kc->socket_path);
        free(kc);
}

KCACHE_API void
kcache_set_timeout(struct kcache *kc, int timeout_ms)
{
        if (kc != NULL)
                kc->timeout_ms = timeout_ms > 0 ? timeout_ms : KCACHE_DEFAULT_TIMEOUT_MS;
}

KCACHE_API const char *
kcache_strerror(const struct kcache *kc)
{
        return kc != NULL ? kc->err : "no kcache handle";
}

KCACHE_API const char *
kcache_code_name(int code)
{
        switch (code) {
        case KCACHE_OK:
                return "OK";
        case KCACHE_MISS:
                return "MISS";
        case KCACHE_E_ARG:
                return "ARG";
        case KCACHE_E_NOMEM:
                return "NOMEM";
        case KCACHE_E_CONNECT:
                return "CONNECT";
        case KCACHE_E_IO:
                return "IO";
        case KCACHE_E_PROTOCOL:
                return "PROTOCOL";
        case KCACHE_E_TIMEOUT:
                return "TIMEOUT";
        case KCACHE_E_BAD_REQUEST:
                return "BAD_REQUEST";
        case KCACHE_E_NO_METHOD:
                return "NO_METHOD";
        case KCACHE_E_TOO_LARGE:
                return "TOO_LARGE";
        case KCACHE_E_UNAVAILABLE:
                return "UNAVAILABLE";
        case KCACHE_E_BACKEND:
                return "BACKEND";
        case KCACHE_E_INTERNAL:
                return "INTERNAL";
        case KCACHE_E_SERVER:
                return "SERVER";
        case KCACHE_LEASE:
                return "LEASE";
        case KCACHE_E_LEASE_INVALID:
                return "LEASE_INVALID";
        case KCACHE_E_LOADER:
                return "LOADER";
        default:
                return "UNKNOWN";
        }
}

static int
kc_pack_empty(struct kcache *kc)
{
        msgpack_packer pk;

        kc_params_start(kc, &pk);
        if (msgpack_pack_array(&pk, 0))
                return kc_pack_nomem(kc);
        return KCACHE_OK;
}

KCACHE_API int
kcache_ping(struct kcache *kc)
{
        struct kc_call c = {.method = RPC_M_ping};
        const msgpack_object *res;
        int r;

        KC_ENTER(kc);
        r = kc_pack_empty(kc);
        if (r == KCACHE_OK)
                r = kc_run(kc, &c, &res);
        if (r == KCACHE_OK) {
                if (!kc_key_is(res, "pong"))
                        r = kc_bad_result(kc, &c, "\"pong\"");
                kc_call_end(kc, &c);
        }
        return kc_leave(kc, r);
}

/* Takes the facts out of a hello result map into the handle. */
static int
kc_take_hello(struct kcache *kc, struct kc_call *c, const msgpack_object *res)
{
        const msgpack_object *server, *version, *protocol, *limits;
        const char *sp, *vp;
        size_t sn, vn;
        int64_t proto;

        if (res->type != MSGPACK_OBJECT_MAP || (server = kc_map_get(res, "server")) == NULL ||
            (version = kc_map_get(res, "version")) == NULL ||
            (protocol = kc_map_get(res, "protocol")) == NULL || !rpc_obj_bytes(server, &sp, &sn) ||
            !rpc_obj_bytes(version, &vp, &vn) || !kc_obj_int(protocol, &proto) || proto < INT_MIN ||
            proto > INT_MAX)
                return kc_bad_result(kc, c, "a map with server, version and protocol");
        limits = kc_map_get(res, "limits");
        if (limits != NULL && limits->type != MSGPACK_OBJECT_MAP)
                return kc_bad_result(kc, c, "a limits map");

        kc_forget_hello(kc);
        kc->srv_server = kc_strndup(sp, sn);
        kc->srv_version = kc_strndup(vp, vn);
        if (kc->srv_server == NULL || kc->srv_version == NULL)
                goto nomem;
        if (limits != NULL && limits->via.map.size > 0) {
                kc->limit_names = calloc(limits->via.map.size, sizeof(char *));
                kc->limit_values = calloc(limits->via.map.size, sizeof(int64_t));
                if (kc->limit_names == NULL || kc->limit_values == NULL)
                        goto nomem;
                for (uint32_t i = 0; i < limits->via.map.size; i++) {
                        const msgpack_object_kv *kv = &limits->via.map.ptr[i];
                        const char *np;
                        size_t nn;
                        int64_t v;

                        if (!rpc_obj_bytes(&kv->key, &np, &nn) || !kc_obj_int(&kv->val, &v))
                                continue;
                        kc->limit_names[kc->n_limits] = kc_strndup(np, nn);
                        if (kc->limit_names[kc->n_limits] == NULL)
                                goto nomem;
                        kc->limit_values[kc->n_limits++] = v;
                }
        }
        kc->protocol = (int)proto;
        return KCACHE_OK;

nomem:
        kc_forget_hello(kc);
        kc_seterr(kc, "out of memory for the hello result");
        return KCACHE_E_NOMEM;
}

static int64_t
kc_limit(const struct kcache *kc, const char *name)
{
        for (size_t i = 0; i < kc->n_limits; i++)
                if (strcmp(kc->limit_names[i], name) == 0)
                        return kc->limit_values[i];
        return 0;
}

KCACHE_API int
kcache_hello(struct kcache *kc, struct kcache_server_info *info)
{
        struct kc_call c = {.method = RPC_M_hello};
        const msgpack_object *res;
        int r;

        KC_ENTER(kc);
        r = kc_pack_empty(kc);
        if (r == KCACHE_OK)
                r = kc_run(kc, &c, &res);
        if (r != KCACHE_OK)
                return r;
        r = kc_take_hello(kc, &c, res);
        kc_call_end(kc, &c);
        if (r == KCACHE_OK && info != NULL) {
                info->server = kc->srv_server;
                info->version = kc->srv_version;
                info->protocol = kc->protocol;
                info->max_request_bytes = kc_limit(kc, "max_request_bytes");
                info->max_batch_keys = kc_limit(kc, "max_batch_keys");
        }
        return kc_leave(kc, r);
}

KCACHE_API int
kcache_server_limit(const struct kcache *kc, size_t i, const char **name, int64_t *value)
{
        if (kc == NULL || i >= kc->n_limits)
                return KCACHE_E_ARG;
        if (name != NULL)
                *name = kc->limit_names[i];
        if (value != NULL)
                *value = kc->limit_values[i];
        return KCACHE_OK;
}

/* Finishes a call whose result is bin (a hit) or nil (a miss). */
static int
kc_value_result(struct kcache *kc, struct kc_call *c, void **val, size_t *len)
{
        const msgpack_object *res;
        int r = kc_run(kc, c, &res);

        if (r != KCACHE_OK)
                return r;
        if (res->type == MSGPACK_OBJECT_NIL) {
                *val = NULL;
                *len = 0;
                r = KCACHE_MISS;
        } else {
                r = kc_copy_value(kc, res, val, len);
                if (r == KCACHE_E_PROTOCOL)
                        r = kc_bad_result(kc, c, "bin or nil");
        }
        kc_call_end(kc, c);
        return r;
}

/* Finishes a call whose result is a bool (an integer 0/1, Redis' own answer,
 * is accepted too). */
static int
kc_bool_result(struct kcache *kc, struct kc_call *c, int *out)
{
        const msgpack_object *res;
        int64_t v;
        int r = kc_run(kc, c, &res);

        if (r != KCACHE_OK)
                return r;
        if (res->type == MSGPACK_OBJECT_BOOLEAN) {
                if (out != NULL)
                        *out = res->via.boolean ? 1 : 0;
        } else if (kc_obj_int(res, &v) && (v == 0 || v == 1)) {
                if (out != NULL)
                        *out = (int)v;
        } else {
                r = kc_bad_result(kc, c, "a bool");
        }
        kc_call_end(kc, c);
        return r;
}

KCACHE_API int
kcache_get_ex(struct kcache *kc, const void *key, size_t klen, const struct kcache_call_opts *o,
              void **val, size_t *len)
{
        struct kc_call c = {.method = RPC_M_get};
        unsigned mask;
        int r;

        KC_ENTER(kc);
        if (val == NULL || len == NULL) {
                kc_seterr(kc, "get: val and len are required");
                return KCACHE_E_ARG;
        }
        r = kc_check_bytes(kc, key, klen, "key");
        if (r == KCACHE_OK)
                r = kc_opts_prepare(kc, &c, o, &mask);
        if (r == KCACHE_OK)
                r = kc_pack_one_key(kc, key, klen, o, mask);
        if (r != KCACHE_OK)
                return r;
        return kc_leave(kc, kc_value_result(kc, &c, val, len));
}

KCACHE_API int
kcache_get(struct kcache *kc, const void *key, size_t klen, void **val, size_t *len)
{
        return kcache_get_ex(kc, key, klen, NULL, val, len);
}

KCACHE_API int
kcache_set_ex(struct kcache *kc, const void *key, size_t klen, const void *val, size_t len,
              const struct kcache_call_opts *o)
{
        struct kc_call c = {.method = RPC_M_set};
        msgpack_packer pk;
        unsigned mask;
        int r;

        KC_ENTER(kc);
        r = kc_check_bytes(kc, key, klen, "key");
        if (r == KCACHE_OK)
                r = kc_check_bytes(kc, val, len, "value");
        if (r == KCACHE_OK)
                r = kc_opts_prepare(kc, &c, o, &mask);
        if (r != KCACHE_OK)
                return r;
        kc_params_start(kc, &pk);
        if (msgpack_pack_array(&pk, mask ? 3 : 2) || rpc_pack_bin(&pk, key, klen) ||
            rpc_pack_bin(&pk, val, len) || kc_pack_opts(&pk, o, mask))
                return kc_pack_nomem(kc);
        return kc_leave(kc, kc_true_result(kc, &c));
}

KCACHE_API int
kcache_set(struct kcache *kc, const void *key, size_t klen, const void *val, size_t len,
           int64_t ttl_s)
{
        const struct kcache_call_opts o = {.ttl_s = ttl_s};

        KC_ENTER(kc);
        if (ttl_s < 0) {
                kc_seterr(kc, "set: negative ttl");
                return KCACHE_E_ARG;
        }
        return kcache_set_ex(kc, key, klen, val, len, &o);
}

/* del, exists, invalidate_keys' shape: a key list in, an integer out. */
static int
kc_key_list_count(struct kcache *kc, enum rpc_method method, size_t n, const void *const *keys,
                  const size_t *klens, const struct kcache_call_opts *o, int64_t *count)
{
        struct kc_call c = {.method = method};
        unsigned mask;
        int r;

        KC_ENTER(kc);
        r = kc_check_keys(kc, n, keys, klens);
        if (r == KCACHE_OK)
                r = kc_opts_prepare(kc, &c, o, &mask);
        if (r != KCACHE_OK)
                return r;
        if (n == 0) {
                if (count != NULL)
                        *count = 0;
                return KCACHE_OK;
        }
        r = kc_pack_key_list(kc, n, keys, klens, o, mask);
        if (r != KCACHE_OK)
                return r;
        return kc_leave(kc, kc_int_result(kc, &c, count));
}

KCACHE_API int
kcache_del_ex(struct kcache *kc, size_t n, const void *const *keys, const size_t *klens,
              const struct kcache_call_opts *o, int64_t *removed)
{
        return kc_key_list_count(kc, RPC_M_del, n, keys, klens, o, removed);
}

KCACHE_API int
kcache_del(struct kcache *kc, size_t n, const void *const *keys, const size_t *klens,
           int64_t *removed)
{
        return kc_key_list_count(kc, RPC_M_del, n, keys, klens, NULL, removed);
}

KCACHE_API int
kcache_exists_ex(struct kcache *kc, size_t n, const void *const *keys, const size_t *klens,
                 const struct kcache_call_opts *o, int64_t *count)
{
        return kc_key_list_count(kc, RPC_M_exists, n, keys, klens, o, count);
}

KCACHE_API int
kcache_exists(struct kcache *kc, size_t n, const void *const *keys, const size_t *klens,
              int64_t *count)
{
        return kc_key_list_count(kc, RPC_M_exists, n, keys, klens, NULL, count);
}

KCACHE_API int
kcache_mget_ex(struct kcache *kc, size_t n, const void *const *keys, const size_t *klens,
               const struct kcache_call_opts *o, struct kcache_value *vals)
{
        struct kc_call c = {.method = RPC_M_mget};
        const msgpack_object *res;
        struct kcache_value *tmp;
        unsigned mask;
        int r;

        KC_ENTER(kc);
        r = kc_check_keys(kc, n, keys, klens);
        if (r == KCACHE_OK)
                r = kc_opts_prepare(kc, &c, o, &mask);
        if (r != KCACHE_OK)
                return r;
        if (n > 0 && vals == NULL) {
                kc_seterr(kc, "mget: vals is required");
                return KCACHE_E_ARG;
        }
        if (n == 0)
                return KCACHE_OK;
        r = kc_pack_key_list(kc, n, keys, klens, o, mask);
        if (r == KCACHE_OK)
                r = kc_run(kc, &c, &res);
        if (r != KCACHE_OK)
                return r;
        if (res->type != MSGPACK_OBJECT_ARRAY || res->via.array.size != n) {
                r = kc_bad_result(kc, &c, "an array of one value per key");
                goto out;
        }
        /* Filled aside so that vals stays untouched on failure. */
        tmp = calloc(n, sizeof(*tmp));
        if (tmp == NULL) {
                kc_seterr(kc, "out of memory for %zu values", n);
                r = KCACHE_E_NOMEM;
                goto out;
        }
        for (size_t i = 0; i < n && r == KCACHE_OK; i++) {
                const msgpack_object *v = &res->via.array.ptr[i];

                if (v->type == MSGPACK_OBJECT_NIL)
                        continue;
                r = kc_copy_value(kc, v, &tmp[i].data, &tmp[i].len);
                if (r == KCACHE_E_PROTOCOL)
                        r = kc_bad_result(kc, &c, "bin or nil values");
        }
        if (r == KCACHE_OK)
                memcpy(vals, tmp, n * sizeof(*tmp));
        else
                kcache_values_free(tmp, n);
        free(tmp);
out:
        kc_call_end(kc, &c);
        return kc_leave(kc, r);
}

KCACHE_API int
kcache_mget(struct kcache *kc, size_t n, const void *const *keys, const size_t *klens,
            struct kcache_value *vals)
{
        return kcache_mget_ex(kc, n, keys, klens, NULL, vals);
}

/* Checks n byte strings of a batch (mset values, hset fields and values). */
static int
kc_check_list(struct kcache *kc, size_t n, const void *const *p, const size_t *lens,
              const char *what)
{
        if (n > UINT32_MAX || (n > 0 && (p == NULL || lens == NULL))) {
                kc_seterr(kc, "invalid %s list", what);
                return KCACHE_E_ARG;
        }
        for (size_t i = 0; i < n; i++)
                if (kc_check_bytes(kc, p[i], lens[i], what) != KCACHE_OK)
                        return KCACHE_E_ARG;
        return KCACHE_OK;
}

/* Packs {a[0]: b[0], ...}. */
static int
kc_pack_bin_map(msgpack_packer *pk, size_t n, const void *const *a, const size_t *alens,
                const void *const *b, const size_t *blens)
{
        if (msgpack_pack_map(pk, (uint32_t)n))
                return -1;
        for (size_t i = 0; i < n; i++)
                if (rpc_pack_bin(pk, a[i], alens[i]) || rpc_pack_bin(pk, b[i], blens[i]))
                        return -1;
        return 0;
}

KCACHE_API int
kcache_mset_ex(struct kcache *kc, size_t n, const void *const *keys, const size_t *klens,
               const void *const *vals, const size_t *vlens, const struct kcache_call_opts *o)
{
        struct kc_call c = {.method = RPC_M_mset};
        msgpack_packer pk;
        unsigned mask;
        int r;

        KC_ENTER(kc);
        r = kc_check_keys(kc, n, keys, klens);
        if (r == KCACHE_OK)
                r = kc_check_list(kc, n, vals, vlens, "value");
        if (r == KCACHE_OK)
                r = kc_opts_prepare(kc, &c, o, &mask);
        if (r != KCACHE_OK)
                return r;
        if (n == 0)
                return KCACHE_OK;
        kc_params_start(kc, &pk);
        if (msgpack_pack_array(&pk, mask ? 2 : 1) ||
            kc_pack_bin_map(&pk, n, keys, klens, vals, vlens) || kc_pack_opts(&pk, o, mask))
                return kc_pack_nomem(kc);
        return kc_leave(kc, kc_true_result(kc, &c));
}

KCACHE_API int
kcache_mset(struct kcache *kc, size_t n, const void *const *keys, const size_t *klens,
            const void *const *vals, const size_t *vlens, int64_t ttl_s)
{
        const struct kcache_call_opts o = {.ttl_s = ttl_s};

        KC_ENTER(kc);
        if (ttl_s < 0) {
                kc_seterr(kc, "mset: negative ttl");
                return KCACHE_E_ARG;
        }
        return kcache_mset_ex(kc, n, keys, klens, vals, vlens, &o);
}

KCACHE_API int
kcache_ttl_ex(struct kcache *kc, const void *key, size_t klen, const struct kcache_call_opts *o,
              int64_t *ttl_s)
{
        struct kc_call c = {.method = RPC_M_ttl};
        unsigned mask;
        int r;

        KC_ENTER(kc);
        r = kc_check_bytes(kc, key, klen, "key");
        if (r == KCACHE_OK)
                r = kc_opts_prepare(kc, &c, o, &mask);
        if (r == KCACHE_OK)
                r = kc_pack_one_key(kc, key, klen, o, mask);
        if (r != KCACHE_OK)
                return r;
        return kc_leave(kc, kc_int_result(kc, &c, ttl_s));
}

KCACHE_API int
kcache_ttl(struct kcache *kc, const void *key, size_t klen, int64_t *ttl_s)
{
        return kcache_ttl_ex(kc, key, klen, NULL, ttl_s);
}

KCACHE_API int
kcache_expire_ex(struct kcache *kc, const void *key, size_t klen, int64_t seconds,
                 const struct kcache_call_opts *o, int *existed)
{
        struct kc_call c = {.method = RPC_M_expire};
        msgpack_packer pk;
        unsigned mask;
        int r;

        KC_ENTER(kc);
        r = kc_check_bytes(kc, key, klen, "key");
        if (r == KCACHE_OK)
                r = kc_opts_prepare(kc, &c, o, &mask);
        if (r != KCACHE_OK)
                return r;
        kc_params_start(kc, &pk);
        if (msgpack_pack_array(&pk, mask ? 3 : 2) || rpc_pack_bin(&pk, key, klen) ||
            msgpack_pack_int64(&pk, seconds) || kc_pack_opts(&pk, o, mask))
                return kc_pack_nomem(kc);
        return kc_leave(kc, kc_bool_result(kc, &c, existed));
}

KCACHE_API int
kcache_expire(struct kcache *kc, const void *key, size_t klen, int64_t seconds, int *existed)
{
        return kcache_expire_ex(kc, key, klen, seconds, NULL, existed);
}

KCACHE_API void
kcache_values_free(struct kcache_value *vals, size_t n)
{
        for (size_t i = 0; i < n; i++) {
                free(vals[i].data);
                vals[i].data = NULL;
                vals[i].len = 0;
        }
}

/* --- hashes ------------------------------------------------------------- */

KCACHE_API int
kcache_hget(struct kcache *kc, const void *key, size_t klen, const void *field, size_t flen,
            const struct kcache_call_opts *o, void **val, size_t *len)
{
        struct kc_call c = {.method = RPC_M_hget};
        msgpack_packer pk;
        unsigned mask;
        int r;

        KC_ENTER(kc);
        if (val == NULL || len == NULL) {
                kc_seterr(kc, "hget: val and len are required");
                return KCACHE_E_ARG;
        }
        r = kc_check_bytes(kc, key, klen, "key");
        if (r == KCACHE_OK)
                r = kc_check_bytes(kc, field, flen, "field");
        if (r == KCACHE_OK)
                r = kc_opts_prepare(kc, &c, o, &mask);
        if (r != KCACHE_OK)
                return r;
        kc_params_start(kc, &pk);
        if (msgpack_pack_array(&pk, mask ? 3 : 2) || rpc_pack_bin(&pk, key, klen) ||
            rpc_pack_bin(&pk, field, flen) || kc_pack_opts(&pk, o, mask))
                return kc_pack_nomem(kc);
        return kc_leave(kc, kc_value_result(kc, &c, val, len));
}

KCACHE_API int
kcache_hset(struct kcache *kc, const void *key, size_t klen, size_t n, const void *const *fields,
            const size_t *flens, const void *const *vals, const size_t *vlens,
            const struct kcache_call_opts *o)
{
        struct kc_call c = {.method = RPC_M_hset};
        msgpack_packer pk;
        unsigned mask;
        int r;

        KC_ENTER(kc);
        r = kc_check_bytes(kc, key, klen, "key");
        if (r == KCACHE_OK)
                r = kc_check_list(kc, n, fields, flens, "field");
        if (r == KCACHE_OK)
                r = kc_check_list(kc, n, vals, vlens, "value");
        if (r == KCACHE_OK)
                r = kc_opts_prepare(kc, &c, o, &mask);
        if (r != KCACHE_OK)
                return r;
        if (n == 0)
                return KCACHE_OK;
        kc_params_start(kc, &pk);
        if (msgpack_pack_array(&pk, mask ? 3 : 2) || rpc_pack_bin(&pk, key, klen) ||
            kc_pack_bin_map(&pk, n, fields, flens, vals, vlens) || kc_pack_opts(&pk, o, mask))
                return kc_pack_nomem(kc);
        return kc_leave(kc, kc_true_result(kc, &c));
}

KCACHE_API int
kcache_hdel(struct kcache *kc, const void *key, size_t klen, size_t n, const void *const *fields,
            const size_t *flens, const struct kcache_call_opts *o, int64_t *removed)
{
        struct kc_call c = {.method = RPC_M_hdel};
        msgpack_packer pk;
        unsigned mask;
        int r;

        KC_ENTER(kc);
        r = kc_check_bytes(kc, key, klen, "key");
        if (r == KCACHE_OK)
                r = kc_check_list(kc, n, fields, flens, "field");
        if (r == KCACHE_OK)
                r = kc_opts_prepare(kc, &c, o, &mask);
        if (r != KCACHE_OK)
                return r;
        if (n == 0) {
                if (removed != NULL)
                        *removed = 0;
                return KCACHE_OK;
        }
        kc_params_start(kc, &pk);
        if (msgpack_pack_array(&pk, mask ? 3 : 2) || rpc_pack_bin(&pk, key, klen) ||
            kc_pack_bin_array(&pk, n, fields, flens) || kc_pack_opts(&pk, o, mask))
                return kc_pack_nomem(kc);
        return kc_leave(kc, kc_int_result(kc, &c, removed));
}

KCACHE_API void
kcache_hash_free(struct kcache_value *fields, struct kcache_value *values, size_t n)
{
        if (fields != NULL)
                kcache_values_free(fields, n);
        if (values != NULL)
                kcache_values_free(values, n);
        free(fields);
        free(values);
}

KCACHE_API int
kcache_hgetall(struct kcache *kc, const void *key, size_t klen, const struct kcache_call_opts *o,
               struct kcache_value **fields, struct kcache_value **values, size_t *n)
{
        struct kc_call c = {.method = RPC_M_hgetall};
        struct kcache_value *f = NULL, *v = NULL;
        const msgpack_object *res;
        unsigned mask;
        uint32_t size;
        int r;

        KC_ENTER(kc);
        if (fields == NULL || values == NULL || n == NULL) {
                kc_seterr(kc, "hgetall: fields, values and n are required");
                return KCACHE_E_ARG;
        }
        r = kc_check_bytes(kc, key, klen, "key");
        if (r == KCACHE_OK)
                r = kc_opts_prepare(kc, &c, o, &mask);
        if (r == KCACHE_OK)
                r = kc_pack_one_key(kc, key, klen, o, mask);
        if (r == KCACHE_OK)
                r = kc_run(kc, &c, &res);
        if (r != KCACHE_OK)
                return r;
        if (res->type != MSGPACK_OBJECT_MAP) {
                r = kc_bad_result(kc, &c, "a map of fields");
                goto out;
        }
        size = res->via.map.size;
        if (size > 0) {
                f = calloc(size, sizeof(*f));
                v = calloc(size, sizeof(*v));
                if (f == NULL || v == NULL) {
                        kc_seterr(kc, "out of memory for %u fields", (unsigned)size);
                        r = KCACHE_E_NOMEM;
                }
        }
        for (uint32_t i = 0; i < size && r == KCACHE_OK; i++) {
                const msgpack_object_kv *kv = &res->via.map.ptr[i];

                r = kc_copy_value(kc, &kv->key, &f[i].data, &f[i].len);
                if (r == KCACHE_OK)
                        r = kc_copy_value(kc, &kv->val, &v[i].data, &v[i].len);
                if (r == KCACHE_E_PROTOCOL)
                        r = kc_bad_result(kc, &c, "bin field names and values");
        }
        if (r == KCACHE_OK) {
                *fields = f;
                *values = v;
                *n = size;
        } else {
                kcache_hash_free(f, v, size);
        }
out:
        kc_call_end(kc, &c);
        return kc_leave(kc, r);
}

/* --- invalidation ------------------------------------------------------- */

/* Finishes an invalidate: {name: integer}. */
static int
kc_invalidate_result(struct kcache *kc, struct kc_call *c, const char *name, const char *expected,
                     int64_t *out)
{
        const msgpack_object *res, *n;
        int64_t v;
        int r = kc_run(kc, c, &res);

        if (r != KCACHE_OK)
                return r;
        if (res->type == MSGPACK_OBJECT_MAP && (n = kc_map_get(res, name)) != NULL &&
            kc_obj_int(n, &v)) {
                if (out != NULL)
                        *out = v;
        } else {
                r = kc_bad_result(kc, c, expected);
        }
        kc_call_end(kc, c);
        return r;
}

/* Starts [ {selector: ...  : the caller packs the selector's value, then the
 * options. */
static int
kc_pack_selector_head(struct kcache *kc, msgpack_packer *pk, const char *selector, unsigned mask)
{
        kc_params_start(kc, pk);
        if (msgpack_pack_array(pk, mask ? 2 : 1) || msgpack_pack_map(pk, 1) ||
            rpc_pack_str(pk, selector))
                return kc_pack_nomem(kc);
        return KCACHE_OK;
}

KCACHE_API int
kcache_invalidate_keys(struct kcache *kc, size_t n, const void *const *keys, const size_t *klens,
                       const struct kcache_call_opts *o, int64_t *deleted)
{
        struct kc_call c = {.method = RPC_M_invalidate};
        msgpack_packer pk;
        unsigned mask;
        int r;

        KC_ENTER(kc);
        r = kc_check_keys(kc, n, keys, klens);
        if (r == KCACHE_OK)
                r = kc_opts_prepare(kc, &c, o, &mask);
        if (r != KCACHE_OK)
                return r;
        if (n == 0) {
                if (deleted != NULL)
                        *deleted = 0;
                return KCACHE_OK;
        }
        r = kc_pack_selector_head(kc, &pk, "keys", mask);
        if (r != KCACHE_OK)
                return r;
        if (kc_pack_bin_array(&pk, n, keys, klens) || kc_pack_opts(&pk, o, mask))
                return kc_pack_nomem(kc);
        return kc_leave(kc, kc_invalidate_result(kc, &c, "deleted", "{\"deleted\": n}", deleted));
}

KCACHE_API int
kcache_invalidate_pattern(struct kcache *kc, const char *pattern, const struct kcache_call_opts *o,
                          int64_t *deleted)
{
        struct kc_call c = {.method = RPC_M_invalidate};
        msgpack_packer pk;
        unsigned mask;
        int r;

        KC_ENTER(kc);
        r = kc_check_str(kc, pattern, "pattern");
        if (r == KCACHE_OK)
                r = kc_opts_prepare(kc, &c, o, &mask);
        if (r == KCACHE_OK)
                r = kc_pack_selector_head(kc, &pk, "pattern", mask);
        if (r != KCACHE_OK)
                return r;
        if (rpc_pack_str(&pk, pattern) || kc_pack_opts(&pk, o, mask))
                return kc_pack_nomem(kc);
        return kc_leave(kc, kc_invalidate_result(kc, &c, "deleted", "{\"deleted\": n}", deleted));
}

KCACHE_API int
kcache_invalidate_tags(struct kcache *kc, size_t n, const char *const *tags, int64_t *deleted)
{
        struct kc_call c = {.method = RPC_M_invalidate};
        msgpack_packer pk;
        int r;

        KC_ENTER(kc);
        if (n > UINT32_MAX || (n > 0 && tags == NULL)) {
                kc_seterr(kc, "invalidate: invalid tag list");
                return KCACHE_E_ARG;
        }
        for (size_t i = 0; i < n; i++)
                if (kc_check_str(kc, tags[i], "tag") != KCACHE_OK)
                        return KCACHE_E_ARG;
        if (n == 0) {
                if (deleted != NULL)
                        *deleted = 0;
                return KCACHE_OK;
        }
        r = kc_pack_selector_head(kc, &pk, "tags", 0);
        if (r != KCACHE_OK)
                return r;
        if (msgpack_pack_array(&pk, (uint32_t)n))
                return kc_pack_nomem(kc);
        for (size_t i = 0; i < n; i++)
                if (rpc_pack_str(&pk, tags[i]))
                        return kc_pack_nomem(kc);
        return kc_leave(kc, kc_invalidate_result(kc, &c, "deleted", "{\"deleted\": n}", deleted));
}

KCACHE_API int
kcache_invalidate_namespace(struct kcache *kc, const char *ns, int64_t *generation)
{
        struct kc_call c = {.method = RPC_M_invalidate};
        msgpack_packer pk;
        int r;

        KC_ENTER(kc);
        r = kc_check_str(kc, ns, "namespace");
        if (r == KCACHE_OK)
                r = kc_pack_selector_head(kc, &pk, "namespace", 0);
        if (r != KCACHE_OK)
                return r;
        if (rpc_pack_str(&pk, ns))
                return kc_pack_nomem(kc);
        return kc_leave(
                kc, kc_invalidate_result(kc, &c, "generation", "{\"generation\": g}", generation));
}

/* --- leases ------------------------------------------------------------- */

/* The deadline of get_or_set: kcached may wait wait_ms for another loader
 * before it answers, so the handle's timeout alone would give up too early. */
static int
kc_get_or_set_timeout_ms(const struct kcache *kc, const struct kcache_call_opts *o)
{
        int64_t wait = o != NULL && o->wait_ms > 0 ? o->wait_ms : KCACHE_GET_OR_SET_WAIT_MS;
        int64_t ms = wait > INT_MAX - 1000 ? INT_MAX : wait + 1000;

        return ms > kc->timeout_ms ? (int)ms : kc->timeout_ms;
}

/* A lease token: a non-empty string without NUL bytes, so that it survives
 * the round trip through a C string. KCACHE_E_PROTOCOL for anything else. */
static int
kc_copy_token(struct kcache *kc, const msgpack_object *o, char **token)
{
        const char *p;
        size_t n;

        if (!rpc_obj_bytes(o, &p, &n) || n == 0 || memchr(p, '\0', n) != NULL)
                return KCACHE_E_PROTOCOL;
        *token = kc_strndup(p, n);
        if (*token == NULL) {
                kc_seterr(kc, "out of memory for a lease token");
                return KCACHE_E_NOMEM;
        }
        return KCACHE_OK;
}

KCACHE_API int
kcache_get_or_set_begin(struct kcache *kc, const void *key, size_t klen,
                        const struct kcache_call_opts *o, void **val, size_t *len, char **token,
                        int *is_stale)
{
        struct kc_call c = {.method = RPC_M_get_or_set, .is_close_on_timeout = true};
        const msgpack_object *res, *value_o, *lease_o, *stale_o;
        char *tok = NULL;
        void *v = NULL;
        size_t vlen = 0;
        unsigned mask;
        bool has_stale = false;
        int r;

        KC_ENTER(kc);
        if (val == NULL || len == NULL || token == NULL) {
                kc_seterr(kc, "get_or_set: val, len and token are required");
                return KCACHE_E_ARG;
        }
        r = kc_check_bytes(kc, key, klen, "key");
        if (r == KCACHE_OK)
                r = kc_opts_prepare(kc, &c, o, &mask);
        if (r == KCACHE_OK)
                r = kc_pack_one_key(kc, key, klen, o, mask);
        if (r != KCACHE_OK)
                return r;
        c.timeout_ms = kc_get_or_set_timeout_ms(kc, o);
        r = kc_run(kc, &c, &res);
        if (r != KCACHE_OK)
                return r;
        if (res->type != MSGPACK_OBJECT_MAP)
                goto bad;
        value_o = kc_map_get(res, "value");
        lease_o = kc_map_get(res, "lease");
        stale_o = kc_map_get(res, "stale");
        if (stale_o != NULL) {
                if (stale_o->type != MSGPACK_OBJECT_BOOLEAN)
                        goto bad;
                has_stale = stale_o->via.boolean;
        }
        if (lease_o == NULL && value_o == NULL)
                goto bad;
        if (lease_o != NULL) {
                r = kc_copy_token(kc, lease_o, &tok);
                if (r == KCACHE_E_PROTOCOL)
                        goto bad;
                if (r != KCACHE_OK)
                        goto out;
        }
        if (value_o != NULL) {
                r = kc_copy_value(kc, value_o, &v, &vlen);
                if (r == KCACHE_E_PROTOCOL)
                        goto bad;
                if (r != KCACHE_OK)
                        goto out;
        }
        *val = v;
        *len = vlen;
        *token = tok;
        /* with a lease, a value can only be a stale one */
        if (is_stale != NULL)
                *is_stale = (tok != NULL && v != NULL) || has_stale;
        v = NULL;
        tok = NULL;
        r = *token != NULL ? KCACHE_LEASE : KCACHE_OK;
        goto out;
bad:
        r = kc_bad_result(kc, &c, "{value}, {lease} or {value, stale, lease} (a non-empty token)");
out:
        free(tok);
        free(v);
        kc_call_end(kc, &c);
        return kc_leave(kc, r);
}

KCACHE_API int
kcache_fill(struct kcache *kc, const void *key, size_t klen, const char *token, const void *val,
            size_t len, const struct kcache_call_opts *o)
{
        struct kc_call c = {.method = RPC_M_fill};
        msgpack_packer pk;
        unsigned mask;
        int r;

        KC_ENTER(kc);
        r = kc_check_bytes(kc, key, klen, "key");
        if (r == KCACHE_OK)
                r = kc_check_str(kc, token, "lease token");
        if (r == KCACHE_OK)
                r = kc_check_bytes(kc, val, len, "value");
        if (r == KCACHE_OK)
                r = kc_opts_prepare(kc, &c, o, &mask);
        if (r != KCACHE_OK)
                return r;
        kc_params_start(kc, &pk);
        if (msgpack_pack_array(&pk, mask ? 4 : 3) || rpc_pack_bin(&pk, key, klen) ||
            rpc_pack_str(&pk, token) || rpc_pack_bin(&pk, val, len) || kc_pack_opts(&pk, o, mask))
                return kc_pack_nomem(kc);
        return kc_leave(kc, kc_true_result(kc, &c));
}

KCACHE_API int
kcache_release(struct kcache *kc, const void *key, size_t klen, const char *token,
               const struct kcache_call_opts *o, int *was_held)
{
        struct kc_call c = {.method = RPC_M_release};
        msgpack_packer pk;
        unsigned mask;
        int r;

        KC_ENTER(kc);
        r = kc_check_bytes(kc, key, klen, "key");
        if (r == KCACHE_OK)
                r = kc_check_str(kc, token, "lease token");
        if (r == KCACHE_OK)
                r = kc_opts_prepare(kc, &c, o, &mask);
        if (r != KCACHE_OK)
                return r;
        kc_params_start(kc, &pk);
        if (msgpack_pack_array(&pk, mask ? 3 : 2) || rpc_pack_bin(&pk, key, klen) ||
            rpc_pack_str(&pk, token) || kc_pack_opts(&pk, o, mask))
                return kc_pack_nomem(kc);
        return kc_leave(kc, kc_bool_result(kc, &c, was_held));
}

/* Gives a loaded value the NUL the library's values carry. */
static int
kc_terminate_value(struct kcache *kc, void **val, size_t len)
{
        char *p;

        if (len == SIZE_MAX) {
                kc_seterr(kc, "get_or_set: the loaded value is too large");
                return KCACHE_E_ARG;
        }
        p = realloc(*val, len + 1);
        if (p == NULL) {
                kc_seterr(kc, "out of memory for a %zu byte value", len);
                return KCACHE_E_NOMEM;
        }
        p[len] = '\0';
        *val = p;
        return KCACHE_OK;
}

KCACHE_API int
kcache_get_or_set(struct kcache *kc, const void *key, size_t klen, const struct kcache_call_opts *o,
                  kcache_loader_fn loader, void *loader_priv, void **val, size_t *len)
{
        char *token = NULL;
        void *v = NULL;
        size_t vlen = 0;
        int r, lr;

        KC_ENTER(kc);
        if (loader == NULL || val == NULL || len == NULL) {
                kc_seterr(kc, "get_or_set: loader, val and len are required");
                return KCACHE_E_ARG;
        }
        r = kcache_get_or_set_begin(kc, key, klen, o, &v, &vlen, &token, NULL);
        if (r == KCACHE_OK) {
                *val = v;
                *len = vlen;
                return KCACHE_OK;
        }
        if (r != KCACHE_LEASE)
                return r;
        /* We hold the lease: a stale value would only be what we replace. */
        free(v);
        v = NULL;
        vlen = 0;
        lr = loader(loader_priv, key, klen, &v, &vlen);
        if (lr != 0) {
                kc_seterr(kc, "get_or_set: the loader failed (returned %d)", lr);
                r = KCACHE_E_LOADER;
        } else if (v == NULL && vlen > 0) {
                kc_seterr(kc, "get_or_set: the loader returned a length without a value");
                r = KCACHE_E_LOADER;
        } else {
                r = kc_terminate_value(kc, &v, vlen);
        }
        if (r != KCACHE_OK) {
                char why[KC_ERR_MAX];

                /* Let a waiter have the lease now rather than after lease_ms.
                 * Its outcome does not change ours. */
                memcpy(why, kc->err, sizeof(why));
                kcache_release(kc, key, klen, token, o, NULL);
                memcpy(kc->err, why, sizeof(why));
                free(token);
                free(v);
                return r;
        }
        /* The caller gets its value even if kcached refuses to store it
         * (LEASE_INVALID: a write raced with the load) or cannot. */
        kcache_fill(kc, key, klen, token, v, vlen, o);
        free(token);
        *val = v;
        *len = vlen;
        return kc_leave(kc, KCACHE_OK);
}

/* --- raw calls ---------------------------------------------------------- */

KCACHE_API int
kcache_call_raw(struct kcache *kc, const char *method, const void *params_msgpack, size_t n,
                void **result_msgpack, size_t *rn)
{
        struct kc_call c = {.method = RPC_M_ping};
        const msgpack_object *res;
        msgpack_unpacked up;
        msgpack_sbuffer sb;
        msgpack_packer pk;
        size_t off = 0;
        int r, mid;

        KC_ENTER(kc);
        if (method == NULL || method[0] == '\0' || params_msgpack == NULL ||
            result_msgpack == NULL || rn == NULL) {
                kc_seterr(kc, "call_raw: method, params and result are required");
                return KCACHE_E_ARG;
        }
        /* The params go on the wire as they are: anything but one whole
         * array would desynchronise the stream, not just fail this call. */
        msgpack_unpacked_init(&up);
        r = msgpack_unpack_next(&up, params_msgpack, n, &off);
        if (r != MSGPACK_UNPACK_SUCCESS || off != n || up.data.type != MSGPACK_OBJECT_ARRAY) {
                msgpack_unpacked_destroy(&up);
                kc_seterr(kc, "call_raw: the params are not one msgpack array");
                return r == MSGPACK_UNPACK_NOMEM_ERROR ? KCACHE_E_NOMEM : KCACHE_E_ARG;
        }
        msgpack_unpacked_destroy(&up);
        mid = rpc_method_find(method, strlen(method));
        c.raw_name = method;
        c.is_raw_read = mid >= 0 && (rpc_methods[mid].flags & (KC_M_READ | KC_M_LOCAL)) != 0;
        buf_clear(&kc->params);
        if (buf_append(&kc->params, params_msgpack, n) < 0)
                return kc_pack_nomem(kc);
        r = kc_run(kc, &c, &res);
        if (r != KCACHE_OK)
                return r;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        if (msgpack_pack_object(&pk, *res) != 0) {
                msgpack_sbuffer_destroy(&sb);
                kc_seterr(kc, "out of memory for the result");
                r = KCACHE_E_NOMEM;
        } else {
                *rn = sb.size;
                *result_msgpack = msgpack_sbuffer_release(&sb);
        }
        kc_call_end(kc, &c);
        return kc_leave(kc, r);
}
