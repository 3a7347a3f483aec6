/* SPDX-License-Identifier: MIT */
/*
 * fuzz-dispatch: libFuzzer target for a client's whole request path in the
 * real daemon:
 *
 *   socket -> conn (read, scan_feed, msgpack_unpack) -> dispatch (message
 *   classification, param count, options map) -> the method's handler in
 *   cache.c / lease.c (keys, namespaces, ttls, envelopes, RESP) -> backend
 *
 * The server is a real one (server_init() on a configuration of its own)
 * whose backend is never started: no Redis node is up, so a command that
 * passed every argument check is answered UNAVAILABLE at once by
 * backend_call(), inside the same dispatch. Nothing waits on the network or
 * on a timer, so a run is deterministic, and each input gets a fresh server
 * (server_init .. server_deinit): no cache or lease state carries over from
 * one input to the next (the request pool and the counters do, as in kcached).
 *
 * Input: the bytes a client sends, as on the wire; corpus files are plain
 * msgpack-RPC streams (tests/fuzz/corpus/fuzz-dispatch/). They go through a
 * socketpair into a conn accepted as the listener would, in one write or in
 * pieces (chosen by a hash of the input, so a crash reproduces from the file
 * alone), the loop turning with EVRUN_NOWAIT in between. When nothing moves
 * any more the peer half-closes, and the loop runs until the conn is gone.
 *
 * Checks, besides "no crash, no leak, no sanitizer report":
 *  - what the daemon writes is a stream of well-formed responses
 *    [1, msgid, err, result] and kcache.error notifications [2, name, [err]],
 *    err being nil or {code, message} with a known code, result nil exactly
 *    when err is not (no Redis: no method can answer a nil result);
 *  - no INTERNAL error: nothing here runs out of memory or sees Redis;
 *  - while the connection stays open after the input, every request received
 *    has been answered once and nothing is in flight; in any case there is
 *    at most one response more than requests (the error that ends a broken
 *    stream, answered to the msgid it could read);
 *  - after the half-close the connection goes away, and the clients and
 *    in-flight gauges are back where they were.
 * A violation prints why and aborts, which libFuzzer reports as a crash.
 *
 * Build: meson setup -Dfuzzing=true (CC=clang), see tests/fuzz/run.
 */
#include <errno.h>
#include <ev.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "daemon/config.h"
#include "daemon/conn.h"
#include "daemon/log.h"
#include "daemon/server.h"
#include "daemon/stats.h"
#include "rpc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Loop turns without any byte moving before the run counts as settled. */
#define FUZZ_IDLE_TURNS 4
/* Upper bound on loop turns per phase: a conn that never settles is a bug. */
#define FUZZ_MAX_TURNS 10000

static struct ev_loop *fuzz_loop;
static struct config fuzz_cfg;
static char fuzz_dir[64];

/* What came back from the daemon on the client's side of the socketpair. */
struct fuzz_peer {
        int fd;
        msgpack_unpacker up;
        uint64_t n_responses;
        uint64_t n_notifications;
        bool is_eof;
};

static void __attribute__((format(printf, 1, 2), noreturn)) fuzz_fail(const char *fmt, ...)
{
        va_list ap;

        fprintf(stderr, "fuzz-dispatch: ");
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        abort();
}

static void
fuzz_cleanup(void)
{
        char path[128];

        snprintf(path, sizeof(path), "%s/kcached.ini", fuzz_dir);
        unlink(path);
        rmdir(fuzz_dir);
}

/* Once per process: the configuration and the loop. */
static void
fuzz_setup(void)
{
        char path[128], err[512];
        FILE *f;

        snprintf(fuzz_dir, sizeof(fuzz_dir), "/tmp/kcache-fuzz-XXXXXX");
        if (mkdtemp(fuzz_dir) == NULL)
                fuzz_fail("mkdtemp: %s", strerror(errno));
        atexit(fuzz_cleanup);
        snprintf(path, sizeof(path), "%s/kcached.ini", fuzz_dir);
        f = fopen(path, "w");
        if (f == NULL)
                fuzz_fail("%s: %s", path, strerror(errno));
        /*
         * The client socket is never bound (the backend never reports ready)
         * and the primary is never contacted: the path and port only have to
         * be valid. Small limits put every limit check within reach of small
         * inputs; compression starts at 64 bytes. Warnings (protocol errors)
         * would flood the output.
         */
        fprintf(f,
                "[server]\nsocket = %s/kcached.sock\n"
                "max_request_bytes = 65536\nmax_batch_keys = 64\n"
                "[redis]\nprimary = 127.0.0.1:1\n"
                "[admin]\nsocket =\n"
                "[cache]\nmax_key_bytes = 256\nmax_value_bytes = 1024\n"
                "compression_threshold = 64\nmax_tracked_namespaces = 4\n"
                "[log]\nlevel = error\n",
                fuzz_dir);
        if (fclose(f) != 0)
                fuzz_fail("%s: write failed", path);
        if (config_load(&fuzz_cfg, path, err, sizeof(err)) < 0)
                fuzz_fail("config: %s", err);
        log_set_level(fuzz_cfg.log_level);
        fuzz_loop = ev_default_loop(EVFLAG_AUTO);
        if (fuzz_loop == NULL)
                fuzz_fail("cannot initialise libev");
}

