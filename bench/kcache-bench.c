// SPDX-License-Identifier: MIT
/*
 * kcache-bench: load generator for kcached, and for Redis, twemproxy or any relay in front of
 * Redis through the same binary (--resp), so that every target is driven the same way.
 *
 *   threads (-t) --> connections (-c), each keeping -P requests in flight --> one target
 *
 * Each thread owns its connections and an epoll loop: a reply is parsed, timed and checked, and
 * the connection sends its next request at once; writes are batched per loop turn, so -P > 1 is
 * real pipelining. Keys are "kb:<value size>:<index>" over a key space of -k keys, picked
 * uniformly or with Zipf(-z) popularity; values are a pattern derived from the key, so every
 * value read back is checked (a target that answers the wrong thing fails the run instead of
 * looking fast).
 *
 * Operations: get, set (-r: the share of gets), or --get-or-set: kcached's get_or_set, and a fill
 * when it grants a lease; over RESP the cache-aside equivalent, GET and a SET on a miss. The
 * follow-up (fill, SET) is an operation of its own.
 *
 * Latency is send to reply of one request, recorded in a log-bucketed histogram (64 buckets per
 * power of two: under 1.6 % error) per thread and merged: p50, p90, p99, p99.9 and max. Only
 * requests sent after the warm-up (-w) and answered before the end (-d, or after -n requests)
 * are counted. The header says where the client runs (allowed CPUs, --cpus pinning) and on what
 * machine; the last line ("RESULT ...") is for scripts (bench/compare).
 *
 * Usage: kcache-bench [options] ADDR   (kcache-bench -h lists them)
 *   ADDR: unix:PATH, tcp:HOST:PORT, a path (Unix socket) or HOST:PORT.
 *   Build: cc -std=c11 -O2 -pthread -o kcache-bench bench/kcache-bench.c
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* pthread_setaffinity_np, CPU_SET */
#endif
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
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

#define KB_MAX_DEPTH   256 /* msgid = seq << 8 | slot */
#define KB_MAX_THREADS 64
#define KB_MAX_CONNS   10000
#define KB_KEY_MAX     64
#define KB_HIST_SUB    64 /* buckets per power of two */
#define KB_HIST_N      (KB_HIST_SUB * 2 + KB_HIST_SUB * 40)
#define KB_DRAIN_S     5.0 /* longest wait for the replies in flight at the end */

enum op { OP_GET, OP_SET, OP_GOS, OP_FILL, OP_COUNT };

static const char *const op_names[OP_COUNT] = {"get", "set", "get_or_set", "fill"};

static struct {
        bool is_resp;
        bool is_unix;
        char path[sizeof(((struct sockaddr_un *)NULL)->sun_path)];
        struct sockaddr_storage ss;
        socklen_t sslen;
        const char *addr;
        int n_conns;
        int depth;
        int n_threads;
        double duration_s;
        long long count; /* > 0: measure this many requests instead of duration_s */
        double warm_s;
        uint32_t n_keys;
        double zipf_s; /* 0: uniform */
        size_t value_len;
        int get_pct;
        bool get_or_set;
        bool preload;
        bool near_off;
        const char *label;
        const char *cpus;
        int cpu_list[KB_MAX_THREADS];
        int n_cpu_list;
        int cpu_pids[4]; /* --cpu-of: processes whose CPU time the measured window costs */
        int n_cpu_pids;
        double *zipf_cdf; /* owned; n_keys entries */
        uint32_t *zipf_perm;
} opt = {
        .n_conns = 1,
        .depth = 1,
        .n_threads = 1,
        .duration_s = 5,
        .warm_s = 1,
        .n_keys = 100000,
        .value_len = 100,
        .get_pct = 100,
        .label = "",
};

/* Shared between the threads: when to count, when to stop. */
static uint64_t t_measure_ns, t_end_ns;
static atomic_llong n_left; /* count mode: requests still to send after the warm-up */
static atomic_int n_failed;

struct hist {
        uint64_t b[KB_HIST_N];
        uint64_t n, max_ns;
        double sum_ns;
};

struct slot {
        uint64_t t_sent;
        uint32_t key;
        uint32_t seq;
        uint8_t op;
        bool in_use;
};

struct conn {
        int fd;
        struct thread *th; /* ref, owner */
        unsigned char *in; /* owned */
        size_t in_len, in_cap;
        unsigned char *out; /* owned */
        size_t out_off, out_len, out_cap;
        bool wants_out;
        struct slot slots[KB_MAX_DEPTH];
        uint32_t fifo[KB_MAX_DEPTH]; /* RESP: slots in the order sent */
        uint32_t fifo_head, fifo_n;
        uint32_t seq;
        int n_inflight;
};

struct thread {
        pthread_t tid;
        int index;
        int ep;
        struct conn *conns; /* owned */
        int n_conns;
        uint64_t rng;
        struct hist hist;
        uint64_t n_ops[OP_COUNT];
        uint64_t n_hits, n_misses, n_errors, n_stale;
        int cpu; /* -1: not pinned */
};

static uint64_t
now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void
sleep_until_ns(uint64_t t)
{
        struct timespec ts = {.tv_sec = (time_t)(t / 1000000000u), .tv_nsec = (long)(t % 1000000000u)};

        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
                ;
}

/* Nanoseconds process pid has run on a CPU, every thread (schedstat); 0 if unknown. */
static uint64_t
cpu_ns_of(int pid)
{
        char path[64];
        DIR *d;
        struct dirent *de;
        uint64_t sum = 0;

        snprintf(path, sizeof(path), "/proc/%d/task", pid);
        d = opendir(path);
        if (d == NULL)
                return 0;
        while ((de = readdir(d)) != NULL) {
                char f[320];
                unsigned long long ns;
                FILE *fp;

                if (de->d_name[0] == '.')
                        continue;
                snprintf(f, sizeof(f), "/proc/%d/task/%s/schedstat", pid, de->d_name);
                fp = fopen(f, "r");
                if (fp == NULL)
                        continue;
                if (fscanf(fp, "%llu", &ns) == 1)
                        sum += ns;
                fclose(fp);
        }
        closedir(d);
        return sum;
}

static void
die(const char *what, const char *why)
{
        fprintf(stderr, "kcache-bench: %s: %s\n", what, why);
        exit(1);
}

