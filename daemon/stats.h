/* SPDX-License-Identifier: MIT */
/*
 * stats: the one place counters live. STATS_TABLE is an X-macro list
 * {name, type, help} that declares the fields and drives both forms the admin
 * socket shows them in: `stats` (JSON) and `metrics` (Prometheus text). Per-
 * method and per-error-code arrays are indexed by the enums generated from
 * proto/methods.def and errors.def.
 *
 * It also owns the request latency histograms: per method, from the request
 * read (req_new) to its response packed into the client's output buffer
 * (req_release), since start and over a sliding window of the last minute.
 *
 *   bucket i (0 <= i < STATS_LAT_BUCKETS) counts latencies <= 2^i us, above
 *   the previous bound: 1 us, 2 us, 4 us ... 2^26 us = 67.1 s; one more
 *   bucket counts what is longer. The window is STATS_WINDOW_SLICES rotating
 *   slices of STATS_SLICE_S seconds, so "last 60 s" means the current slice
 *   and the five before it: between 50 and 60 s of history.
 *
 * Fixed arrays only: recording a latency never allocates. A percentile is
 * the upper bound of the bucket that holds it (never above the exact max),
 * so it overstates by less than 2x; that is what log buckets buy.
 *
 * The daemon is single-threaded: plain integers, no atomics.
 */
#ifndef KCACHE_STATS_H
#define KCACHE_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "rpc.h"

#define STATS_TABLE(X)                                                                             \
        X(clients_accepted, COUNTER, "client connections accepted")                                \
        X(clients_connected, GAUGE, "client connections open now")                                 \
        X(requests, COUNTER, "requests received")                                                  \
        X(notifications, COUNTER, "msgpack-RPC notifications received (never answered)")           \
        X(protocol_errors, COUNTER,                                                                \
          "unanswerable or malformed messages (connection closed or kcache.error sent)")           \
        X(inflight, GAUGE, "requests waiting for an answer")                                       \
        X(ttl_clamped, COUNTER, "ttl values above max_ttl clamped to it")                          \
        X(redis_connects, COUNTER, "Redis connections established")                                \
        X(redis_disconnects, COUNTER, "Redis connections lost or closed")                          \
        X(late_redis_replies, COUNTER,                                                             \
          "Redis replies that arrived after their request was answered")                           \
        X(replies_after_deadline, COUNTER,                                                         \
          "responses sent after the request's deadline (must stay 0)")                             \
        X(admin_refused, COUNTER, "admin connections closed for their peer credentials")        \
        X(clients_refused, COUNTER, "client connections closed for their peer credentials")     \
        X(clients_rejected_max, COUNTER, "client connections refused at max_clients (TOO_MANY_CLIENTS)") \
        X(clients_closed_output, COUNTER, "clients closed past max_output_bytes_per_client")    \
        X(clients_closed_idle, COUNTER, "clients closed after idle_timeout_s")                  \
        X(clients_closed_slow, COUNTER, "clients closed with a request half-written past request_read_timeout_ms")

enum stats_type { COUNTER, GAUGE };

struct stats {
#define X(name, type, help) uint64_t name;
        STATS_TABLE(X)
#undef X
        uint64_t requests_by_method[RPC_M_COUNT];
        uint64_t errors_by_code[RPC_ERR_COUNT];
};

/* The daemon's counters. */
extern struct stats stats;

#define STATS_LAT_BUCKETS   27 /* finite buckets: <= 1 us .. <= 2^26 us (67.1 s) */
#define STATS_WINDOW_SLICES 6
#define STATS_SLICE_S       10

struct json;

/* Seconds on a monotonic clock, for latencies (never steps with NTP). */
double stats_clock(void);

/*
 * A request of method m answered now; started is its stats_clock() at
 * arrival. Counts its latency since start and in the current slice.
 */
void stats_request_done(enum rpc_method m, double started);

/*
 * admin `reset-stats`: zeroes every COUNTER row, requests_by_method,
 * errors_by_code and the latency histograms. GAUGE rows describe the present
 * and are kept.
 */
void stats_reset(void);

/*
 * Writes the members of a JSON object (the caller opens and closes it, and
 * may add its own): uptime_s, clients (= clients_connected), every
 * STATS_TABLE row by name, requests_by_method {method: n}, errors_by_code
 * {CODE: n}, and latency {method: {since_start: L, last_60s: L}} with
 * L = {count, p50_us, p90_us, p99_us, p999_us, max_us} (0s when count is 0).
 * Check j->failed afterwards.
 */
void stats_write_json_members(struct json *j, double uptime_s);

/*
 * Prometheus text exposition (format 0.0.4), for the admin `metrics` and for
 * other modules' own series. Every family gets its HELP and TYPE lines once
 * (stats_prom_family), then its samples. Names are kcache_*; counters end in
 * _total. Out of memory sets failed and drops the rest: discard the answer.
 */
struct stats_prom {
        struct buf *out; /* ref */
        bool failed;
};

void stats_prom_init(struct stats_prom *p, struct buf *out);
/* type: "counter", "gauge" or "histogram"; help: one line of plain text. */
void stats_prom_family(struct stats_prom *p, const char *name, const char *type, const char *help);
/* labels: "" or `a="x",b="y"` already escaped (stats_prom_label). */
void stats_prom_u64(struct stats_prom *p, const char *name, const char *labels, uint64_t v);
void stats_prom_f64(struct stats_prom *p, const char *name, const char *labels, double v);
/*
 * One histogram series from log2 buckets in microseconds: counts[i] for
 * i < n - 1 holds samples <= 2^(exp0 + i) us (above the previous bound),
 * counts[n - 1] those above all of them (+Inf only). Writes the cumulative
 * _bucket lines, _sum (when sum_s is not NULL) and _count.
 */
void stats_prom_log2_hist(struct stats_prom *p, const char *name, const char *labels,
                          const uint64_t *counts, size_t n, int exp0, const double *sum_s);
/*
 * Appends `key="value"` to a label list (with a comma if it is not empty).
 * value's bytes: \ " and newline are escaped as the format says; any other
 * byte outside printable ASCII, and the backslash itself, is written as the
 * four characters \xNN (a backslash escaped as "\\" then "xNN"), so any
 * string, binary included, becomes valid UTF-8 and distinct names stay
 * distinct. Truncates (still valid) when labels is full.
 */
void stats_prom_label(char *labels, size_t size, const char *key, const char *value, size_t len);

/* Every STATS_TABLE row, per-method and per-code counters, latency histograms. */
void stats_write_metrics(struct stats_prom *p, double uptime_s);

#endif