static uint32_t
fuzz_next(uint32_t *x)
{
        /* xorshift32: deterministic, so every crash reproduces from its input. */
        *x ^= *x << 13;
        *x ^= *x >> 17;
        *x ^= *x << 5;
        return *x;
}

static uint32_t
fuzz_hash(const uint8_t *p, size_t n)
{
        uint32_t h = 2166136261u; /* FNV-1a, then murmur3's finaliser */

        for (size_t i = 0; i < n; i++)
                h = (h ^ p[i]) * 16777619u;
        /* FNV's low bits see only the bytes' low bits: mix before using them. */
        h ^= h >> 16;
        h *= 0x85ebca6bu;
        h ^= h >> 13;
        h *= 0xc2b2ae35u;
        h ^= h >> 16;
        return h != 0 ? h : 1;
}

static bool
fuzz_is_str(const msgpack_object *o, const char *s)
{
        size_t n = strlen(s);

        return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
               memcmp(o->via.str.ptr, s, n) == 0;
}

/* An error object: {"code": known name, "message": str}. */
static void
fuzz_check_error(const msgpack_object *e)
{
        const msgpack_object *code = NULL, *msg = NULL;
        int c;

        if (e->type != MSGPACK_OBJECT_MAP || e->via.map.size != 2)
                fuzz_fail("error object is not a map of two");
        for (uint32_t i = 0; i < 2; i++) {
                const msgpack_object_kv *kv = &e->via.map.ptr[i];
                if (fuzz_is_str(&kv->key, "code"))
                        code = &kv->val;
                else if (fuzz_is_str(&kv->key, "message"))
                        msg = &kv->val;
        }
        if (code == NULL || msg == NULL || code->type != MSGPACK_OBJECT_STR ||
            msg->type != MSGPACK_OBJECT_STR)
                fuzz_fail("error object without str code and message");
        c = rpc_error_find(code->via.str.ptr, code->via.str.size);
        if (c < 0)
                fuzz_fail("unknown error code '%.*s'", (int)code->via.str.size, code->via.str.ptr);
        if (c == RPC_ERR_INTERNAL)
                fuzz_fail("INTERNAL error: %.*s", (int)msg->via.str.size, msg->via.str.ptr);
}

