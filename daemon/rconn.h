/* SPDX-License-Identifier: MIT */
/*
 * rconn: one connection to one Redis node, owned by kcached on libev.
 *
 * hiredis is used only for RESP: redisFormatCommandArgv() by callers and a
 * redisReader here. Owning the socket (rather than hiredis's async layer)
 * gives what hiredis 0.14 lacks: connect and handshake deadlines, failing
 * every queued command at once when the link dies, reader limits on replies,
 * and no hidden synchronous getaddrinfo().
 *
 *    rconn_send() --> out buf --(prepare: rconn_flush_all)--> socket
 *    socket --> redisReader --> pending FIFO head --> fn(priv, gen, reply)
 *
 * Every command handed to rconn_send() gets exactly one callback: with the
 * reply (err 0), or with RCONN_E_DOWN when the link is lost first. The
 * callback's priv/gen pair is opaque here; the owner uses gen to recognise
 * requests that were already answered (hiredis-style privdata that must stay
 * valid is replaced by a generation check).
 *
 * States: IDLE -> CONNECTING -> HANDSHAKE (AUTH/SELECT/PING replies due) -> UP.
 * Any failure goes back to IDLE and reports RCONN_EV_DOWN with a reason; the
 * owner decides when to reconnect.
 */
#ifndef KCACHE_RCONN_H
#define KCACHE_RCONN_H

#include <ev.h>
#include <hiredis.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "buf.h"

enum { RCONN_E_DOWN = 1 };
enum rconn_state { RCONN_IDLE = 0, RCONN_CONNECTING, RCONN_HANDSHAKE, RCONN_UP };
enum rconn_event { RCONN_EV_UP = 1, RCONN_EV_DOWN };

/*
 * Refuse replies that would make the reader allocate without bound
 * ([redis] max_reply_elements, max_reply_bytes); daemon-wide, set at start.
 */
void rconn_set_limits(long max_elements, size_t max_bytes);

struct rconn;

/* reply is valid only during the call; NULL when err != 0. */
typedef void (*rconn_reply_fn)(void *priv, uint32_t gen, redisReply *reply, int err);
/* why is NULL for RCONN_EV_UP. */
typedef void (*rconn_state_fn)(struct rconn *rc, enum rconn_event ev, const char *why);
/* A reply with no command waiting for it (pub/sub messages); valid during the call. */
typedef void (*rconn_push_fn)(void *priv, redisReply *reply);

struct rconn_pending {
        rconn_reply_fn fn;
        void *priv; /* opaque, owned by the caller of rconn_send() */
        uint32_t gen;
        uint32_t n_replies; /* replies still due; fn runs on the last */
};

/* What the reply being read has built so far (see rconn.c's reader guard). */
struct rconn_guard {
        size_t bytes;    /* objects of the reply in progress, with their strings */
        const char *why; /* static: the limit a refused reply crossed */
};

struct rconn {
        struct ev_loop *loop; /* ref */
        int fd;
        enum rconn_state state;
        ev_io rio;
        ev_io wio;
        ev_timer timer; /* connect + handshake deadline */
        redisReader *reader;
        struct rconn_guard guard; /* the reader's privdata */
        struct buf out;
        struct rconn_pending *q; /* ring of commands sent or queued */
        size_t q_cap, q_head, q_len;
        unsigned n_handshake; /* handshake replies still due */
        rconn_state_fn on_state;
        void *owner; /* ref, for on_state */
        rconn_push_fn on_push; /* NULL: an unsolicited reply is a protocol error */
        void *push_priv;
        struct rconn *flush_next;
        bool is_dirty;
        char name[300]; /* for logs: "primary 127.0.0.1:6379" */
};

void rconn_init(struct rconn *rc, struct ev_loop *loop, rconn_state_fn on_state, void *owner,
                const char *name);
/* Closes (failing anything pending) and frees buffers. */
void rconn_deinit(struct rconn *rc);

/*
 * Starts connecting. handshake (may be NULL) is a RESP byte string of
 * n_handshake commands sent first; any error reply to them fails the
 * connection. RCONN_EV_UP follows once all their replies arrived.
 * 0, or -errno (the state stays IDLE and no event is reported).
 */
int rconn_connect(struct rconn *rc, const struct sockaddr *addr, socklen_t len,
                  const char *handshake, size_t handshake_len, unsigned n_handshake,
                  int timeout_ms);

/*
 * Queues a RESP command string (n_replies commands' worth of replies, e.g. a
 * MULTI ... EXEC block; fn sees only the last reply). Only while UP.
 * 0 (fn will be called exactly once), -ENOTCONN, or -ENOMEM.
 */
int rconn_send(struct rconn *rc, const char *cmd, size_t len, unsigned n_replies,
               rconn_reply_fn fn, void *priv, uint32_t gen);

/*
 * The owner of priv gave up on the command sent with (priv, gen): its
 * callback will not be called, so priv's memory may go. The reply still
 * arrives and is dropped, keeping the queue in step with Redis.
 */
void rconn_forget(struct rconn *rc, void *priv, uint32_t gen);

/* Subscriber connections: replies beyond the queue go to fn (NULL to refuse them). */
void rconn_set_push(struct rconn *rc, rconn_push_fn fn, void *priv);

/* Closes the link: every pending fn gets RCONN_E_DOWN, then on_state(DOWN, why). */
void rconn_close(struct rconn *rc, const char *why);

static inline size_t
rconn_inflight(const struct rconn *rc)
{
        return rc->q_len;
}

/*
 * A redisReader set up exactly as a connection's (the guards of
 * rconn_set_limits(), counting into g, which must outlive it), for
 * daemon/fuzz-reply.c. NULL when out of memory; the caller frees it with
 * redisReaderFree(). A connection also refuses a reply still incomplete once
 * rconn_guard_exceeded(): the caller applies that check itself after each
 * redisReaderFeed() and the replies it took.
 */
redisReader *rconn_reader_new_for_tests(struct rconn_guard *g);
/* The reply in progress (built plus buffered) is past max_bytes. */
bool rconn_guard_exceeded(const redisReader *r);

/* Writes what every rconn has queued; called once per loop iteration. */
void rconn_flush_all(void);
/* True if some rconn has queued commands not yet written. */
bool rconn_any_dirty(void);

#endif
