/* SPDX-License-Identifier: MIT */
/*
 * dispatch: requests. Classifies each decoded message (request,
 * notification, junk), checks a request's params against the method table
 * (proto/methods.def: positional count, trailing options map, option names,
 * types and duplicates) and calls the method's handler in cache.c.
 *
 * It also owns the request lifecycle. Requests come from a pool that only
 * grows, and each carries a generation bumped when it is released: a Redis
 * reply for a request that already timed out finds a different generation and
 * is dropped. Every request ends in exactly one req_reply_*()/req_fail().
 */
#ifndef KCACHE_DISPATCH_H
#define KCACHE_DISPATCH_H

#include <ev.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

#include "daemon/backend.h"
#include "rpc.h"

struct conn;

struct opts {
        unsigned present; /* KC_OPT_* bits */
        int64_t i[RPC_OPT_COUNT];
        struct {
                const char *p; /* ref into the request's zone: valid during the handler only */
                size_t n;
        } s[RPC_OPT_COUNT];
        bool b[RPC_OPT_COUNT];
        const msgpack_object *list[RPC_OPT_COUNT]; /* OPT_STRLIST: an array of str/bin, checked */
};

struct req {
        struct conn *conn; /* ref; NULL while the req is free */
        struct req *next, *prev;
        uint32_t gen;
        uint32_t msgid;
        enum rpc_method method;
        ev_timer timer;     /* deadline, when not on the deadline queue (dispatch.c) */
        struct req *dl_next, *dl_prev; /* the deadline queue */
        bool on_dl;         /* on the deadline queue */
        ev_tstamp deadline; /* absolute, 0 for requests answered locally */
        int deadline_ms;    /* what the deadline was started with, for the TIMEOUT message */
        ev_tstamp started;  /* stats_clock() at arrival, for the latency; 0: not counted */
        struct bcall call;  /* the Redis command in flight, if any */
        int64_t aux;        /* handler state (e.g. number of keys) */
        bool is_timeout;    /* answered TIMEOUT */
        bool has_schema;    /* the schema option, copied: replies arrive after the zone is gone */
        uint8_t schema_len;
        char schema[255];
        bool has_ns;        /* the ns option, copied */
        uint8_t ns_len;
        char ns[255];
        int ns_slot;        /* cache stats slot of the ns option, -1 for none, -2 for _other */
        void *state;        /* handler state beyond aux; released by state_free on release */
        struct req *lnext;  /* lease.c: next waiter of the same key */
        char *near_keys;    /* owned: Redis keys this write evicts from the near cache again
                               when it completes (length-prefixed), NULL for none */
        size_t near_keys_len;
        uint64_t near_token; /* a near-cache fill in flight for this get */
        void (*state_free)(struct req *r);
};

/* Handles one decoded message from c (obj lives in the server's zone). */
void dispatch_message(struct conn *c, const msgpack_object *obj);

/* The packer to write the result into, after the response head was packed. */
msgpack_packer *req_result(struct req *r);
/* Ends a request whose result was packed after req_result(). */
void req_done(struct req *r);
void req_fail(struct req *r, enum rpc_error code, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* Starts the request's deadline (Redis-bound requests); sets r->deadline. */
void req_start_deadline(struct req *r, int timeout_ms);

/* The request a Redis callback belongs to, or NULL if it was already answered. */
struct req *req_lookup(void *priv, uint32_t gen);

/* Drops a request unanswered (its connection is gone). */
void req_abandon(struct req *r);

/* Answers UNAVAILABLE to every request in flight on c (drain timeout). */
void dispatch_fail_all(struct conn *c, const char *why);

#endif