/* One message from the daemon: a response or a kcache.error notification. */
static void
fuzz_check_message(struct fuzz_peer *p, const msgpack_object *o)
{
        const msgpack_object *a;

        if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < 3)
                fuzz_fail("daemon sent something that is not an RPC message");
        a = o->via.array.ptr;
        if (a[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER && a[0].via.u64 == RPC_RESPONSE &&
            o->via.array.size == 4) {
                if (a[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a[1].via.u64 > UINT32_MAX)
                        fuzz_fail("response msgid is not a uint32");
                if (a[2].type == MSGPACK_OBJECT_NIL) {
                        if (a[3].type == MSGPACK_OBJECT_NIL)
                                fuzz_fail("response with neither error nor result");
                } else {
                        fuzz_check_error(&a[2]);
                        if (a[3].type != MSGPACK_OBJECT_NIL)
                                fuzz_fail("response with both error and result");
                }
                p->n_responses++;
                return;
        }
        if (a[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER && a[0].via.u64 == RPC_NOTIFY &&
            o->via.array.size == 3) {
                if (!fuzz_is_str(&a[1], "kcache.error") || a[2].type != MSGPACK_OBJECT_ARRAY ||
                    a[2].via.array.size != 1)
                        fuzz_fail("notification other than kcache.error [err]");
                fuzz_check_error(&a[2].via.array.ptr[0]);
                p->n_notifications++;
                return;
        }
        fuzz_fail("daemon sent an RPC message of unexpected shape");
}

/* Reads what the daemon wrote so far; true if any byte came. */
static bool
fuzz_drain(struct fuzz_peer *p)
{
        msgpack_unpacked res;
        bool moved = false;

        for (;;) {
                if (!msgpack_unpacker_reserve_buffer(&p->up, 64 * 1024))
                        fuzz_fail("out of memory");
                ssize_t n = recv(p->fd, msgpack_unpacker_buffer(&p->up),
                                 msgpack_unpacker_buffer_capacity(&p->up), 0);
                if (n == -1 && errno == EINTR)
                        continue;
                if (n == -1 && (errno == EAGAIN || errno == ECONNRESET))
                        break;
                if (n == -1)
                        fuzz_fail("recv: %s", strerror(errno));
                if (n == 0) {
                        p->is_eof = true;
                        break;
                }
                moved = true;
                msgpack_unpacker_buffer_consumed(&p->up, (size_t)n);
        }
        msgpack_unpacked_init(&res);
        for (;;) {
                msgpack_unpack_return r = msgpack_unpacker_next(&p->up, &res);
                if (r == MSGPACK_UNPACK_CONTINUE)
                        break;
                if (r != MSGPACK_UNPACK_SUCCESS)
                        fuzz_fail("daemon output is not msgpack (%d)", (int)r);
                fuzz_check_message(p, &res.data);
        }
        msgpack_unpacked_destroy(&res);
        return moved;
}

/* One loop iteration (flush, poll, callbacks), then read the answers. */
static bool
fuzz_turn(struct fuzz_peer *p)
{
        ev_run(fuzz_loop, EVRUN_NOWAIT);
        return fuzz_drain(p);
}

/* Turns the loop until no byte moves for a few turns. */
static void
fuzz_settle(struct fuzz_peer *p)
{
        int idle = 0;

        for (int i = 0; idle < FUZZ_IDLE_TURNS; i++) {
                if (i == FUZZ_MAX_TURNS)
                        fuzz_fail("the connection never settles");
                idle = fuzz_turn(p) ? 0 : idle + 1;
        }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct fuzz_peer peer = {.fd = -1};
        struct server srv;
        uint64_t requests0, clients0, inflight0;
        uint32_t x = fuzz_hash(data, size);
        bool in_pieces = (x & 1) != 0;
        size_t off = 0;
        char err[512];
        int sv[2];

        if (fuzz_loop == NULL)
                fuzz_setup();
        if (server_init(&srv, fuzz_loop, &fuzz_cfg, err, sizeof(err)) < 0)
                fuzz_fail("server_init: %s", err);
        /* server_run() would start it: it writes replies and frees closed conns. */
        ev_prepare_start(fuzz_loop, &srv.flush);
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == -1)
                fuzz_fail("socketpair: %s", strerror(errno));
        peer.fd = sv[1];
        if (!msgpack_unpacker_init(&peer.up, 64 * 1024))
                fuzz_fail("out of memory");
        requests0 = stats.requests;
        clients0 = stats.clients_connected;
        inflight0 = stats.inflight;
        conn_accept(&srv, sv[0]); /* sv[0] is the conn's now */
        if (srv.conns == NULL)
                fuzz_fail("conn_accept failed");

        /* The client writes its bytes, in one go or in pieces of 1..size/4+1. */
        for (int turns = 0; off < size && srv.conns != NULL; turns++) {
                size_t step = size - off;
                ssize_t n;

                if (turns == FUZZ_MAX_TURNS)
                        fuzz_fail("the connection stopped reading");
                if (in_pieces) {
                        size_t piece = 1 + fuzz_next(&x) % (size / 4 + 1);
                        step = piece < step ? piece : step;
                }
                n = send(sv[1], data + off, step, MSG_NOSIGNAL);
                if (n > 0)
                        off += (size_t)n;
                else if (n == -1 && errno != EAGAIN && errno != EINTR)
                        break; /* the daemon closed the connection */
                (void)fuzz_turn(&peer);
        }
        fuzz_settle(&peer);

        /* Open and idle: all that was asked has been answered (nothing can wait). */
        if (srv.conns != NULL && !srv.conns->is_closing && !srv.conns->is_dead && off == size) {
                const struct conn *c = srv.conns;
                if (c->n_inflight != 0)
                        fuzz_fail("%u request(s) in flight with no Redis", c->n_inflight);
                if (peer.n_responses != stats.requests - requests0)
                        fuzz_fail("%llu request(s) received, %llu response(s)",
                                  (unsigned long long)(stats.requests - requests0),
                                  (unsigned long long)peer.n_responses);
        }
        /* Plus at most one: the error that ends a broken stream answers its msgid. */
        if (peer.n_responses > stats.requests - requests0 + 1)
                fuzz_fail("more responses (%llu) than requests (%llu)",
                          (unsigned long long)peer.n_responses,
                          (unsigned long long)(stats.requests - requests0));

        /* The client half-closes: the conn must go away. */
        (void)shutdown(sv[1], SHUT_WR);
        for (int i = 0; srv.conns != NULL || srv.dead != NULL; i++) {
                if (i == FUZZ_MAX_TURNS)
                        fuzz_fail("the connection outlives the peer's EOF");
                (void)fuzz_turn(&peer);
        }
        (void)fuzz_drain(&peer);
        if (stats.clients_connected != clients0 || stats.inflight != inflight0)
                fuzz_fail("gauges not restored: clients %llu (was %llu), inflight %llu (was %llu)",
                          (unsigned long long)stats.clients_connected, (unsigned long long)clients0,
                          (unsigned long long)stats.inflight, (unsigned long long)inflight0);

        msgpack_unpacker_destroy(&peer.up);
        close(sv[1]);
        server_deinit(&srv);
        return 0;
}
