// SPDX-License-Identifier: MIT
/*
 * kbench: GET latency and throughput of kcached against Redis itself and the proxies in front of
 * it.
 *
 * Each target is one way of asking for the same 100-byte value: RESP GET over TCP (Redis direct,
 * twemproxy), RESP GET over a Unix socket (the byte relay), or msgpack-RPC "get" over a Unix socket
 * (kcached). Two measurements per target:
 *
 *   seq   one connection, one request at a time: mean, p50, p99 of N requests after a warm-up;
 *   conc  C connections driven by this one thread through epoll, each keeping exactly one request
 *         in flight for T seconds (after a short warm-up): replies per second, p50, p99.
 *
 * Timings on the machines we have drift between levels within minutes, so a comparison between
 * two runs means little. Instead the targets are interleaved in rounds (A B C D, B C D A, ...: the
 * order rotates so that no target always runs first) and each figure printed at the end is the
 * median over the rounds. Every round's figures are printed too, so a drift is visible.
 *
 * Each target presets the value through itself first (SET, or kcached's "set", which stores it in
 * kcached's envelope) and every reply is checked byte for byte: a target that answers the wrong
 * thing fails the run instead of looking fast.
 *
 * Usage: kbench [-n N] [-w W] [-c C] [-T SECONDS] [-r ROUNDS] [-s BYTES] [-l LABEL] NAME=ADDR...
 *   ADDR is tcp:HOST:PORT (RESP), unix:PATH (RESP) or kc:PATH (kcached msgpack-RPC).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#define KBENCH_TARGETS_MAX 8
#define KBENCH_ROUNDS_MAX  50
#define KBENCH_CLIENTS_MAX 1000
#define KBENCH_VALUE_MAX   4096
#define KBENCH_RBUF        (KBENCH_VALUE_MAX + 256)
#define KBENCH_KEY         "kbench:v"
#define KBENCH_CONNECT_S   10.0

enum kbench_kind {
        KBENCH_RESP, /* Redis protocol: Redis, twemproxy, the relay */
        KBENCH_KC,   /* kcached msgpack-RPC */
};

struct conn {
        int fd;
        uint32_t msgid;  /* of the request in flight (kcached) */
        uint64_t t_sent; /* ns, CLOCK_MONOTONIC */
        size_t rlen;
        unsigned char rbuf[KBENCH_RBUF];
};

/* The figures of one measurement; latencies in microseconds. */
struct result {
        double mean;
        double p50;
        double p99;
        double rate; /* replies per second (conc only) */
};

struct target {
        const char *name;
        enum kbench_kind kind;
        bool is_unix;
        char host[64];
        int port;
        char path[sizeof(((struct sockaddr_un *)NULL)->sun_path)];
        uint32_t msgid;
        struct conn *seq;  /* owned */
        struct conn *conc; /* owned, n_clients of them */
        struct result seq_res[KBENCH_ROUNDS_MAX];
        struct result conc_res[KBENCH_ROUNDS_MAX];
};

/* A reply as far as kbench cares. */
enum reply_type {
        REPLY_VALUE, /* the value bytes: RESP bulk string, msgpack bin/str */
        REPLY_OK,    /* +OK or msgpack true: the answer to a set */
        REPLY_OTHER, /* anything else: a miss, an error */
};

struct reply {
        enum reply_type type;
        const unsigned char *val; /* ref into conn->rbuf */
        size_t vlen;
};

struct samples {
        double *v; /* owned */
        size_t n;
        size_t cap;
};

static struct {
        long n_seq;
        long n_warm;
        int n_clients;
        double conc_s;
        double conc_warm_s;
        int n_rounds;
        size_t value_len;
        const char *label;
        unsigned char value[KBENCH_VALUE_MAX];
        char key[64];
        struct target targets[KBENCH_TARGETS_MAX];
        int n_targets;
} opt = {
        .n_seq = 200000,
        .n_warm = 20000,
        .n_clients = 50,
        .conc_s = 2.0,
        .conc_warm_s = 0.25,
        .n_rounds = 5,
        .value_len = 100,
        .label = "",
};

static uint64_t
now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void
die(const char *what, const char *why)
{
        fprintf(stderr, "kbench: %s: %s\n", what, why);
        exit(1);
}

static void *
xcalloc(size_t n, size_t size)
{
        void *p = calloc(n, size);

        if (p == NULL)
                die("calloc", strerror(errno));
        return p;
}

