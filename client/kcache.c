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
        enum rpc_method method;
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
kc_connect(struct kcache *kc, int64_t deadline_ns)
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
        kc_seterr(kc, "connect to %s: timed out after %d ms", kc->socket_path, kc->timeout_ms);
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
        if (rpc_pack_request_head(&pk, c->msgid, rpc_methods[c->method].name) != 0 ||
            buf_append(&kc->out, buf_head(&kc->params), buf_size(&kc->params)) < 0) {
                kc_seterr(kc, "out of memory encoding the request");
                return KCACHE_E_NOMEM;
        }
        return KCACHE_OK;
}

static int
kc_timeout(struct kcache *kc, struct kc_call *c)
{
        if (c->sent == buf_size(&kc->out)) {
                /* Keep the connection: the reply is due later and will be
                 * recognised by its msgid and dropped. */
                kc->n_pending++;
        } else if (c->sent > 0) {
                /* Half a request on the wire cannot be taken back. */
                kc_close(kc);
        }
        kc_seterr(kc, "%s: no reply from kcached within %d ms", rpc_methods[c->method].name,
                  kc->timeout_ms);
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
        const bool is_idempotent = (rpc_methods[c->method].flags & (KC_M_READ | KC_M_LOCAL)) != 0;
        bool is_retried = false;

        c->deadline_ns = kc_now_ns() + (int64_t)kc->timeout_ms * 1000000;
        c->has_reply = false;
        c->is_close_after = false;
        for (;;) {
                int r;

                if (kc->fd != -1 && kc->pid != getpid())
                        kc_close(kc); /* inherited from the parent: never use it */
                if (kc->fd != -1 && kc->n_pending > KC_MAX_PENDING)
                        kc_close(kc);
                if (kc->fd == -1) {
                        r = kc_connect(kc, c->deadline_ns);
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
                        kc_seterr(kc, "%s: connection to %s broke: %s", rpc_methods[c->method].name,
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
        [RPC_ERR_BAD_REQUEST] = KCACHE_E_BAD_REQUEST, [RPC_ERR_NO_METHOD] = KCACHE_E_NO_METHOD,
        [RPC_ERR_TOO_LARGE] = KCACHE_E_TOO_LARGE,     [RPC_ERR_UNAVAILABLE] = KCACHE_E_UNAVAILABLE,
        [RPC_ERR_TIMEOUT] = KCACHE_E_TIMEOUT,         [RPC_ERR_BACKEND] = KCACHE_E_BACKEND,
        [RPC_ERR_INTERNAL] = KCACHE_E_INTERNAL,
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
        kc_seterr(kc, "%s: kcached answered something other than %s", rpc_methods[c->method].name,
                  expected);
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

static int
kc_pack_ttl_opt(msgpack_packer *pk, int64_t ttl_s)
{
        return msgpack_pack_map(pk, 1) || rpc_pack_str(pk, rpc_options[RPC_OPT_ttl].name) ||
               msgpack_pack_int64(pk, ttl_s);
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

/* Packs [[key, ...]] for del, mget, exists. */
static int
kc_pack_key_list(struct kcache *kc, size_t n, const void *const *keys, const size_t *klens)
{
        msgpack_packer pk;

        kc_params_start(kc, &pk);
        if (msgpack_pack_array(&pk, 1) || msgpack_pack_array(&pk, (uint32_t)n))
                return kc_pack_nomem(kc);
        for (size_t i = 0; i < n; i++)
                if (rpc_pack_bin(&pk, keys[i], klens[i]))
                        return kc_pack_nomem(kc);
        return KCACHE_OK;
}

/* Packs [key] for get, ttl. */
static int
kc_pack_one_key(struct kcache *kc, const void *key, size_t klen)
{
        msgpack_packer pk;

        kc_params_start(kc, &pk);
        if (msgpack_pack_array(&pk, 1) || rpc_pack_bin(&pk, key, klen))
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
        if (r == KCACHE_OK || r == KCACHE_MISS)
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

KCACHE_API int
kcache_get(struct kcache *kc, const void *key, size_t klen, void **val, size_t *len)
{
        struct kc_call c = {.method = RPC_M_get};
        const msgpack_object *res;
        int r;

        KC_ENTER(kc);
        if (val == NULL || len == NULL) {
                kc_seterr(kc, "get: val and len are required");
                return KCACHE_E_ARG;
        }
        r = kc_check_bytes(kc, key, klen, "key");
        if (r == KCACHE_OK)
                r = kc_pack_one_key(kc, key, klen);
        if (r == KCACHE_OK)
                r = kc_run(kc, &c, &res);
        if (r != KCACHE_OK)
                return r;
        if (res->type == MSGPACK_OBJECT_NIL) {
                *val = NULL;
                *len = 0;
                r = KCACHE_MISS;
        } else {
                r = kc_copy_value(kc, res, val, len);
                if (r == KCACHE_E_PROTOCOL)
                        r = kc_bad_result(kc, &c, "bin or nil");
        }
        kc_call_end(kc, &c);
        return kc_leave(kc, r);
}

KCACHE_API int
kcache_set(struct kcache *kc, const void *key, size_t klen, const void *val, size_t len,
           int64_t ttl_s)
{
        struct kc_call c = {.method = RPC_M_set};
        msgpack_packer pk;
        int r;

        KC_ENTER(kc);
        if (ttl_s < 0) {
                kc_seterr(kc, "set: negative ttl");
                return KCACHE_E_ARG;
        }
        r = kc_check_bytes(kc, key, klen, "key");
        if (r == KCACHE_OK)
                r = kc_check_bytes(kc, val, len, "value");
        if (r != KCACHE_OK)
                return r;
        kc_params_start(kc, &pk);
        if (msgpack_pack_array(&pk, ttl_s > 0 ? 3 : 2) || rpc_pack_bin(&pk, key, klen) ||
            rpc_pack_bin(&pk, val, len) || (ttl_s > 0 && kc_pack_ttl_opt(&pk, ttl_s)))
                return kc_pack_nomem(kc);
        return kc_leave(kc, kc_true_result(kc, &c));
}

KCACHE_API int
kcache_del(struct kcache *kc, size_t n, const void *const *keys, const size_t *klens,
           int64_t *removed)
{
        struct kc_call c = {.method = RPC_M_del};
        int r;

        KC_ENTER(kc);
        r = kc_check_keys(kc, n, keys, klens);
        if (r != KCACHE_OK)
                return r;
        if (n == 0) {
                if (removed != NULL)
                        *removed = 0;
                return KCACHE_OK;
        }
        r = kc_pack_key_list(kc, n, keys, klens);
        if (r != KCACHE_OK)
                return r;
        return kc_leave(kc, kc_int_result(kc, &c, removed));
}

KCACHE_API int
kcache_exists(struct kcache *kc, size_t n, const void *const *keys, const size_t *klens,
              int64_t *count)
{
        struct kc_call c = {.method = RPC_M_exists};
        int r;

        KC_ENTER(kc);
        r = kc_check_keys(kc, n, keys, klens);
        if (r != KCACHE_OK)
                return r;
        if (n == 0) {
                if (count != NULL)
                        *count = 0;
                return KCACHE_OK;
        }
        r = kc_pack_key_list(kc, n, keys, klens);
        if (r != KCACHE_OK)
                return r;
        return kc_leave(kc, kc_int_result(kc, &c, count));
}

KCACHE_API int
kcache_mget(struct kcache *kc, size_t n, const void *const *keys, const size_t *klens,
            struct kcache_value *vals)
{
        struct kc_call c = {.method = RPC_M_mget};
        const msgpack_object *res;
        struct kcache_value *tmp;
        int r;

        KC_ENTER(kc);
        r = kc_check_keys(kc, n, keys, klens);
        if (r != KCACHE_OK)
                return r;
        if (n > 0 && vals == NULL) {
                kc_seterr(kc, "mget: vals is required");
                return KCACHE_E_ARG;
        }
        if (n == 0)
                return KCACHE_OK;
        r = kc_pack_key_list(kc, n, keys, klens);
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
                const msgpack_object *o = &res->via.array.ptr[i];

                if (o->type == MSGPACK_OBJECT_NIL)
                        continue;
                r = kc_copy_value(kc, o, &tmp[i].data, &tmp[i].len);
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
kcache_mset(struct kcache *kc, size_t n, const void *const *keys, const size_t *klens,
            const void *const *vals, const size_t *vlens, int64_t ttl_s)
{
        struct kc_call c = {.method = RPC_M_mset};
        msgpack_packer pk;
        int r;

        KC_ENTER(kc);
        if (ttl_s < 0) {
                kc_seterr(kc, "mset: negative ttl");
                return KCACHE_E_ARG;
        }
        r = kc_check_keys(kc, n, keys, klens);
        if (r != KCACHE_OK)
                return r;
        if (n > 0 && (vals == NULL || vlens == NULL)) {
                kc_seterr(kc, "mset: vals and vlens are required");
                return KCACHE_E_ARG;
        }
        for (size_t i = 0; i < n; i++)
                if (kc_check_bytes(kc, vals[i], vlens[i], "value") != KCACHE_OK)
                        return KCACHE_E_ARG;
        if (n == 0)
                return KCACHE_OK;
        kc_params_start(kc, &pk);
        if (msgpack_pack_array(&pk, ttl_s > 0 ? 2 : 1) || msgpack_pack_map(&pk, (uint32_t)n))
                return kc_pack_nomem(kc);
        for (size_t i = 0; i < n; i++)
                if (rpc_pack_bin(&pk, keys[i], klens[i]) || rpc_pack_bin(&pk, vals[i], vlens[i]))
                        return kc_pack_nomem(kc);
        if (ttl_s > 0 && kc_pack_ttl_opt(&pk, ttl_s))
                return kc_pack_nomem(kc);
        return kc_leave(kc, kc_true_result(kc, &c));
}

KCACHE_API int
kcache_ttl(struct kcache *kc, const void *key, size_t klen, int64_t *ttl_s)
{
        struct kc_call c = {.method = RPC_M_ttl};
        int r;

        KC_ENTER(kc);
        r = kc_check_bytes(kc, key, klen, "key");
        if (r == KCACHE_OK)
                r = kc_pack_one_key(kc, key, klen);
        if (r != KCACHE_OK)
                return r;
        return kc_leave(kc, kc_int_result(kc, &c, ttl_s));
}

KCACHE_API int
kcache_expire(struct kcache *kc, const void *key, size_t klen, int64_t seconds, int *existed)
{
        struct kc_call c = {.method = RPC_M_expire};
        const msgpack_object *res;
        msgpack_packer pk;
        int64_t v;
        int r;

        KC_ENTER(kc);
        r = kc_check_bytes(kc, key, klen, "key");
        if (r != KCACHE_OK)
                return r;
        kc_params_start(kc, &pk);
        if (msgpack_pack_array(&pk, 2) || rpc_pack_bin(&pk, key, klen) ||
            msgpack_pack_int64(&pk, seconds))
                return kc_pack_nomem(kc);
        r = kc_run(kc, &c, &res);
        if (r != KCACHE_OK)
                return r;
        /* bool per the protocol; an integer 0/1 (Redis' own answer) is accepted */
        if (res->type == MSGPACK_OBJECT_BOOLEAN) {
                if (existed != NULL)
                        *existed = res->via.boolean ? 1 : 0;
        } else if (kc_obj_int(res, &v) && (v == 0 || v == 1)) {
                if (existed != NULL)
                        *existed = (int)v;
        } else {
                r = kc_bad_result(kc, &c, "a bool");
        }
        kc_call_end(kc, &c);
        return kc_leave(kc, r);
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