static void *
xrealloc(void *p, size_t n)
{
        p = realloc(p, n);
        if (p == NULL)
                die("realloc", strerror(errno));
        return p;
}

static uint64_t
mix64(uint64_t x)
{
        x += 0x9e3779b97f4a7c15ull;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
        return x ^ (x >> 31);
}

static double
rng_unit(uint64_t *state)
{
        *state += 1;
        return (double)(mix64(*state) >> 11) * (1.0 / 9007199254740992.0);
}

/* --- histogram -------------------------------------------------------------------------------- */

static int
msb64(uint64_t v)
{
        return 63 - __builtin_clzll(v);
}

static size_t
hist_index(uint64_t v)
{
        int shift;
        size_t i;

        if (v < 2 * KB_HIST_SUB)
                return (size_t)v;
        shift = msb64(v) - 6; /* v >> shift in [64, 128) */
        i = 2 * KB_HIST_SUB + (size_t)(shift - 1) * KB_HIST_SUB + (size_t)((v >> shift) - 64);
        return i < KB_HIST_N ? i : KB_HIST_N - 1;
}

/* The middle of bucket i, in ns. */
static double
hist_value(size_t i)
{
        size_t shift;

        if (i < 2 * KB_HIST_SUB)
                return (double)i;
        shift = (i - 2 * KB_HIST_SUB) / KB_HIST_SUB + 1;
        return (double)(((i - 2 * KB_HIST_SUB) % KB_HIST_SUB + 64) << shift) +
               (double)(1ull << shift) / 2;
}

static void
hist_add(struct hist *h, uint64_t v)
{
        h->b[hist_index(v)]++;
        h->n++;
        h->sum_ns += (double)v;
        if (v > h->max_ns)
                h->max_ns = v;
}

static void
hist_merge(struct hist *into, const struct hist *h)
{
        for (size_t i = 0; i < KB_HIST_N; i++)
                into->b[i] += h->b[i];
        into->n += h->n;
        into->sum_ns += h->sum_ns;
        if (h->max_ns > into->max_ns)
                into->max_ns = h->max_ns;
}

/* Nearest rank; in microseconds. */
static double
hist_pct(const struct hist *h, double p)
{
        uint64_t rank = (uint64_t)ceil(p / 100.0 * (double)h->n), seen = 0;

        if (h->n == 0)
                return NAN;
        if (rank < 1)
                rank = 1;
        for (size_t i = 0; i < KB_HIST_N; i++) {
                seen += h->b[i];
                if (seen >= rank) {
                        double v = hist_value(i);
                        return (v > (double)h->max_ns ? (double)h->max_ns : v) / 1e3;
                }
        }
        return (double)h->max_ns / 1e3;
}

/* --- keys and values -------------------------------------------------------------------------- */