static void
samples_add(struct samples *s, double v)
{
        if (s->n == s->cap) {
                size_t cap = s->cap != 0 ? s->cap * 2 : 1 << 16;
                double *nv = realloc(s->v, cap * sizeof(*nv));

                if (nv == NULL)
                        die("realloc", strerror(errno));
                s->v = nv;
                s->cap = cap;
        }
        s->v[s->n++] = v;
}

static int
cmp_double(const void *a, const void *b)
{
        double x = *(const double *)a, y = *(const double *)b;

        return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted values. */
static double
percentile(const double *sorted, size_t n, double p)
{
        size_t rank = (size_t)ceil(p / 100.0 * (double)n);

        if (n == 0)
                return NAN;
        if (rank < 1)
                rank = 1;
        return sorted[rank - 1];
}

/* Sorts s in place. */
static void
samples_result(struct samples *s, struct result *res)
{
        double sum = 0;

        for (size_t i = 0; i < s->n; i++)
                sum += s->v[i];
        qsort(s->v, s->n, sizeof(*s->v), cmp_double);
        res->mean = s->n != 0 ? sum / (double)s->n : NAN;
        res->p50 = percentile(s->v, s->n, 50);
        res->p99 = percentile(s->v, s->n, 99);
}

/* ---- requests ---------------------------------------------------------------------------- */

static size_t
put_be32(unsigned char *p, uint32_t v)
{
        p[0] = (unsigned char)(v >> 24);
        p[1] = (unsigned char)(v >> 16);
        p[2] = (unsigned char)(v >> 8);
        p[3] = (unsigned char)v;
        return 4;
}

/* msgpack str or bin header for n bytes (n < 2^32). */
static size_t
mp_put_bytes_hdr(unsigned char *p, size_t n, bool is_bin)
{
        if (!is_bin && n < 32) {
                p[0] = (unsigned char)(0xa0 | n);
                return 1;
        }
        if (n < 256) {
                p[0] = is_bin ? 0xc4 : 0xd9;
                p[1] = (unsigned char)n;
                return 2;
        }
        if (n < 65536) {
                p[0] = is_bin ? 0xc5 : 0xda;
                p[1] = (unsigned char)(n >> 8);
                p[2] = (unsigned char)n;
                return 3;
        }
        p[0] = is_bin ? 0xc6 : 0xdb;
        return 1 + put_be32(p + 1, (uint32_t)n);
}

static size_t
mp_put_str(unsigned char *p, const void *s, size_t n, bool is_bin)
{
        size_t h = mp_put_bytes_hdr(p, n, is_bin);

        memcpy(p + h, s, n);
        return h + n;
}

static size_t
resp_put_bulk(unsigned char *p, const void *s, size_t n)
{
        int h = sprintf((char *)p, "$%zu\r\n", n);

        memcpy(p + h, s, n);
        memcpy(p + h + n, "\r\n", 2);
        return (size_t)h + n + 2;
}

/*
 * Builds GET (is_set false) or SET of the benchmark key into buf, which has room for the value
 * plus 256 bytes. The msgid is a uint32 in its fixed 5-byte form so that every request has the
 * same size.
 */
static size_t
build_request(struct target *t, struct conn *c, unsigned char *buf, bool is_set)
{
        size_t klen = strlen(opt.key), n = 0;

        if (t->kind == KBENCH_RESP) {
                n += (size_t)sprintf((char *)buf, "*%d\r\n", is_set ? 3 : 2);
                n += resp_put_bulk(buf + n, is_set ? "SET" : "GET", 3);
                n += resp_put_bulk(buf + n, opt.key, klen);
                if (is_set)
                        n += resp_put_bulk(buf + n, opt.value, opt.value_len);
                return n;
        }
        buf[n++] = 0x94;
        buf[n++] = 0x00;
        buf[n++] = 0xce;
        c->msgid = t->msgid++;
        n += put_be32(buf + n, c->msgid);
        n += mp_put_str(buf + n, is_set ? "set" : "get", 3, false);
        buf[n++] = is_set ? 0x92 : 0x91;
        n += mp_put_str(buf + n, opt.key, klen, false);
        if (is_set)
                n += mp_put_str(buf + n, opt.value, opt.value_len, true);
        return n;
}

/* ---- replies ----------------------------------------------------------------------------- */

static uint64_t
get_be(const unsigned char *p, int n)
{
        uint64_t v = 0;

        for (int i = 0; i < n; i++)
                v = v << 8 | p[i];
        return v;
}

/*
 * Size of the msgpack object at p: > 0 its size, 0 incomplete, -1 malformed. kcached is trusted
 * no more than any peer: the walk is bounded by n and by depth.
 */
static long
mp_size(const unsigned char *p, size_t n, int depth)
{
        size_t hdr, len = 0, n_items = 0, pos;
        unsigned char b;

        if (n == 0)
                return 0;
        if (depth > 16)
                return -1;
        b = p[0];
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
                return 1;
        if (b >= 0xa0 && b <= 0xbf) {
                hdr = 1;
                len = b & 0x1f;
        } else if (b >= 0x80 && b <= 0x9f) {
                hdr = 1;
                n_items = (size_t)(b & 0x0f) * (b < 0x90 ? 2 : 1);
        } else {
                static const signed char fixed[0xe0 - 0xc4] = {
                        [0xca - 0xc4] = 5, [0xcb - 0xc4] = 9,  [0xcc - 0xc4] = 2,
                        [0xcd - 0xc4] = 3, [0xce - 0xc4] = 5,  [0xcf - 0xc4] = 9,
                        [0xd0 - 0xc4] = 2, [0xd1 - 0xc4] = 3,  [0xd2 - 0xc4] = 5,
                        [0xd3 - 0xc4] = 9, [0xd4 - 0xc4] = 3,  [0xd5 - 0xc4] = 4,
                        [0xd6 - 0xc4] = 6, [0xd7 - 0xc4] = 10, [0xd8 - 0xc4] = 18,
                };
                int lenw;

                if (b == 0xc1)
                        return -1;
                if (fixed[b - 0xc4] != 0)
                        return fixed[b - 0xc4];
                switch (b) {
                case 0xc4:
                case 0xd9:
                        lenw = 1;
                        break;
                case 0xc5:
                case 0xda:
                        lenw = 2;
                        break;
                case 0xc6:
                case 0xdb:
                        lenw = 4;
                        break;
                case 0xc7:
                        lenw = -1;
                        break;
                case 0xc8:
                        lenw = -2;
                        break;
                case 0xc9:
                        lenw = -4;
                        break;
                case 0xdc:
                case 0xde:
                        lenw = 20 + 2;
                        break;
                default:
                        lenw = 20 + 4;
                        break; /* 0xdd, 0xdf */
                }
                if (lenw > 20) {
                        /* array or map: a count of items */
                        hdr = 1 + (size_t)(lenw - 20);
                        if (n < hdr)
                                return 0;
                        n_items =
                                (size_t)get_be(p + 1, lenw - 20) * (b == 0xde || b == 0xdf ? 2 : 1);
                } else {
                        /* str, bin, ext: a length, and for ext a type byte */
                        int w = lenw < 0 ? -lenw : lenw;

                        hdr = 1 + (size_t)w + (lenw < 0 ? 1 : 0);
                        if (n < hdr)
                                return 0;
                        len = (size_t)get_be(p + 1, w);
                }
        }
        if (n_items == 0)
                return hdr + len <= n ? (long)(hdr + len) : 0;
        pos = hdr;
        for (size_t i = 0; i < n_items; i++) {
                long sz = mp_size(p + pos, n - pos, depth + 1);

                if (sz <= 0)
                        return sz;
                pos += (size_t)sz;
        }
        return (long)pos;
}

/* Reads a msgpack unsigned integer; returns its size, or -1 if it is not one. */
static int
mp_get_uint(const unsigned char *p, size_t n, uint64_t *v)
{
        static const int widths[] = {1, 2, 4, 8};

        if (p[0] <= 0x7f) {
                *v = p[0];
                return 1;
        }
        if (p[0] < 0xcc || p[0] > 0xcf || n < 1 + (size_t)widths[p[0] - 0xcc])
                return -1;
        *v = get_be(p + 1, widths[p[0] - 0xcc]);
        return 1 + widths[p[0] - 0xcc];
}

/* Prints an unexpected reply, its printable bytes, so that the failure explains itself. */
static void
print_bad_reply(const struct target *t, const char *why, const unsigned char *p, size_t n)
{
        fprintf(stderr, "kbench: %s: %s: \"", t->name, why);
        for (size_t i = 0; i < n && i < 200; i++)
                fputc(p[i] >= 0x20 && p[i] < 0x7f ? p[i] : '.', stderr);
        fprintf(stderr, "\"\n");
}

/* kcached: [1, msgid, error, result]. Returns the size of the response, 0 incomplete, -1 bad. */
static long
parse_kc(struct target *t, const struct conn *c, const unsigned char *p, size_t n, struct reply *r)
{
        long size = mp_size(p, n, 0);
        size_t pos = 2;
        uint64_t msgid;
        int w;

        if (size <= 0) {
                if (size < 0)
                        print_bad_reply(t, "malformed msgpack", p, n);
                return size;
        }
        if (size < 5 || p[0] != 0x94 || p[1] != 0x01) {
                print_bad_reply(t, "not a response", p, (size_t)size);
                return -1;
        }
        w = mp_get_uint(p + pos, (size_t)size - pos, &msgid);
        if (w < 0 || msgid != c->msgid) {
                print_bad_reply(t, "unexpected msgid", p, (size_t)size);
                return -1;
        }
        pos += (size_t)w;
        r->type = REPLY_OTHER;
        if (p[pos] != 0xc0) {
                print_bad_reply(t, "error response", p, (size_t)size);
                return -1;
        }
        pos++;
        if (p[pos] == 0xc3) {
                r->type = REPLY_OK;
        } else if (p[pos] == 0xc4 || p[pos] == 0xc5 || p[pos] == 0xc6 || p[pos] == 0xd9 ||
                   p[pos] == 0xda || p[pos] == 0xdb || (p[pos] & 0xe0) == 0xa0) {
                size_t hdr = 1;

                if ((p[pos] & 0xe0) == 0xa0) {
                        r->vlen = p[pos] & 0x1f;
                } else {
                        int lw = p[pos] == 0xc4 || p[pos] == 0xd9   ? 1
                                 : p[pos] == 0xc5 || p[pos] == 0xda ? 2
                                                                    : 4;

                        hdr += (size_t)lw;
                        r->vlen = (size_t)get_be(p + pos + 1, lw);
                }
                r->type = REPLY_VALUE;
                r->val = p + pos + hdr;
        }
        return size;
}

/* RESP: one reply line, and for a bulk string its payload. */
static long
parse_resp(struct target *t, const unsigned char *p, size_t n, struct reply *r)
{
        const unsigned char *cr = memchr(p, '\r', n);
        size_t line;
        long blen;

        if (cr == NULL || (size_t)(cr - p) + 1 >= n) {
                if (n > 64) {
                        print_bad_reply(t, "no CRLF in a reply line", p, n);
                        return -1;
                }
                return 0;
        }
        line = (size_t)(cr - p) + 2;
        r->type = REPLY_OTHER;
        switch (p[0]) {
        case '$':
                blen = strtol((const char *)p + 1, NULL, 10);
                if (blen < 0 || blen > KBENCH_VALUE_MAX) {
                        print_bad_reply(t, "nil or oversized bulk string", p, line);
                        return -1;
                }
                if (n < line + (size_t)blen + 2)
                        return 0;
                r->type = REPLY_VALUE;
                r->val = p + line;
                r->vlen = (size_t)blen;
                return (long)(line + (size_t)blen + 2);
        case '+':
                if (line == 5 && memcmp(p, "+OK", 3) == 0)
                        r->type = REPLY_OK;
                return (long)line;
        case '-':
                print_bad_reply(t, "error reply", p, line);
                return -1;
        default:
                print_bad_reply(t, "unexpected reply", p, line);
                return -1;
        }
}

/*
 * Parses the one reply a connection waits for. Returns 1 when it is complete and is what the
 * request asked for (consumed from rbuf), 0 when more bytes are needed, -1 when it is wrong.
 */
static int
conn_take_reply(struct target *t, struct conn *c, enum reply_type want)
{
        struct reply r = {0};
        long size = t->kind == KBENCH_KC ? parse_kc(t, c, c->rbuf, c->rlen, &r)
                                         : parse_resp(t, c->rbuf, c->rlen, &r);

        if (size <= 0)
                return (int)size;
        if (r.type != want) {
                print_bad_reply(t, want == REPLY_OK ? "set: not OK" : "get: not a value", c->rbuf,
                                (size_t)size);
                return -1;
        }
        if (want == REPLY_VALUE &&
            (r.vlen != opt.value_len || memcmp(r.val, opt.value, opt.value_len) != 0)) {
                print_bad_reply(t, "get: wrong value", c->rbuf, (size_t)size);
                return -1;
        }
        /* One request in flight: anything after its reply is a protocol error. */
        if ((size_t)size != c->rlen) {
                print_bad_reply(t, "bytes after the reply", c->rbuf, c->rlen);
                return -1;
        }
        c->rlen = 0;
        return 1;
}

/* ---- connections ------------------------------------------------------------------------- */

static int
target_connect(const struct target *t)
{
        uint64_t deadline = now_ns() + (uint64_t)(KBENCH_CONNECT_S * 1e9);

        for (;;) {
                int fd, rc;

                if (t->is_unix) {
                        struct sockaddr_un sa = {.sun_family = AF_UNIX};

                        memcpy(sa.sun_path, t->path, sizeof(sa.sun_path));
                        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
                        if (fd == -1)
                                die("socket", strerror(errno));
                        rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
                } else {
                        struct sockaddr_in sa = {.sin_family = AF_INET,
                                                 .sin_port = htons((uint16_t)t->port)};
                        int one = 1;

                        if (inet_pton(AF_INET, t->host, &sa.sin_addr) != 1)
                                die(t->host, "not an IPv4 address");
                        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                        if (fd == -1)
                                die("socket", strerror(errno));
                        /* As any Redis client does: a request must not wait for Nagle. */
                        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                        rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
                }
                if (rc == 0)
                        return fd;
                close(fd);
                /* The servers were started just before us: wait for them to listen. */
                if ((errno != ENOENT && errno != ECONNREFUSED) || now_ns() > deadline)
                        die(t->name, strerror(errno));
                usleep(20000);
        }
}

static void
conn_send(struct target *t, struct conn *c, bool is_set)
{
        unsigned char buf[KBENCH_VALUE_MAX + 256];
        size_t n = build_request(t, c, buf, is_set);
        ssize_t w;

        c->t_sent = now_ns();
        w = write(c->fd, buf, n);
        /* One small request in flight on an otherwise idle socket: a short write cannot happen. */
        if (w != (ssize_t)n)
                die(t->name, w == -1 ? strerror(errno) : "short write");
}

static int
fcntl_nonblock(int fd)
{
        int fl = fcntl(fd, F_GETFL);

        return fl == -1 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* Reads what is there; returns false if the socket would block. */
static bool
conn_read(struct target *t, struct conn *c)
{
        ssize_t n = read(c->fd, c->rbuf + c->rlen, sizeof(c->rbuf) - c->rlen);

        if (n == -1 && (errno == EAGAIN || errno == EINTR))
                return false;
        if (n == -1)
                die(t->name, strerror(errno));
        if (n == 0)
                die(t->name, "connection closed by the server");
        c->rlen += (size_t)n;
        return true;
}

/* Blocking request and reply on c: 0 if the reply is the one expected, -1 if not (printed). */
static int
conn_try_call(struct target *t, struct conn *c, bool is_set)
{
        int rc;

        conn_send(t, c, is_set);
        do {
                conn_read(t, c);
                rc = conn_take_reply(t, c, is_set ? REPLY_OK : REPLY_VALUE);
        } while (rc == 0);
        return rc < 0 ? -1 : 0;
}

static void
conn_call(struct target *t, struct conn *c, bool is_set)
{
        if (conn_try_call(t, c, is_set) < 0)
                exit(1);
}

/*
 * Sets the value through the target and reads it back. A proxy started a moment ago may not
 * have reached Redis yet (kcached answers UNAVAILABLE until its pool connects), so failures are
 * retried on a fresh connection for a few seconds.
 */
static void
target_preset(struct target *t)
{
        uint64_t deadline = now_ns() + (uint64_t)(KBENCH_CONNECT_S * 1e9);

        for (;;) {
                t->seq->fd = target_connect(t);
                t->seq->rlen = 0;
                if (conn_try_call(t, t->seq, true) == 0 && conn_try_call(t, t->seq, false) == 0)
                        return;
                close(t->seq->fd);
                if (now_ns() > deadline)
                        die(t->name, "preset failed");
                fprintf(stderr, "kbench: %s: preset failed, retrying\n", t->name);
                usleep(100000);
        }
}

/* ---- measurements ------------------------------------------------------------------------ */

static void
run_seq(struct target *t, struct result *res, struct samples *s)
{
        s->n = 0;
        for (long i = 0; i < opt.n_warm; i++)
                conn_call(t, t->seq, false);
        for (long i = 0; i < opt.n_seq; i++) {
                uint64_t t0 = now_ns();

                conn_call(t, t->seq, false);
                samples_add(s, (double)(now_ns() - t0) / 1e3);
        }
        samples_result(s, res);
}

static void
run_conc(struct target *t, struct result *res, struct samples *s)
{
        struct epoll_event evs[64];
        int ep = epoll_create1(EPOLL_CLOEXEC), n_inflight = 0;
        uint64_t start = now_ns();
        uint64_t t_measure = start + (uint64_t)(opt.conc_warm_s * 1e9);
        uint64_t t_end = t_measure + (uint64_t)(opt.conc_s * 1e9);
        uint64_t last_reply = start;

        if (ep == -1)
                die("epoll_create1", strerror(errno));
        s->n = 0;
        for (int i = 0; i < opt.n_clients; i++) {
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &t->conc[i]};

                if (epoll_ctl(ep, EPOLL_CTL_ADD, t->conc[i].fd, &ev) == -1)
                        die("epoll_ctl", strerror(errno));
                conn_send(t, &t->conc[i], false);
                n_inflight++;
        }
        /* After t_end no new request is sent; the ones in flight are drained, not counted. */
        while (n_inflight > 0) {
                int n = epoll_wait(ep, evs, 64, 1000);

                if (n == -1 && errno != EINTR)
                        die("epoll_wait", strerror(errno));
                if (n <= 0 && now_ns() - last_reply > 5000000000u)
                        die(t->name, "no reply for 5 s");
                for (int i = 0; i < n; i++) {
                        struct conn *c = evs[i].data.ptr;
                        uint64_t tr;
                        int rc;

                        if (!conn_read(t, c))
                                continue;
                        rc = conn_take_reply(t, c, REPLY_VALUE);
                        if (rc < 0)
                                exit(1);
                        if (rc == 0)
                                continue;
                        tr = last_reply = now_ns();
                        if (tr >= t_measure && tr < t_end)
                                samples_add(s, (double)(tr - c->t_sent) / 1e3);
                        if (tr < t_end)
                                conn_send(t, c, false);
                        else
                                n_inflight--;
                }
        }
        close(ep);
        samples_result(s, res);
        res->rate = (double)s->n / opt.conc_s;
}

/* ---- report ------------------------------------------------------------------------------ */

/* Sorts v in place. */
static double
median(double *v, int n)
{
        qsort(v, (size_t)n, sizeof(v[0]), cmp_double);
        return n % 2 != 0 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static double
field(const struct result *r, size_t off)
{
        return *(const double *)(const void *)((const char *)r + off);
}

static double
median_of(const struct result *rs, int n, size_t off)
{
        double v[KBENCH_ROUNDS_MAX];

        for (int i = 0; i < n; i++)
                v[i] = field(&rs[i], off);
        return median(v, n);
}

static void
print_machine(void)
{
        char model[256] = "?", line[512], date[64];
        struct utsname u;
        cpu_set_t set;
        time_t now = time(NULL);
        FILE *f = fopen("/proc/cpuinfo", "r");

        if (f != NULL) {
                while (fgets(line, sizeof(line), f) != NULL) {
                        char *colon = strchr(line, ':');

                        if (strncmp(line, "model name", 10) == 0 && colon != NULL) {
                                snprintf(model, sizeof(model), "%s", colon + 2);
                                model[strcspn(model, "\n")] = '\0';
                                break;
                        }
                }
                fclose(f);
        }
        uname(&u);
        CPU_ZERO(&set);
        sched_getaffinity(0, sizeof(set), &set);
        strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S UTC", gmtime(&now));
        printf("machine: nproc %ld, CPU \"%s\", %s %s %s, date %s\n", sysconf(_SC_NPROCESSORS_ONLN),
               model, u.sysname, u.release, u.machine, date);
        printf("kbench:  %s; allowed CPUs for kbench: %d\n", opt.label, CPU_COUNT(&set));
}

/* What a round's figure is, and whether lower is better. */
struct metric {
        const char *name;
        bool is_conc;
        size_t off;
        bool is_lower_better;
};

static const struct metric metrics[] = {
        {"seq mean", false, offsetof(struct result, mean), true},
        {"seq p50", false, offsetof(struct result, p50), true},
        {"seq p99", false, offsetof(struct result, p99), true},
        {"conc GET/s", true, offsetof(struct result, rate), false},
        {"conc p99", true, offsetof(struct result, p99), true},
};

/*
 * Compares round by round: the two targets ran seconds apart in the same round, so a machine that
 * drifts between levels shifts both, and the ratio survives where the absolute figures do not.
 */
static void
print_paired(const struct target *kc, const struct target *o)
{
        printf("    vs %-10s", o->name);
        for (size_t m = 0; m < sizeof(metrics) / sizeof(metrics[0]); m++) {
                const struct metric *mt = &metrics[m];
                double ratios[KBENCH_ROUNDS_MAX];
                int n_better = 0;

                for (int r = 0; r < opt.n_rounds; r++) {
                        const struct result *a = mt->is_conc ? &kc->conc_res[r] : &kc->seq_res[r];
                        const struct result *b = mt->is_conc ? &o->conc_res[r] : &o->seq_res[r];
                        double x = field(a, mt->off), y = field(b, mt->off);

                        ratios[r] = x / y;
                        n_better += mt->is_lower_better ? x < y : x > y;
                }
                printf("%s %s %.2fx %d/%d", m != 0 ? "," : "", mt->name,
                       median(ratios, opt.n_rounds), n_better, opt.n_rounds);
        }
        printf("\n");
}

/* Whether kcached's median is better than o's on every metric. */
static bool
kcached_beats(const struct target *kc, const struct target *o)
{
        for (size_t m = 0; m < sizeof(metrics) / sizeof(metrics[0]); m++) {
                const struct metric *mt = &metrics[m];
                double x =
                        median_of(mt->is_conc ? kc->conc_res : kc->seq_res, opt.n_rounds, mt->off);
                double y = median_of(mt->is_conc ? o->conc_res : o->seq_res, opt.n_rounds, mt->off);

                if (mt->is_lower_better ? x >= y : x <= y)
                        return false;
        }
        return true;
}

static void
print_summary(void)
{
        const struct target *tw = NULL, *kc = NULL;

        printf("\n== %s: median of %d rounds ==\n", opt.label, opt.n_rounds);
        printf("(a) GET %zu B, 1 client, sequential, %ld requests per round (after %ld warm-up)\n",
               opt.value_len, opt.n_seq, opt.n_warm);
        printf("    %-12s %9s %9s %9s   %s\n", "target", "mean us", "p50 us", "p99 us",
               "means of the rounds");
        for (int i = 0; i < opt.n_targets; i++) {
                const struct target *t = &opt.targets[i];

                printf("    %-12s %9.2f %9.2f %9.2f   [", t->name,
                       median_of(t->seq_res, opt.n_rounds, offsetof(struct result, mean)),
                       median_of(t->seq_res, opt.n_rounds, offsetof(struct result, p50)),
                       median_of(t->seq_res, opt.n_rounds, offsetof(struct result, p99)));
                for (int r = 0; r < opt.n_rounds; r++)
                        printf("%s%.2f", r != 0 ? " " : "", t->seq_res[r].mean);
                printf("]\n");
                if (strcmp(t->name, "twemproxy") == 0)
                        tw = t;
                if (strcmp(t->name, "kcached") == 0)
                        kc = t;
        }
        printf("(b) GET %zu B, %d clients, 1 in flight each, %.1f s per round (after %.2f s warm-up)\n",
               opt.value_len, opt.n_clients, opt.conc_s, opt.conc_warm_s);
        printf("    %-12s %9s %9s %9s   %s\n", "target", "kGET/s", "p50 us", "p99 us",
               "kGET/s of the rounds");
        for (int i = 0; i < opt.n_targets; i++) {
                const struct target *t = &opt.targets[i];

                printf("    %-12s %9.1f %9.1f %9.1f   [", t->name,
                       median_of(t->conc_res, opt.n_rounds, offsetof(struct result, rate)) / 1e3,
                       median_of(t->conc_res, opt.n_rounds, offsetof(struct result, p50)),
                       median_of(t->conc_res, opt.n_rounds, offsetof(struct result, p99)));
                for (int r = 0; r < opt.n_rounds; r++)
                        printf("%s%.1f", r != 0 ? " " : "", t->conc_res[r].rate / 1e3);
                printf("]\n");
        }
        if (kc == NULL)
                return;
        printf("kcached against each target, paired by round (ratio kcached/other: median of the "
               "rounds, and in how many rounds kcached was better):\n");
        for (int i = 0; i < opt.n_targets; i++) {
                if (&opt.targets[i] != kc)
                        print_paired(kc, &opt.targets[i]);
        }
        if (tw != NULL)
                printf("kcached %s twemproxy on every median above\n",
                       kcached_beats(kc, tw) ? "BEATS" : "does NOT beat");
}

/* ---- main -------------------------------------------------------------------------------- */

static void
parse_target(char *arg)
{
        struct target *t;
        char *eq = strchr(arg, '='), *addr, *colon;

        if (opt.n_targets == KBENCH_TARGETS_MAX)
                die(arg, "too many targets");
        if (eq == NULL)
                die(arg, "expected NAME=tcp:HOST:PORT, NAME=unix:PATH or NAME=kc:PATH");
        t = &opt.targets[opt.n_targets++];
        *eq = '\0';
        t->name = arg;
        addr = eq + 1;
        if (strncmp(addr, "tcp:", 4) == 0) {
                t->kind = KBENCH_RESP;
                colon = strrchr(addr + 4, ':');
                if (colon == NULL || (size_t)(colon - addr - 4) >= sizeof(t->host))
                        die(addr, "expected tcp:HOST:PORT");
                memcpy(t->host, addr + 4, (size_t)(colon - addr - 4));
                t->port = atoi(colon + 1);
        } else if (strncmp(addr, "unix:", 5) == 0 || strncmp(addr, "kc:", 3) == 0) {
                const char *path = strchr(addr, ':') + 1;

                t->kind = addr[0] == 'k' ? KBENCH_KC : KBENCH_RESP;
                t->is_unix = true;
                if (strlen(path) >= sizeof(t->path))
                        die(path, "socket path too long");
                memcpy(t->path, path, strlen(path) + 1);
        } else {
                die(addr, "expected tcp:HOST:PORT, unix:PATH or kc:PATH");
        }
}

static void
usage(void)
{
        fprintf(stderr,
                "usage: kbench [-n N] [-w W] [-c CLIENTS] [-T SECONDS] [-r ROUNDS] [-s BYTES] "
                "[-l LABEL] NAME=ADDR...\n"
                "  ADDR: tcp:HOST:PORT (RESP), unix:PATH (RESP), kc:PATH (kcached)\n");
        exit(2);
}

int
main(int argc, char **argv)
{
        struct samples s = {0};
        int ch;

        while ((ch = getopt(argc, argv, "n:w:c:T:r:s:l:")) != -1) {
                switch (ch) {
                case 'n':
                        opt.n_seq = atol(optarg);
                        break;
                case 'w':
                        opt.n_warm = atol(optarg);
                        break;
                case 'c':
                        opt.n_clients = atoi(optarg);
                        break;
                case 'T':
                        opt.conc_s = atof(optarg);
                        break;
                case 'r':
                        opt.n_rounds = atoi(optarg);
                        break;
                case 's':
                        opt.value_len = (size_t)atol(optarg);
                        break;
                case 'l':
                        opt.label = optarg;
                        break;
                default:
                        usage();
                }
        }
        if (optind == argc || opt.n_seq < 1 || opt.n_warm < 0 || opt.n_clients < 1 ||
            opt.n_clients > KBENCH_CLIENTS_MAX || opt.conc_s <= 0 || opt.n_rounds < 1 ||
            opt.n_rounds > KBENCH_ROUNDS_MAX || opt.value_len > KBENCH_VALUE_MAX)
                usage();
        for (int i = optind; i < argc; i++)
                parse_target(argv[i]);
        signal(SIGPIPE, SIG_IGN);
        snprintf(opt.key, sizeof(opt.key), "%s%zu", KBENCH_KEY, opt.value_len);
        for (size_t i = 0; i < opt.value_len; i++)
                opt.value[i] = (unsigned char)('a' + i % 26);
        print_machine();

        for (int i = 0; i < opt.n_targets; i++) {
                struct target *t = &opt.targets[i];

                t->seq = xcalloc(1, sizeof(*t->seq));
                /* Preset through the target itself: kcached stores the value in its envelope. */
                target_preset(t);
                t->conc = xcalloc((size_t)opt.n_clients, sizeof(*t->conc));
                for (int j = 0; j < opt.n_clients; j++) {
                        t->conc[j].fd = target_connect(t);
                        if (fcntl_nonblock(t->conc[j].fd) == -1)
                                die("fcntl", strerror(errno));
                }
        }
        for (int r = 0; r < opt.n_rounds; r++) {
                for (int k = 0; k < opt.n_targets; k++) {
                        struct target *t = &opt.targets[(r + k) % opt.n_targets];
                        struct result *res = &t->seq_res[r];

                        run_seq(t, res, &s);
                        printf("round %d  seq   %-12s mean %8.2f  p50 %8.2f  p99 %8.2f us\n", r + 1,
                               t->name, res->mean, res->p50, res->p99);
                        fflush(stdout);
                }
                for (int k = 0; k < opt.n_targets; k++) {
                        struct target *t = &opt.targets[(r + k) % opt.n_targets];
                        struct result *res = &t->conc_res[r];

                        run_conc(t, res, &s);
                        printf("round %d  conc  %-12s %8.1f kGET/s  p50 %8.1f  p99 %8.1f us\n",
                               r + 1, t->name, res->rate / 1e3, res->p50, res->p99);
                        fflush(stdout);
                }
        }
        print_summary();
        free(s.v);
        for (int i = 0; i < opt.n_targets; i++) {
                close(opt.targets[i].seq->fd);
                free(opt.targets[i].seq);
                for (int j = 0; j < opt.n_clients; j++)
                        close(opt.targets[i].conc[j].fd);
                free(opt.targets[i].conc);
        }
        return 0;
}
