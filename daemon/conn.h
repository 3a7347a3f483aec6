/* SPDX-License-Identifier: MIT */
/*
 * conn: one client connection. Owns its socket, its input buffer (bytes of
 * requests not yet complete), its output buffer (responses not yet written)
 * and the list of its requests still in flight.
 *
 * Input is framed by the bounded scanner before msgpack-c sees it, so a
 * declared size never turns into an allocation. Responses are packed straight
 * into the output buffer and written once per loop iteration (server's
 * prepare hook); EV_WRITE is started only after a short write.
 *
 * A conn is never freed inside one of its own callbacks: conn_close() tears
 * it down and parks it on the server's dead list, freed from the prepare hook.
 */
#ifndef KCACHE_CONN_H
#define KCACHE_CONN_H

#include <ev.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "daemon/backend.h"
#include "scan.h"

struct server;
struct req;

struct conn {
        struct server *srv; /* ref, owner */
        int fd;
        uint64_t id;
        ev_io rio;
        ev_io wio;
        ev_timer close_timer; /* bounds the wait to flush a final error before closing */
        ev_timer idle_timer;  /* idle_timeout_s and request_read_timeout_ms */
        ev_tstamp last_active; /* last byte read or answer completed */
        ev_tstamp partial_since; /* a request began arriving; 0 when none is half-read */
        struct buf in;
        struct buf out;
        struct scan scan;
        msgpack_packer pk; /* writes into out */
        struct req *reqs;  /* refs: requests in flight, owned by dispatch's pool */
        struct backend_affinity aff; /* keeps pipelined requests in order on one Redis conn */
        unsigned n_inflight;
        uint64_t n_requests; /* requests received, for the admin `clients` */
        ev_tstamp accepted;  /* ev_now() at accept */
        /* The peer at accept (SO_PEERCRED); has_cred false if the kernel did not say. */
        bool has_cred;
        int32_t pid;
        uint32_t uid, gid;
        struct conn *next, *prev;
        struct conn *dirty_next;
        bool is_dirty;
        bool is_closing;  /* no more reading; close once out is flushed */
        bool is_dead;     /* torn down, waiting to be freed */
        bool pack_failed; /* out of memory while packing: the stream is broken */
        bool is_throttled; /* reading paused until answers drain (backpressure) */
        bool is_eof;       /* the peer half-closed while requests were still buffered */
};

/* Takes ownership of fd (closes it on failure). */
void conn_accept(struct server *srv, int fd);

/* Schedules a write of out in this iteration's flush. */
void conn_mark_dirty(struct conn *c);

/* Tears down now: requests in flight are dropped unanswered. */
void conn_close(struct conn *c, const char *why);

/* Stops reading; closes once out is written (or after a grace period). */
void conn_close_after_flush(struct conn *c);

/* Writes out; 0, or -1 if the connection was closed. */
int conn_flush(struct conn *c);

/* After a request finished: resume reading, or close a drained connection. */
void conn_on_request_done(struct conn *c);

/* Server drain: close now if idle, else when idle. */
void conn_drain(struct conn *c);

struct conn *conn_free(struct conn *c);

#endif