static uint32_t
pick_key(struct thread *th)
{
        double u = rng_unit(&th->rng);
        uint32_t lo = 0, hi = opt.n_keys - 1;

        if (opt.zipf_cdf == NULL)
                return (uint32_t)(u * opt.n_keys) % opt.n_keys;
        u *= opt.zipf_cdf[opt.n_keys - 1];
        while (lo < hi) {
                uint32_t mid = lo + (hi - lo) / 2;

                if (opt.zipf_cdf[mid] < u)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return opt.zipf_perm[lo];
}

static void
zipf_init(void)
{
        uint64_t st = 42;
        double sum = 0;

        opt.zipf_cdf = xrealloc(NULL, opt.n_keys * sizeof(double));
        opt.zipf_perm = xrealloc(NULL, opt.n_keys * sizeof(uint32_t));
        for (uint32_t i = 0; i < opt.n_keys; i++) {
                sum += 1.0 / pow((double)(i + 1), opt.zipf_s);
                opt.zipf_cdf[i] = sum;
                opt.zipf_perm[i] = i;
        }
        /* Popularity unrelated to the key's index (and so to where a proxy hashes it). */
        for (uint32_t i = opt.n_keys - 1; i > 0; i--) {
                uint32_t j = (uint32_t)(rng_unit(&st) * (i + 1)), t = opt.zipf_perm[i];

                opt.zipf_perm[i] = opt.zipf_perm[j];
                opt.zipf_perm[j] = t;
        }
}

static size_t
key_name(char *buf, uint32_t k)
{
        return (size_t)snprintf(buf, KB_KEY_MAX, "kb:%zu:%08u", opt.value_len, k);
}

static unsigned char
value_byte(uint32_t k, size_t i)
{
        return (unsigned char)('a' + (k + i) % 26);
}

static bool
value_ok(uint32_t k, const unsigned char *v, size_t n)
{
        if (n != opt.value_len)
                return false;
        for (size_t i = 0; i < n; i += 1 + n / 16) /* sampled: the check must stay cheap */
                if (v[i] != value_byte(k, i))
                        return false;
        return n == 0 || v[n - 1] == value_byte(k, n - 1);
}

/* --- output buffer ---------------------------------------------------------------------------- */

static unsigned char *
out_room(struct conn *c, size_t n)
{
        if (c->out_len + n > c->out_cap) {
                size_t cap = c->out_cap != 0 ? c->out_cap : 4096;

                if (c->out_off > 0) {
                        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
                        c->out_len -= c->out_off;
                        c->out_off = 0;
                }
                while (c->out_len + n > cap)
                        cap *= 2;
                if (cap != c->out_cap) {
                        c->out = xrealloc(c->out, cap);
                        c->out_cap = cap;
                }
        }
        return c->out + c->out_len;
}

static void
out_put(struct conn *c, const void *p, size_t n)
{
        memcpy(out_room(c, n), p, n);
        c->out_len += n;
}

static void
out_be(struct conn *c, uint8_t tag, uint64_t v, int width)
{
        unsigned char b[9];

        b[0] = tag;
        for (int i = 0; i < width; i++)
                b[1 + i] = (unsigned char)(v >> (8 * (width - 1 - i)));
        out_put(c, b, 1 + (size_t)width);
}

/* msgpack str (is_bin false) or bin header. */
static void
mp_bytes_hdr(struct conn *c, size_t n, bool is_bin)
{
        unsigned char b = (unsigned char)(0xa0 | n);

        if (!is_bin && n < 32)
                out_put(c, &b, 1);
        else if (n < 256)
                out_be(c, is_bin ? 0xc4 : 0xd9, n, 1);
        else if (n < 65536)
                out_be(c, is_bin ? 0xc5 : 0xda, n, 2);
        else
                out_be(c, is_bin ? 0xc6 : 0xdb, n, 4);
}

static void
resp_bulk(struct conn *c, const void *p, size_t n)
{
        char h[32];
        int hl = snprintf(h, sizeof(h), "$%zu\r\n", n);

        out_put(c, h, (size_t)hl);
        out_put(c, p, n);
        out_put(c, "\r\n", 2);
}

static void
put_value(struct conn *c, uint32_t k)
{
        unsigned char *p = out_room(c, opt.value_len);

        for (size_t i = 0; i < opt.value_len; i++)
                p[i] = value_byte(k, i);
        c->out_len += opt.value_len;
}

/*
 * Appends one request for key k to c's output; token (a lease, for a fill) may be NULL. Returns
 * the slot it occupies.
 */
static void
send_op(struct conn *c, uint32_t si, enum op op, uint32_t k, const char *token, size_t tlen)
{
        struct slot *s = &c->slots[si];
        char key[KB_KEY_MAX];
        size_t klen = key_name(key, k);

        s->in_use = true;
        s->op = (uint8_t)op;
        s->key = k;
        s->seq = c->seq++;
        s->t_sent = now_ns();
        c->n_inflight++;
        if (opt.is_resp) {
                bool is_write = op == OP_SET || op == OP_FILL;

                out_put(c, is_write ? "*3\r\n$3\r\nSET\r\n" : "*2\r\n$3\r\nGET\r\n", 13);
                resp_bulk(c, key, klen);
                if (is_write) {
                        char h[32];
                        int hl = snprintf(h, sizeof(h), "$%zu\r\n", opt.value_len);

                        out_put(c, h, (size_t)hl);
                        put_value(c, k);
                        out_put(c, "\r\n", 2);
                }
                c->fifo[(c->fifo_head + c->fifo_n++) % KB_MAX_DEPTH] = si;
                return;
        }
        /* [0, msgid, method, params] with the msgid as a fixed-width uint32 */
        out_put(c, "\x94\x00", 2);
        out_be(c, 0xce, (uint64_t)s->seq << 8 | si, 4);
        switch (op) {
        case OP_GET:
                mp_bytes_hdr(c, 3, false);
                out_put(c, "get", 3);
                out_put(c, opt.near_off ? "\x92" : "\x91", 1);
                mp_bytes_hdr(c, klen, false);
                out_put(c, key, klen);
                if (opt.near_off)
                        out_put(c, "\x81\xa4near\xc2", 7);
                break;
        case OP_SET:
                mp_bytes_hdr(c, 3, false);
                out_put(c, "set", 3);
                out_put(c, "\x92", 1);
                mp_bytes_hdr(c, klen, false);
                out_put(c, key, klen);
                mp_bytes_hdr(c, opt.value_len, true);
                put_value(c, k);
                break;
        case OP_GOS:
                mp_bytes_hdr(c, 10, false);
                out_put(c, "get_or_set", 10);
                out_put(c, "\x91", 1);
                mp_bytes_hdr(c, klen, false);
                out_put(c, key, klen);
                break;
        case OP_FILL:
                mp_bytes_hdr(c, 4, false);
                out_put(c, "fill", 4);
                out_put(c, "\x93", 1);
                mp_bytes_hdr(c, klen, false);
                out_put(c, key, klen);
                mp_bytes_hdr(c, tlen, false);
                out_put(c, token, tlen);
                mp_bytes_hdr(c, opt.value_len, true);
                put_value(c, k);
                break;
        default:
                break;
        }
}

static bool
is_sending(void)
{
        if (opt.count > 0)
                return now_ns() < t_measure_ns || atomic_load(&n_left) > 0;
        return now_ns() < t_end_ns;
}

/* The next operation of the mix, on slot si. */
static void
send_next(struct conn *c, uint32_t si)
{
        struct thread *th = c->th;
        uint32_t k = pick_key(th);
        enum op op;

        if (opt.count > 0 && now_ns() >= t_measure_ns && atomic_fetch_sub(&n_left, 1) <= 0)
                return;
        if (opt.get_or_set)
                op = OP_GOS;
        else if (opt.get_pct >= 100 || (int)(rng_unit(&th->rng) * 100) < opt.get_pct)
                op = OP_GET;
        else
                op = OP_SET;
        send_op(c, si, op, k, NULL, 0);
}

/* --- replies ---------------------------------------------------------------------------------- */

static uint64_t
get_be(const unsigned char *p, int n)
{
        uint64_t v = 0;

        for (int i = 0; i < n; i++)
                v = v << 8 | p[i];
        return v;
}

/* Size of the msgpack object at p: > 0 its size, 0 incomplete, -1 malformed. */
static long
mp_size(const unsigned char *p, size_t n, int depth)
{
        size_t hdr = 1, len = 0, n_items = 0, pos;
        unsigned char b;

        if (n == 0)
                return 0;
        if (depth > 16)
                return -1;
        b = p[0];
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
                return 1;
        if (b >= 0xa0 && b <= 0xbf) {
                len = b & 0x1f;
        } else if (b >= 0x80 && b <= 0x9f) {
                n_items = (size_t)(b & 0x0f) * (b < 0x90 ? 2 : 1);
        } else {
                int w;

                switch (b) {
                case 0xcc:
                case 0xd0:
                        return 2;
                case 0xcd:
                case 0xd1:
                case 0xd4:
                        return 3;
                case 0xd5:
                        return 4;
                case 0xca:
                case 0xce:
                case 0xd2:
                        return 5;
                case 0xd6:
                        return 6;
                case 0xcb:
                case 0xcf:
                case 0xd3:
                        return 9;
                case 0xd7:
                        return 10;
                case 0xd8:
                        return 18;
                case 0xc4:
                case 0xd9:
                case 0xc5:
                case 0xda:
                case 0xc6:
                case 0xdb:
                        w = b == 0xc4 || b == 0xd9 ? 1 : b == 0xc5 || b == 0xda ? 2 : 4;
                        hdr = 1 + (size_t)w;
                        if (n < hdr)
                                return 0;
                        len = (size_t)get_be(p + 1, w);
                        break;
                case 0xc7:
                case 0xc8:
                case 0xc9:
                        w = b == 0xc7 ? 1 : b == 0xc8 ? 2 : 4;
                        hdr = 2 + (size_t)w;
                        if (n < hdr)
                                return 0;
                        len = (size_t)get_be(p + 1, w);
                        break;
                case 0xdc:
                case 0xde:
                case 0xdd:
                case 0xdf:
                        w = b == 0xdc || b == 0xde ? 2 : 4;
                        hdr = 1 + (size_t)w;
                        if (n < hdr)
                                return 0;
                        n_items = (size_t)get_be(p + 1, w) * (b == 0xde || b == 0xdf ? 2 : 1);
                        break;
                default:
                        return -1;
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

/* A str or bin at p (within a complete object): its bytes. */
static bool
mp_bytes(const unsigned char *p, const unsigned char **v, size_t *n)
{
        int w;

        if ((p[0] & 0xe0) == 0xa0) {
                *n = p[0] & 0x1f;
                *v = p + 1;
                return true;
        }
        switch (p[0]) {
        case 0xc4:
        case 0xd9:
                w = 1;
                break;
        case 0xc5:
        case 0xda:
                w = 2;
                break;
        case 0xc6:
        case 0xdb:
                w = 4;
                break;
        default:
                return false;
        }
        *n = (size_t)get_be(p + 1, w);
        *v = p + 1 + w;
        return true;
}

static void
print_bad(const char *why, const unsigned char *p, size_t n)
{
        fprintf(stderr, "kcache-bench: %s: \"", why);
        for (size_t i = 0; i < n && i < 200; i++)
                fputc(p[i] >= 0x20 && p[i] < 0x7f ? p[i] : '.', stderr);
        fprintf(stderr, "\"\n");
}

enum rtype { RT_VALUE, RT_NIL, RT_OK, RT_LEASE, RT_ERROR };

struct reply {
        enum rtype type;
        uint32_t slot;
        const unsigned char *val, *token;
        size_t vlen, tlen;
};

/* RESP reply at p: its size, 0 incomplete, -1 malformed. */
static long
parse_resp(const unsigned char *p, size_t n, struct reply *r)
{
        const unsigned char *cr = memchr(p, '\r', n);
        size_t line;
        long long blen;

        if (cr == NULL || (size_t)(cr - p) + 1 >= n)
                return n > 64 ? -1 : 0;
        line = (size_t)(cr - p) + 2;
        switch (p[0]) {
        case '$':
                blen = strtoll((const char *)p + 1, NULL, 10);
                if (blen < 0) {
                        r->type = RT_NIL;
                        return (long)line;
                }
                if (n < line + (size_t)blen + 2)
                        return 0;
                r->type = RT_VALUE;
                r->val = p + line;
                r->vlen = (size_t)blen;
                return (long)(line + (size_t)blen + 2);
        case '+':
        case ':':
                r->type = RT_OK;
                return (long)line;
        case '-':
                r->type = RT_ERROR;
                r->val = p;
                r->vlen = line;
                return (long)line;
        default:
                return -1;
        }
}

/* kcached response [1, msgid, error, result] at p: its size, 0 incomplete, -1 malformed. */
static long
parse_kc(const unsigned char *p, size_t n, struct reply *r, uint32_t *msgid)
{
        long size = mp_size(p, n, 0);
        size_t pos = 2;

        if (size <= 0)
                return size;
        if (size < 5 || p[0] != 0x94 || p[1] != 0x01)
                return -1;
        /* the msgid, echoed as the server encodes it: a positive fixint or a uint */
        if (p[pos] <= 0x7f) {
                *msgid = p[pos++];
        } else if (p[pos] >= 0xcc && p[pos] <= 0xce) {
                int w = 1 << (p[pos] - 0xcc);

                if ((size_t)size < pos + 1 + (size_t)w + 2)
                        return -1;
                *msgid = (uint32_t)get_be(p + pos + 1, w);
                pos += 1 + (size_t)w;
        } else {
                return -1;
        }
        if (p[pos] != 0xc0) {
                r->type = RT_ERROR;
                r->val = p;
                r->vlen = (size_t)size;
                return size;
        }
        pos++;
        if (p[pos] == 0xc0) {
                r->type = RT_NIL;
        } else if (p[pos] == 0xc3 || (p[pos] <= 0x7f)) {
                r->type = RT_OK;
        } else if ((p[pos] & 0xf0) == 0x80) {
                /* get_or_set: {"value": bin, "lease": str, "stale": true} */
                size_t n_items = p[pos] & 0x0f, q = pos + 1;

                r->type = RT_NIL;
                for (size_t i = 0; i < n_items; i++) {
                        const unsigned char *k, *v;
                        size_t kl, vl;
                        long ks = mp_size(p + q, (size_t)size - q, 1), vs;

                        if (ks <= 0 || !mp_bytes(p + q, &k, &kl))
                                return -1;
                        vs = mp_size(p + q + (size_t)ks, (size_t)size - q - (size_t)ks, 1);
                        if (vs <= 0)
                                return -1;
                        if (kl == 5 && memcmp(k, "value", 5) == 0 &&
                            mp_bytes(p + q + (size_t)ks, &v, &vl)) {
                                r->val = v;
                                r->vlen = vl;
                                if (r->type != RT_LEASE)
                                        r->type = RT_VALUE;
                        } else if (kl == 5 && memcmp(k, "lease", 5) == 0 &&
                                   mp_bytes(p + q + (size_t)ks, &v, &vl)) {
                                r->token = v;
                                r->tlen = vl;
                                r->type = RT_LEASE;
                        }
                        q += (size_t)ks + (size_t)vs;
                }
        } else if (mp_bytes(p + pos, &r->val, &r->vlen)) {
                r->type = RT_VALUE;
        } else {
                return -1;
        }
        return size;
}

/* One reply: time it, check it, and send what comes next on its slot. */
static void
on_reply(struct conn *c, const struct reply *r)
{
        struct thread *th = c->th;
        struct slot *s = &c->slots[r->slot];
        uint64_t t = now_ns();
        enum op op = (enum op)s->op;
        uint32_t k = s->key;
        bool counted = s->t_sent >= t_measure_ns && (opt.count > 0 || t < t_end_ns);

        s->in_use = false;
        c->n_inflight--;
        if (counted) {
                hist_add(&th->hist, t - s->t_sent);
                th->n_ops[op]++;
        }
        switch (r->type) {
        case RT_ERROR:
                if (atomic_fetch_add(&n_failed, 1) < 5)
                        print_bad("error reply", r->val, r->vlen);
                th->n_errors += counted;
                break;
        case RT_VALUE:
        case RT_LEASE:
                if (op == OP_SET || op == OP_FILL) {
                        print_bad("a write answered a value", r->val, r->vlen);
                        exit(1);
                }
                if (r->val != NULL && !value_ok(k, r->val, r->vlen)) {
                        print_bad("wrong value", r->val, r->vlen);
                        exit(1);
                }
                if (r->val != NULL)
                        th->n_hits += counted;
                else
                        th->n_misses += counted;
                if (r->type == RT_LEASE && is_sending()) {
                        send_op(c, r->slot, OP_FILL, k, (const char *)r->token, r->tlen);
                        return;
                }
                break;
        case RT_NIL:
                if (op == OP_SET || op == OP_FILL)
                        break;
                th->n_misses += counted;
                /* cache-aside over RESP: a miss is loaded and SET */
                if (op == OP_GOS && opt.is_resp && is_sending()) {
                        send_op(c, r->slot, OP_FILL, k, NULL, 0);
                        return;
                }
                break;
        case RT_OK:
                if (op == OP_GET || op == OP_GOS) {
                        fprintf(stderr, "kcache-bench: a read answered OK\n");
                        exit(1);
                }
                break;
        }
        if (is_sending())
                send_next(c, r->slot);
}

static bool
conn_flush(struct conn *c)
{
        while (c->out_off < c->out_len) {
                ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);

                if (n == -1 && errno == EINTR)
                        continue;
                if (n == -1 && errno == EAGAIN)
                        break;
                if (n == -1)
                        die("write", strerror(errno));
                c->out_off += (size_t)n;
        }
        if (c->out_off == c->out_len)
                c->out_off = c->out_len = 0;
        if ((c->out_len != 0) != c->wants_out) {
                struct epoll_event ev = {.events = EPOLLIN | (c->out_len != 0 ? EPOLLOUT : 0),
                                         .data.ptr = c};

                c->wants_out = c->out_len != 0;
                if (epoll_ctl(c->th->ep, EPOLL_CTL_MOD, c->fd, &ev) == -1)
                        die("epoll_ctl", strerror(errno));
        }
        return true;
}

static void
conn_read(struct conn *c)
{
        size_t off = 0;

        for (;;) {
                ssize_t n;

                if (c->in_cap - c->in_len < 4096) {
                        c->in_cap = c->in_cap != 0 ? c->in_cap * 2 : 65536;
                        c->in = xrealloc(c->in, c->in_cap);
                }
                n = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
                if (n == -1 && errno == EINTR)
                        continue;
                if (n == -1 && errno == EAGAIN)
                        break;
                if (n == -1)
                        die("read", strerror(errno));
                if (n == 0)
                        die(opt.addr, "connection closed by the server");
                c->in_len += (size_t)n;
                if (c->in_len < c->in_cap)
                        break;
        }
        while (off < c->in_len) {
                struct reply r = {0};
                uint32_t msgid = 0;
                long sz = opt.is_resp ? parse_resp(c->in + off, c->in_len - off, &r)
                                      : parse_kc(c->in + off, c->in_len - off, &r, &msgid);

                if (sz < 0) {
                        print_bad("malformed reply", c->in + off, c->in_len - off);
                        exit(1);
                }
                if (sz == 0)
                        break;
                if (opt.is_resp) {
                        if (c->fifo_n == 0) {
                                print_bad("reply nobody asked for", c->in + off, (size_t)sz);
                                exit(1);
                        }
                        r.slot = c->fifo[c->fifo_head];
                        c->fifo_head = (c->fifo_head + 1) % KB_MAX_DEPTH;
                        c->fifo_n--;
                } else {
                        r.slot = msgid & 0xff;
                        if (r.slot >= (uint32_t)opt.depth || !c->slots[r.slot].in_use ||
                            (c->slots[r.slot].seq & 0xffffff) != msgid >> 8) {
                                print_bad("unexpected msgid", c->in + off, (size_t)sz);
                                exit(1);
                        }
                }
                off += (size_t)sz;
                on_reply(c, &r);
        }
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
}

/* --- connections and threads --------------------------------------------------------------------
 */

static int
connect_target(void)
{
        uint64_t deadline = now_ns() + 10000000000ull;

        for (;;) {
                int fd = socket(opt.is_unix ? AF_UNIX : opt.ss.ss_family,
                                SOCK_STREAM | SOCK_CLOEXEC, 0);
                int one = 1;

                if (fd == -1)
                        die("socket", strerror(errno));
                if (opt.is_unix) {
                        struct sockaddr_un sa = {.sun_family = AF_UNIX};

                        memcpy(sa.sun_path, opt.path, sizeof(sa.sun_path));
                        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
                                return fd;
                } else {
                        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                        if (connect(fd, (struct sockaddr *)&opt.ss, opt.sslen) == 0)
                                return fd;
                }
                close(fd);
                /* A server started just before us: wait for it to listen. */
                if ((errno != ENOENT && errno != ECONNREFUSED) || now_ns() > deadline)
                        die(opt.addr, strerror(errno));
                usleep(20000);
        }
}

static void *
thread_main(void *arg)
{
        struct thread *th = arg;
        struct epoll_event evs[64];
        uint64_t last = now_ns();

        if (th->cpu >= 0) {
                cpu_set_t set;

                CPU_ZERO(&set);
                CPU_SET(th->cpu, &set);
                if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0)
                        die("--cpus", "cannot pin a thread");
        }
        for (int i = 0; i < th->n_conns; i++) {
                struct conn *c = &th->conns[i];

                for (int d = 0; d < opt.depth; d++)
                        send_next(c, (uint32_t)d);
                conn_flush(c);
        }
        for (;;) {
                int inflight = 0, n;

                for (int i = 0; i < th->n_conns; i++)
                        inflight += th->conns[i].n_inflight;
                if (inflight == 0 && !is_sending())
                        break;
                n = epoll_wait(th->ep, evs, 64, 100);
                if (n == -1 && errno != EINTR)
                        die("epoll_wait", strerror(errno));
                if (n <= 0) {
                        uint64_t t = now_ns();
                        if (!is_sending() && t - last > (uint64_t)(KB_DRAIN_S * 1e9))
                                die(opt.addr, "replies missing at the end");
                        if (is_sending() && t - last > 10000000000ull)
                                die(opt.addr, "no reply for 10 s");
                        continue;
                }
                last = now_ns();
                for (int i = 0; i < n; i++) {
                        struct conn *c = evs[i].data.ptr;

                        if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                                conn_read(c);
                        conn_flush(c);
                }
        }
        return NULL;
}

/* Sets every key once through the target, 256 in flight on one connection. */
static void
preload(void)
{
        struct thread th = {.ep = epoll_create1(EPOLL_CLOEXEC), .cpu = -1};
        struct conn c = {.fd = connect_target(), .th = &th};
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &c};
        uint32_t next = 0, done = 0;
        int depth = opt.depth;
        uint64_t t0 = now_ns();

        if (th.ep == -1 || epoll_ctl(th.ep, EPOLL_CTL_ADD, c.fd, &ev) == -1)
                die("epoll", strerror(errno));
        fcntl(c.fd, F_SETFL, fcntl(c.fd, F_GETFL) | O_NONBLOCK);
        opt.depth = KB_MAX_DEPTH;
        while (done < opt.n_keys) {
                for (uint32_t si = 0; si < KB_MAX_DEPTH && next < opt.n_keys; si++)
                        if (!c.slots[si].in_use)
                                send_op(&c, si, OP_SET, next++, NULL, 0);
                conn_flush(&c);
                if (epoll_wait(th.ep, &ev, 1, 10000) != 1)
                        die("preload", "no reply for 10 s");
                /* conn_read() answers through on_reply(): count instead of sending more */
                {
                        size_t off = 0;

                        for (;;) {
                                ssize_t n;
                                if (c.in_cap - c.in_len < 4096) {
                                        c.in_cap = c.in_cap ? c.in_cap * 2 : 65536;
                                        c.in = xrealloc(c.in, c.in_cap);
                                }
                                n = read(c.fd, c.in + c.in_len, c.in_cap - c.in_len);
                                if (n <= 0) {
                                        if (n == 0 || (errno != EAGAIN && errno != EINTR))
                                                die("preload", n == 0 ? "closed" : strerror(errno));
                                        break;
                                }
                                c.in_len += (size_t)n;
                        }
                        while (off < c.in_len) {
                                struct reply r = {0};
                                uint32_t msgid = 0, si;
                                long sz = opt.is_resp ? parse_resp(c.in + off, c.in_len - off, &r)
                                                      : parse_kc(c.in + off, c.in_len - off, &r,
                                                                 &msgid);

                                if (sz < 0)
                                        die("preload", "malformed reply");
                                if (sz == 0)
                                        break;
                                if (r.type != RT_OK) {
                                        print_bad("preload: set failed", c.in + off, (size_t)sz);
                                        exit(1);
                                }
                                if (opt.is_resp) {
                                        si = c.fifo[c.fifo_head];
                                        c.fifo_head = (c.fifo_head + 1) % KB_MAX_DEPTH;
                                        c.fifo_n--;
                                } else {
                                        si = msgid & 0xff;
                                }
                                c.slots[si].in_use = false;
                                c.n_inflight--;
                                done++;
                                off += (size_t)sz;
                        }
                        memmove(c.in, c.in + off, c.in_len - off);
                        c.in_len -= off;
                }
        }
        opt.depth = depth;
        printf("preload: %u keys of %zu B set in %.2f s\n", opt.n_keys, opt.value_len,
               (double)(now_ns() - t0) / 1e9);
        close(c.fd);
        close(th.ep);
        free(c.in);
        free(c.out);
}

/* --- setup and report ------------------------------------------------------------------------- */

static void
parse_addr(const char *a)
{
        const char *colon;
        char host[256];
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
        int rc;

        opt.addr = a;
        if (strncmp(a, "unix:", 5) == 0 || (strncmp(a, "tcp:", 4) != 0 && strchr(a, '/') != NULL)) {
                const char *p = strncmp(a, "unix:", 5) == 0 ? a + 5 : a;

                if (strlen(p) >= sizeof(opt.path))
                        die(p, "socket path too long");
                opt.is_unix = true;
                memcpy(opt.path, p, strlen(p) + 1);
                return;
        }
        if (strncmp(a, "tcp:", 4) == 0)
                a += 4;
        colon = strrchr(a, ':');
        if (colon == NULL || (size_t)(colon - a) >= sizeof(host))
                die(a, "expected unix:PATH, tcp:HOST:PORT, a path or HOST:PORT");
        memcpy(host, a, (size_t)(colon - a));
        host[colon - a] = '\0';
        rc = getaddrinfo(host, colon + 1, &hints, &ai);
        if (rc != 0)
                die(a, gai_strerror(rc));
        memcpy(&opt.ss, ai->ai_addr, ai->ai_addrlen);
        opt.sslen = ai->ai_addrlen;
        freeaddrinfo(ai);
}

static void
cpu_list_str(const cpu_set_t *set, char *buf, size_t n)
{
        size_t len = 0;

        buf[0] = '\0';
        for (int i = 0; i < CPU_SETSIZE && len + 8 < n; i++) {
                int j = i;

                if (!CPU_ISSET(i, set))
                        continue;
                while (j + 1 < CPU_SETSIZE && CPU_ISSET(j + 1, set))
                        j++;
                len += (size_t)snprintf(buf + len, n - len, len != 0 ? ",%d" : "%d", i);
                if (j > i)
                        len += (size_t)snprintf(buf + len, n - len, "-%d", j);
                i = j;
        }
}

static void
print_header(void)
{
        char model[256] = "?", line[512], date[64], cpus[256];
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
        cpu_list_str(&set, cpus, sizeof(cpus));
        strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S UTC", gmtime(&now));
        printf("machine: nproc %ld, CPU \"%s\", %s %s %s, date %s\n", sysconf(_SC_NPROCESSORS_ONLN),
               model, u.sysname, u.release, u.machine, date);
        printf("cpu: kcache-bench may run on CPUs %s; threads %s%s\n", cpus,
               opt.cpus != NULL ? "pinned to " : "not pinned", opt.cpus != NULL ? opt.cpus : "");
        printf("target: %s (%s)%s%s; %d connection%s x depth %d, %d thread%s; ", opt.addr,
               opt.is_resp ? "RESP" : "kcached msgpack-RPC", opt.label[0] ? ", " : "", opt.label,
               opt.n_conns, opt.n_conns == 1 ? "" : "s", opt.depth, opt.n_threads,
               opt.n_threads == 1 ? "" : "s");
        if (opt.get_or_set)
                printf("%s", opt.is_resp ? "GET + SET on a miss" : "get_or_set + fill on a lease");
        else
                printf("%d%% get / %d%% set", opt.get_pct, 100 - opt.get_pct);
        printf("%s; %u keys %s", opt.near_off ? " {near: false}" : "", opt.n_keys,
               opt.zipf_s > 0 ? "Zipf" : "uniform");
        if (opt.zipf_s > 0)
                printf("(%.2f)", opt.zipf_s);
        printf(", value %zu B; warm-up %.1f s, ", opt.value_len, opt.warm_s);
        if (opt.count > 0)
                printf("then %lld requests\n", opt.count);
        else
                printf("then %.1f s\n", opt.duration_s);
}

static void
usage(void)
{
        fprintf(stderr,
                "usage: kcache-bench [options] ADDR\n"
                "  ADDR             unix:PATH, tcp:HOST:PORT, a path (Unix socket) or HOST:PORT\n"
                "  --resp           speak RESP (Redis, twemproxy, a relay), not kcached's "
                "msgpack-RPC\n"
                "  -c N             connections (1)\n"
                "  -P N             requests in flight per connection, pipeline depth (1, max "
                "%d)\n"
                "  -t N             client threads (1); connections are spread over them\n"
                "  -d SECONDS       measure for this long (5)\n"
                "  -n COUNT         measure COUNT requests instead of a duration\n"
                "  -w SECONDS       warm-up before measuring, not counted (1)\n"
                "  -k N             key space: N keys (100000)\n"
                "  -z S             Zipf(S) key popularity (default: uniform)\n"
                "  -s BYTES         value size (100)\n"
                "  -r PCT           percent of gets, the rest sets (100)\n"
                "  --get-or-set     get_or_set and fill on a lease (RESP: GET, SET on a miss)\n"
                "  --preload        set every key through the target first\n"
                "  --near-off       kcached: {\"near\": false} on every get\n"
                "  --cpus LIST      pin thread i to the i-th CPU of LIST (e.g. 1 or 0,1)\n"
                "  --label TEXT     printed in the header and the RESULT line\n"
                "  --cpu-of PID     also report the CPU time process PID spends in the measured\n"
                "                   window, per request (duration mode; up to 4 times)\n",
                KB_MAX_DEPTH);
        exit(2);
}

int
main(int argc, char **argv)
{
        enum { O_RESP = 256, O_GOS, O_PRELOAD, O_NEAR_OFF, O_CPUS, O_LABEL, O_CPU_OF };
        static const struct option longs[] = {
                {"resp", no_argument, NULL, O_RESP},
                {"get-or-set", no_argument, NULL, O_GOS},
                {"preload", no_argument, NULL, O_PRELOAD},
                {"near-off", no_argument, NULL, O_NEAR_OFF},
                {"cpus", required_argument, NULL, O_CPUS},
                {"label", required_argument, NULL, O_LABEL},
                {"cpu-of", required_argument, NULL, O_CPU_OF},
                {"help", no_argument, NULL, 'h'},
                {NULL, 0, NULL, 0},
        };
        struct thread *ths;
        struct hist all = {0};
        uint64_t n_ops[OP_COUNT] = {0}, hits = 0, misses = 0, errors = 0, total = 0;
        uint64_t t_start, cpu0[4] = {0}, cpu1[4] = {0};
        double cpu_us_op[4];
        double secs;
        int ch;

        while ((ch = getopt_long(argc, argv, "c:P:t:d:n:w:k:z:s:r:h", longs, NULL)) != -1) {
                switch (ch) {
                case 'c':
                        opt.n_conns = atoi(optarg);
                        break;
                case 'P':
                        opt.depth = atoi(optarg);
                        break;
                case 't':
                        opt.n_threads = atoi(optarg);
                        break;
                case 'd':
                        opt.duration_s = atof(optarg);
                        break;
                case 'n':
                        opt.count = atoll(optarg);
                        break;
                case 'w':
                        opt.warm_s = atof(optarg);
                        break;
                case 'k':
                        opt.n_keys = (uint32_t)strtoul(optarg, NULL, 10);
                        break;
                case 'z':
                        opt.zipf_s = atof(optarg);
                        break;
                case 's':
                        opt.value_len = (size_t)strtoul(optarg, NULL, 10);
                        break;
                case 'r':
                        opt.get_pct = atoi(optarg);
                        break;
                case O_RESP:
                        opt.is_resp = true;
                        break;
                case O_GOS:
                        opt.get_or_set = true;
                        break;
                case O_PRELOAD:
                        opt.preload = true;
                        break;
                case O_NEAR_OFF:
                        opt.near_off = true;
                        break;
                case O_CPUS:
                        opt.cpus = optarg;
                        break;
                case O_CPU_OF:
                        if (opt.n_cpu_pids == 4 || atoi(optarg) <= 0)
                                usage();
                        opt.cpu_pids[opt.n_cpu_pids++] = atoi(optarg);
                        break;
                case O_LABEL:
                        opt.label = optarg;
                        break;
                default:
                        usage();
                }
        }
        if (optind != argc - 1 || opt.n_conns < 1 || opt.n_conns > KB_MAX_CONNS || opt.depth < 1 ||
            opt.depth > KB_MAX_DEPTH || opt.n_threads < 1 || opt.n_threads > KB_MAX_THREADS ||
            opt.n_threads > opt.n_conns || opt.duration_s <= 0 || opt.count < 0 || opt.warm_s < 0 ||
            opt.n_keys < 1 || opt.zipf_s < 0 || opt.value_len > (64u << 20) || opt.get_pct < 0 ||
            opt.get_pct > 100 || (opt.near_off && opt.is_resp))
                usage();
        if (opt.cpus != NULL) {
                char *dup = strdup(opt.cpus), *save = NULL;

                for (char *t = strtok_r(dup, ",", &save);
                     t != NULL && opt.n_cpu_list < KB_MAX_THREADS; t = strtok_r(NULL, ",", &save))
                        opt.cpu_list[opt.n_cpu_list++] = atoi(t);
                free(dup);
                if (opt.n_cpu_list == 0)
                        usage();
        }
        parse_addr(argv[optind]);
        signal(SIGPIPE, SIG_IGN);
        setvbuf(stdout, NULL, _IOLBF, 0);
        if (opt.zipf_s > 0)
                zipf_init();
        print_header();
        if (opt.preload)
                preload();

        ths = xrealloc(NULL, (size_t)opt.n_threads * sizeof(*ths));
        memset(ths, 0, (size_t)opt.n_threads * sizeof(*ths));
        for (int i = 0; i < opt.n_threads; i++) {
                struct thread *th = &ths[i];

                th->index = i;
                th->rng = mix64((uint64_t)i + 1) ^ (uint64_t)getpid();
                th->cpu = opt.n_cpu_list > 0 ? opt.cpu_list[i % opt.n_cpu_list] : -1;
                th->ep = epoll_create1(EPOLL_CLOEXEC);
                if (th->ep == -1)
                        die("epoll_create1", strerror(errno));
                th->n_conns = opt.n_conns / opt.n_threads + (i < opt.n_conns % opt.n_threads);
                th->conns = xrealloc(NULL, (size_t)th->n_conns * sizeof(*th->conns));
                memset(th->conns, 0, (size_t)th->n_conns * sizeof(*th->conns));
                for (int j = 0; j < th->n_conns; j++) {
                        struct conn *c = &th->conns[j];
                        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};

                        c->th = th;
                        c->fd = connect_target();
                        if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) == -1 ||
                            epoll_ctl(th->ep, EPOLL_CTL_ADD, c->fd, &ev) == -1)
                                die("setup", strerror(errno));
                }
        }
        t_start = now_ns();
        t_measure_ns = t_start + (uint64_t)(opt.warm_s * 1e9);
        t_end_ns = opt.count > 0 ? UINT64_MAX : t_measure_ns + (uint64_t)(opt.duration_s * 1e9);
        atomic_store(&n_left, opt.count);
        for (int i = 0; i < opt.n_threads; i++)
                if (pthread_create(&ths[i].tid, NULL, thread_main, &ths[i]) != 0)
                        die("pthread_create", strerror(errno));
        if (opt.n_cpu_pids > 0 && opt.count == 0) {
                /* The measured window only: the warm-up and the connects do not count. */
                sleep_until_ns(t_measure_ns);
                for (int i = 0; i < opt.n_cpu_pids; i++)
                        cpu0[i] = cpu_ns_of(opt.cpu_pids[i]);
                sleep_until_ns(t_end_ns);
                for (int i = 0; i < opt.n_cpu_pids; i++)
                        cpu1[i] = cpu_ns_of(opt.cpu_pids[i]);
        }
        for (int i = 0; i < opt.n_threads; i++) {
                pthread_join(ths[i].tid, NULL);
                hist_merge(&all, &ths[i].hist);
                for (int o = 0; o < OP_COUNT; o++)
                        n_ops[o] += ths[i].n_ops[o];
                hits += ths[i].n_hits;
                misses += ths[i].n_misses;
                errors += ths[i].n_errors;
        }
        secs = opt.count > 0 ? (double)(now_ns() - t_measure_ns) / 1e9 : opt.duration_s;
        for (int o = 0; o < OP_COUNT; o++)
                total += n_ops[o];
        printf("ops %llu in %.2f s: %.1f/s;", (unsigned long long)total, secs,
               (double)total / secs);
        for (int o = 0; o < OP_COUNT; o++)
                if (n_ops[o] != 0)
                        printf(" %s %llu", op_names[o], (unsigned long long)n_ops[o]);
        printf("; hits %llu, misses %llu, errors %llu\n", (unsigned long long)hits,
               (unsigned long long)misses, (unsigned long long)errors);
        printf("latency us: p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  mean %.1f\n",
               hist_pct(&all, 50), hist_pct(&all, 90), hist_pct(&all, 99), hist_pct(&all, 99.9),
               (double)all.max_ns / 1e3, all.n ? all.sum_ns / (double)all.n / 1e3 : NAN);
        /* CPU seconds per million requests = CPU microseconds per request. */
        for (int i = 0; i < opt.n_cpu_pids; i++) {
                cpu_us_op[i] = opt.count == 0 && total > 0
                                       ? (double)(cpu1[i] - cpu0[i]) / 1e3 / (double)total
                                       : NAN;
                printf("cpu of pid %d in the measured window: %.1f ms, %.3f us per request\n",
                       opt.cpu_pids[i], (double)(cpu1[i] - cpu0[i]) / 1e6, cpu_us_op[i]);
        }
        printf("RESULT label=%s ops=%llu rate=%.1f p50_us=%.2f p90_us=%.2f p99_us=%.2f "
               "p999_us=%.2f max_us=%.2f hits=%llu misses=%llu errors=%llu",
               opt.label[0] ? opt.label : "-", (unsigned long long)total, (double)total / secs,
               hist_pct(&all, 50), hist_pct(&all, 90), hist_pct(&all, 99), hist_pct(&all, 99.9),
               (double)all.max_ns / 1e3, (unsigned long long)hits, (unsigned long long)misses,
               (unsigned long long)errors);
        for (int i = 0; i < opt.n_cpu_pids; i++)
                printf(" cpu%d_us_op=%.3f", i, cpu_us_op[i]);
        printf("\n");
        for (int i = 0; i < opt.n_threads; i++) {
                for (int j = 0; j < ths[i].n_conns; j++) {
                        close(ths[i].conns[j].fd);
                        free(ths[i].conns[j].in);
                        free(ths[i].conns[j].out);
                }
                free(ths[i].conns);
                close(ths[i].ep);
        }
        free(ths);
        free(opt.zipf_cdf);
        free(opt.zipf_perm);
        return errors != 0 ? 3 : 0;
}
