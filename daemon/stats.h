/* SPDX-License-Identifier: MIT */
/*
 * stats: the one place counters live. STATS_TABLE is an X-macro list
 * {name, type, help} that declares the fields and, later, drives the admin
 * socket's JSON and Prometheus output. Per-method and per-error-code arrays
 * are indexed by the enums generated from proto/methods.def and errors.def.
 *
 * The daemon is single-threaded: plain integers, no atomics.
 */
#ifndef KCACHE_STATS_H
#define KCACHE_STATS_H

#include <stdint.h>

#include "rpc.h"

#define STATS_TABLE(X)                                                                             \
        X(clients_accepted, COUNTER, "client connections accepted")                                \
        X(clients_connected, GAUGE, "client connections open now")                                 \
        X(requests, COUNTER, "requests received")                                                  \
        X(notifications, COUNTER, "msgpack-RPC notifications received (never answered)")           \
        X(protocol_errors, COUNTER, "unanswerable or malformed messages (connection closed or kcache.error sent)") \
        X(inflight, GAUGE, "requests waiting for an answer")                                       \
        X(ttl_clamped, COUNTER, "ttl values above max_ttl clamped to it")                          \
        X(redis_connects, COUNTER, "Redis connections established")                                \
        X(redis_disconnects, COUNTER, "Redis connections lost or closed")                          \
        X(late_redis_replies, COUNTER, "Redis replies that arrived after their request was answered") \
        X(replies_after_deadline, COUNTER, "responses sent after the request's deadline (must stay 0)")

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

struct json;

/*
 * Writes one JSON object: uptime_s, clients (= clients_connected), every
 * STATS_TABLE counter by name, requests_by_method {method: n} and
 * errors_by_code {CODE: n}. Check j->failed afterwards.
 */
void stats_write_json(struct json *j, double uptime_s);

#endif
