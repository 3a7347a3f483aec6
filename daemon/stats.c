/* SPDX-License-Identifier: MIT */
/*
 * stats: storage for the daemon's counters and latency histograms, and their
 * JSON and Prometheus forms (see stats.h).
 *
 *   stats_request_done(m, started)
 *     -> lat_total[m]                      since start (or reset-stats)
 *     -> lat_slices[epoch % 6].h[m]        the 10 s slice of now; a slice
 *                                          whose epoch is old is zeroed first
 *
 * Reading the window sums the slices whose epoch is within the last
 * STATS_WINDOW_SLICES of now's, so a slice not written for a minute counts
 * for nothing even though its memory still holds old numbers.
 */
#include "daemon/stats.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "daemon/json.h"

#define STATS_LAT_SLOTS (STATS_LAT_BUCKETS + 1) /* and the overflow bucket */

struct stats stats;

struct stats_hist {
        uint64_t buckets[STATS_LAT_SLOTS];
        uint64_t count;
        uint64_t sum_ns;
        uint64_t max_ns;
};

struct stats_slice {
        uint64_t epoch; /* stats_clock() / STATS_SLICE_S when last written; 0: never */
        struct stats_hist h[RPC_M_COUNT];
};

static struct stats_hist lat_total[RPC_M_COUNT];
static struct stats_slice lat_slices[STATS_WINDOW_SLICES];

