/* SPDX-License-Identifier: MIT */
/*
 * fuzz-reply: libFuzzer target for the bytes a Redis node sends, read by a
 * redisReader set up exactly as rconn.c sets one up (its createArray guard
 * of [redis] max_reply_elements) and drained as rconn_on_read() drains it:
 * feed what arrived, take replies until the reader has none, stop for good
 * at the first reader error or when more than max_reply_bytes wait unparsed.
 *
 * Input: the byte stream, as on the wire (corpus files are RESP text,
 * tests/fuzz/corpus/fuzz-reply/). A hash of the input picks whether it is
 * fed whole or in pieces, and whether the limits are the defaults or the
 * smallest the configuration allows (16 elements, 64 KiB), so a crash
 * reproduces from the file alone.
 *
 * Checks, besides "no crash, no leak, no sanitizer report" (an unguarded
 * `*2147483647` asks calloc for 16 GiB, which libFuzzer reports as a
 * malloc limit crash):
 *  - every array, at every depth, has at most max_reply_elements, also in
 *    the reply still being read (the reader allocates an array's vector at
 *    its header);
 *  - replies are well formed: a known type, strings NUL-terminated at len,
 *    element vectors present, nesting within hiredis's 9-level stack;
 *  - the reader invents nothing: each reply node took at least 3 bytes of
 *    input and no string is longer than the input;
 *  - a refused stream says why (errstr).
 * A violation prints why and aborts, which libFuzzer reports as a crash.
 *
 * hiredis itself is Debian's shared library, not instrumented: libFuzzer's
 * guidance comes from rconn.c and this walk, and the sanitizers see
 * hiredis's allocations and libc calls. That is the reader kcached runs.
 */
#include <hiredis.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/config.h"
#include "daemon/rconn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_DEPTH 9 /* redisReader's rstack */

/* The limits in force: [redis] max_reply_elements and max_reply_bytes. */
static long fuzz_max_elements;
static size_t fuzz_max_bytes;
static long fuzz_default_elements;
static size_t fuzz_default_bytes;

static void __attribute__((format(printf, 1, 2), noreturn)) fuzz_fail(const char *fmt, ...)
{
        va_list ap;

        fprintf(stderr, "fuzz-reply: ");
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        abort();
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

/*
 * Checks one reply tree; returns its number of nodes. is_partial: the reply
 * the reader is still building (redisReader.reply), whose arrays are
 * allocated at their header and filled as elements arrive, so NULL elements
 * are the ones still due.
 */
static size_t
fuzz_walk(const redisReply *r, int depth, size_t fed, bool is_partial)
{
        size_t nodes = 1;

        if (depth > FUZZ_MAX_DEPTH)
                fuzz_fail("reply nested %d deep", depth);
        switch (r->type) {
        case REDIS_REPLY_STRING:
        case REDIS_REPLY_STATUS:
        case REDIS_REPLY_ERROR:
                if (r->str == NULL)
                        fuzz_fail("string reply without str");
                if (r->len > fed)
                        fuzz_fail("string of %zu bytes from %zu bytes of input", r->len, fed);
                if (r->str[r->len] != '\0')
                        fuzz_fail("string reply not NUL-terminated at len");
                break;
        case REDIS_REPLY_ARRAY:
                if (r->elements > (size_t)fuzz_max_elements)
                        fuzz_fail("array of %zu elements passed the guard", r->elements);
                if (r->elements > 0 && r->element == NULL)
                        fuzz_fail("array of %zu elements without a vector", r->elements);
                for (size_t i = 0; i < r->elements; i++) {
                        if (r->element[i] == NULL && is_partial)
                                continue;
                        if (r->element[i] == NULL)
                                fuzz_fail("array element %zu is NULL", i);
                        nodes += fuzz_walk(r->element[i], depth + 1, fed, is_partial);
                }
                break;
        case REDIS_REPLY_INTEGER:
        case REDIS_REPLY_NIL:
                break;
        default:
                fuzz_fail("reply of unknown type %d", r->type);
        }
        return nodes;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        uint32_t x = fuzz_hash(data, size);
        bool in_pieces = (x & 1) != 0;
        size_t off = 0, nodes = 0;
        redisReader *rd;
        struct rconn_guard guard;

        if (fuzz_default_elements == 0) {
                /* The daemon's defaults, from the configuration table. */
                struct config cfg;
                if (config_init(&cfg) < 0)
                        fuzz_fail("config_init failed");
                fuzz_default_elements = cfg.max_reply_elements;
                fuzz_default_bytes = (size_t)cfg.max_reply_bytes;
                config_deinit(&cfg);
        }
        fuzz_max_elements = (x & 2) != 0 ? 16 : fuzz_default_elements;
        fuzz_max_bytes = (x & 2) != 0 ? 65536 : fuzz_default_bytes;
        rconn_set_limits(fuzz_max_elements, fuzz_max_bytes);
        rd = rconn_reader_new_for_tests(&guard);
        if (rd == NULL)
                fuzz_fail("out of memory");
        while (off < size) {
                size_t step = size - off;

                if (in_pieces) {
                        size_t piece = 1 + fuzz_next(&x) % (size / 4 + 1);
                        step = piece < step ? piece : step;
                }
                if (redisReaderFeed(rd, (const char *)data + off, step) != REDIS_OK)
                        goto refused;
                off += step;
                for (;;) {
                        void *reply = NULL;
                        if (redisReaderGetReply(rd, &reply) != REDIS_OK)
                                goto refused;
                        if (reply == NULL)
                                break;
                        guard.bytes = 0;
                        nodes += fuzz_walk(reply, 1, off, false);
                        freeReplyObject(reply);
                        /* The shortest node is 3 bytes (":\r\n" reads as 0). */
                        if (nodes > off / 3)
                                fuzz_fail("%zu reply nodes from %zu bytes", nodes, off);
                }
                /* The guard acts at the header, before any element arrives. */
                if (rd->reply != NULL && nodes + fuzz_walk(rd->reply, 1, off, true) > off / 3)
                        fuzz_fail("%zu reply nodes from %zu bytes", nodes, off);
                if (rd->len < rd->pos || rd->len - rd->pos > off)
                        fuzz_fail("reader buffers %zu bytes of %zu fed", rd->len - rd->pos, off);
                /* As rconn_on_read(): an incomplete reply may not grow without bound. */
                if (rconn_guard_exceeded(rd))
                        break;
                if (guard.bytes > fuzz_max_bytes + 65536)
                        fuzz_fail("a reply built %zu bytes past max_reply_bytes %zu",
                                  guard.bytes, fuzz_max_bytes);
        }
        redisReaderFree(rd);
        return 0;
refused:
        /* rconn closes the connection here, naming the reason in its log. */
        if (rd->err == 0 || rd->errstr[0] == '\0')
                fuzz_fail("reader refused the stream without a reason");
        redisReaderFree(rd);
        return 0;
}