double
stats_clock(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The bucket of a latency: the smallest i with ns <= 2^i us, or the overflow. */
static unsigned
stats_bucket(uint64_t ns)
{
        uint64_t us = (ns + 999) / 1000; /* bounds are inclusive: round up */
        unsigned i;

        if (us <= 1)
                return 0;
        i = 64 - (unsigned)__builtin_clzll(us - 1); /* 2^(i-1) < us <= 2^i */
        return i < STATS_LAT_BUCKETS ? i : STATS_LAT_BUCKETS;
}

static void
stats_hist_add(struct stats_hist *h, unsigned b, uint64_t ns)
{
        h->buckets[b]++;
        h->count++;
        h->sum_ns += ns;
        if (ns > h->max_ns)
                h->max_ns = ns;
}

void
stats_request_done(enum rpc_method m, double started)
{
        double now = stats_clock(), dt = now - started;
        uint64_t ns, epoch;
        struct stats_slice *s;
        unsigned b;

        if ((unsigned)m >= RPC_M_COUNT)
                return;
        /* A monotonic clock does not step back; guard the conversion anyway. */
        ns = dt > 0 ? (dt < 1e9 ? (uint64_t)(dt * 1e9) : (uint64_t)1e18) : 0;
        b = stats_bucket(ns);
        stats_hist_add(&lat_total[m], b, ns);
        epoch = (uint64_t)(now / STATS_SLICE_S) + 1; /* + 1: epoch 0 means an unused slice */
        s = &lat_slices[epoch % STATS_WINDOW_SLICES];
        if (s->epoch != epoch) {
                memset(s->h, 0, sizeof(s->h));
                s->epoch = epoch;
        }
        stats_hist_add(&s->h[m], b, ns);
}

/* The last minute of method m, summed over the live slices into out. */
static void
stats_window(enum rpc_method m, struct stats_hist *out)
{
        uint64_t epoch = (uint64_t)(stats_clock() / STATS_SLICE_S) + 1;

        memset(out, 0, sizeof(*out));
        for (int k = 0; k < STATS_WINDOW_SLICES; k++) {
                const struct stats_slice *s = &lat_slices[k];
                const struct stats_hist *h = &s->h[m];
                if (s->epoch == 0 || s->epoch > epoch || epoch - s->epoch >= STATS_WINDOW_SLICES)
                        continue;
                for (int b = 0; b < STATS_LAT_SLOTS; b++)
                        out->buckets[b] += h->buckets[b];
                out->count += h->count;
                out->sum_ns += h->sum_ns;
                if (h->max_ns > out->max_ns)
                        out->max_ns = h->max_ns;
        }
}

void
stats_reset(void)
{
#define X(name, type, help)                                                                        \
        if (type == COUNTER)                                                                       \
                stats.name = 0;
        STATS_TABLE(X)
#undef X
        memset(stats.requests_by_method, 0, sizeof(stats.requests_by_method));
        memset(stats.errors_by_code, 0, sizeof(stats.errors_by_code));
        memset(lat_total, 0, sizeof(lat_total));
        memset(lat_slices, 0, sizeof(lat_slices));
}

/* --- JSON ---------------------------------------------------------------- */

/*
 * The quantile q/1000 in us: the upper bound of its bucket, at most the max.
 * Integers only (the daemon does not link libm).
 */
static uint64_t
stats_quantile_us(const struct stats_hist *h, unsigned permille)
{
        uint64_t max_us = (h->max_ns + 999) / 1000;
        uint64_t rank, seen = 0;

        if (h->count == 0)
                return 0;
        rank = (h->count * permille + 999) / 1000; /* the ceil of count * q */
        if (rank == 0)
                rank = 1;
        for (int b = 0; b < STATS_LAT_BUCKETS; b++) {
                seen += h->buckets[b];
                if (seen >= rank) {
                        uint64_t bound = (uint64_t)1 << b;
                        return bound < max_us ? bound : max_us;
                }
        }
        return max_us; /* in the overflow bucket: the max is the best bound we have */
}

static void
stats_hist_json(struct json *j, const struct stats_hist *h)
{
        static const struct {
                const char *key;
                unsigned permille;
        } qs[] = {{"p50_us", 500}, {"p90_us", 900}, {"p99_us", 990}, {"p999_us", 999}};

        json_obj_begin(j);
        json_key(j, "count");
        json_uint(j, h->count);
        for (size_t i = 0; i < sizeof(qs) / sizeof(qs[0]); i++) {
                json_key(j, qs[i].key);
                json_uint(j, stats_quantile_us(h, qs[i].permille));
        }
        json_key(j, "max_us");
        json_uint(j, (h->max_ns + 999) / 1000);
        json_obj_end(j);
}

void
stats_write_json_members(struct json *j, double uptime_s)
{
        json_key(j, "uptime_s");
        json_double(j, uptime_s);
        /* The short name operators look for first; clients_connected says the same. */
        json_key(j, "clients");
        json_uint(j, stats.clients_connected);
#define X(name, type, help)                                                                        \
        json_key(j, #name);                                                                        \
        json_uint(j, stats.name);
        STATS_TABLE(X)
#undef X
        json_key(j, "requests_by_method");
        json_obj_begin(j);
        for (int m = 0; m < RPC_M_COUNT; m++) {
                json_key(j, rpc_methods[m].name);
                json_uint(j, stats.requests_by_method[m]);
        }
        json_obj_end(j);
        json_key(j, "errors_by_code");
        json_obj_begin(j);
        for (int e = 0; e < RPC_ERR_COUNT; e++) {
                json_key(j, rpc_errors[e].name);
                json_uint(j, stats.errors_by_code[e]);
        }
        json_obj_end(j);
        json_key(j, "latency");
        json_obj_begin(j);
        for (int m = 0; m < RPC_M_COUNT; m++) {
                struct stats_hist w;
                stats_window((enum rpc_method)m, &w);
                json_key(j, rpc_methods[m].name);
                json_obj_begin(j);
                json_key(j, "since_start");
                stats_hist_json(j, &lat_total[m]);
                json_key(j, "last_60s");
                stats_hist_json(j, &w);
                json_obj_end(j);
        }
        json_obj_end(j);
}

/* --- Prometheus ------------------------------------------------------------ */

static void
stats_prom_raw(struct stats_prom *p, const char *s, size_t n)
{
        if (!p->failed && buf_append(p->out, s, n) < 0)
                p->failed = true;
}

static void __attribute__((format(printf, 2, 3)))
stats_prom_printf(struct stats_prom *p, const char *fmt, ...)
{
        char line[1024];
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        if (n < 0 || (size_t)n >= sizeof(line)) {
                /* Our names and labels are bounded well below this: a bug, not input. */
                p->failed = true;
                return;
        }
        stats_prom_raw(p, line, (size_t)n);
}

void
stats_prom_init(struct stats_prom *p, struct buf *out)
{
        p->out = out;
        p->failed = false;
}

void
stats_prom_family(struct stats_prom *p, const char *name, const char *type, const char *help)
{
        stats_prom_printf(p, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* "{labels}" or "" */
static void
stats_prom_braces(char *out, size_t size, const char *labels)
{
        if (labels == NULL || labels[0] == '\0')
                out[0] = '\0';
        else
                snprintf(out, size, "{%s}", labels);
}

void
stats_prom_u64(struct stats_prom *p, const char *name, const char *labels, uint64_t v)
{
        char b[640];

        stats_prom_braces(b, sizeof(b), labels);
        stats_prom_printf(p, "%s%s %" PRIu64 "\n", name, b, v);
}

void
stats_prom_f64(struct stats_prom *p, const char *name, const char *labels, double v)
{
        char b[640];

        stats_prom_braces(b, sizeof(b), labels);
        if (isnan(v))
                stats_prom_printf(p, "%s%s NaN\n", name, b);
        else if (isinf(v))
                stats_prom_printf(p, "%s%s %sInf\n", name, b, v > 0 ? "+" : "-");
        else
                stats_prom_printf(p, "%s%s %.17g\n", name, b, v);
}

void
stats_prom_log2_hist(struct stats_prom *p, const char *name, const char *labels,
                     const uint64_t *counts, size_t n, int exp0, const double *sum_s)
{
        const char *sep = labels != NULL && labels[0] != '\0' ? "," : "";
        uint64_t cum = 0;

        if (labels == NULL)
                labels = "";
        for (size_t i = 0; i + 1 < n; i++) {
                /* 2^k us as an exact decimal number of seconds: 0.000001 .. */
                uint64_t us = (uint64_t)1 << (exp0 + (int)i);
                cum += counts[i];
                stats_prom_printf(p,
                                  "%s_bucket{%s%sle=\"%" PRIu64 ".%06" PRIu64 "\"} %" PRIu64 "\n",
                                  name, labels, sep, us / 1000000, us % 1000000, cum);
        }
        if (n > 0)
                cum += counts[n - 1];
        stats_prom_printf(p, "%s_bucket{%s%sle=\"+Inf\"} %" PRIu64 "\n", name, labels, sep, cum);
        if (sum_s != NULL) {
                char sum_name[256];
                snprintf(sum_name, sizeof(sum_name), "%s_sum", name);
                stats_prom_f64(p, sum_name, labels, *sum_s);
        }
        {
                char b[640];
                stats_prom_braces(b, sizeof(b), labels);
                stats_prom_printf(p, "%s_count%s %" PRIu64 "\n", name, b, cum);
        }
}

void
stats_prom_label(char *labels, size_t size, const char *key, const char *value, size_t len)
{
        size_t j = strlen(labels);
        int n;

        if (j >= size)
                return;
        n = snprintf(labels + j, size - j, "%s%s=\"", j > 0 ? "," : "", key);
        if (n < 0 || (size_t)n >= size - j) {
                labels[j] = '\0';
                return;
        }
        j += (size_t)n;
        /* Room kept for the worst escape (5 bytes), the closing quote and the NUL. */
        for (size_t i = 0; i < len && j + 7 < size; i++) {
                unsigned char ch = (unsigned char)value[i];
                if (ch == '"') {
                        labels[j++] = '\\';
                        labels[j++] = '"';
                } else if (ch < 0x20 || ch > 0x7e || ch == '\\') {
                        j += (size_t)snprintf(labels + j, size - j, "\\\\x%02x", ch);
                } else {
                        labels[j++] = (char)ch;
                }
        }
        labels[j++] = '"';
        labels[j] = '\0';
}

void
stats_write_metrics(struct stats_prom *p, double uptime_s)
{
        char name[128], labels[256];

        stats_prom_family(p, "kcache_uptime_seconds", "gauge", "Seconds since kcached started.");
        stats_prom_f64(p, "kcache_uptime_seconds", "", uptime_s);
#define X(n, type, help)                                                                           \
        snprintf(name, sizeof(name), "kcache_%s%s", #n, type == COUNTER ? "_total" : "");          \
        stats_prom_family(p, name, type == COUNTER ? "counter" : "gauge", help);                   \
        stats_prom_u64(p, name, "", stats.n);
        STATS_TABLE(X)
#undef X
        stats_prom_family(p, "kcache_method_requests_total", "counter",
                          "requests received, by method (unknown methods are not counted)");
        for (int m = 0; m < RPC_M_COUNT; m++) {
                labels[0] = '\0';
                stats_prom_label(labels, sizeof(labels), "method", rpc_methods[m].name,
                                 strlen(rpc_methods[m].name));
                stats_prom_u64(p, "kcache_method_requests_total", labels,
                               stats.requests_by_method[m]);
        }
        stats_prom_family(p, "kcache_errors_total", "counter", "error responses sent, by code");
        for (int e = 0; e < RPC_ERR_COUNT; e++) {
                labels[0] = '\0';
                stats_prom_label(labels, sizeof(labels), "code", rpc_errors[e].name,
                                 strlen(rpc_errors[e].name));
                stats_prom_u64(p, "kcache_errors_total", labels, stats.errors_by_code[e]);
        }
        stats_prom_family(p, "kcache_request_duration_seconds", "histogram",
                          "request latency from the request read to its response queued, by "
                          "method (methods not called since start or reset-stats are left out)");
        for (int m = 0; m < RPC_M_COUNT; m++) {
                const struct stats_hist *h = &lat_total[m];
                double sum_s = (double)h->sum_ns / 1e9;
                if (h->count == 0)
                        continue;
                labels[0] = '\0';
                stats_prom_label(labels, sizeof(labels), "method", rpc_methods[m].name,
                                 strlen(rpc_methods[m].name));
                stats_prom_log2_hist(p, "kcache_request_duration_seconds", labels, h->buckets,
                                     STATS_LAT_SLOTS, 0, &sum_s);
        }
}
