/* SPDX-License-Identifier: MIT */
/*
 * fuzz-reply: libFuzzer target for the bytes a Redis node sends, read by a
 * redisReader set up exactly as rconn.c sets one up (its createArray guard,
 * RCONN_MAX_REPLY_ELEMENTS) and drained as rconn_on_read() drains it: feed
 * what arrived, take replies until the reader has none, stop for good at
 * the first reader error or when an incomplete reply holds more than
 * RCONN_MAX_REPLY_BYTES.
 *
 * Input: the byte stream, as on the wire (corpus files are RESP text,
 * tests/fuzz/corpus/fuzz-reply/). It is fed whole or in pieces chosen by a
 * hash of the input, so a crash reproduces from the file alone.
 *
 * Checks, besides "no crash, no leak, no sanitizer report" (an unguarded
 * `*2147483647` asks calloc for 16 GiB, which libFuzzer reports as a
 * malloc limit crash):
 *  - every array, at every depth, has at most RCONN_MAX_REPLY_ELEMENTS;
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

#include "daemon/rconn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_DEPTH 9 /* redisReader's rstack */

static void __attribute__((format(printf, 1, 2), noreturn))
fuzz_fail(const char *fmt, ...)
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
        uint32_t h = 2166136261u; /* FNV-1a */

        for (size_t i = 0; i < n; i++)
                h = (h ^ p[i]) * 16777619u;
        return h != 0 ? h : 1;
}

/* Checks one reply tree; returns its number of nodes. */
static size_t
fuzz_walk(const redisReply *r, int depth, size_t fed)
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
                if (r->elements > RCONN_MAX_REPLY_ELEMENTS)
                        fuzz_fail("array of %zu elements passed the guard", r->elements);
                if (r->elements > 0 && r->element == NULL)
                        fuzz_fail("array of %zu elements without a vector", r->elements);
                for (size_t i = 0; i < r->elements; i++) {
                        if (r->element[i] == NULL)
                                fuzz_fail("array element %zu is NULL", i);
                        nodes += fuzz_walk(r->element[i], depth + 1, fed);
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
        redisReader *rd = rconn_reader_new_for_tests();
        uint32_t x = fuzz_hash(data, size);
        bool in_pieces = (x & 1) != 0;
        size_t off = 0, nodes = 0;

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
                        nodes += fuzz_walk(reply, 1, off);
                        freeReplyObject(reply);
                        /* The shortest node is 3 bytes (":\r\n" reads as 0). */
                        if (nodes > off / 3)
                                fuzz_fail("%zu reply nodes from %zu bytes", nodes, off);
                }
                if (rd->len < rd->pos || rd->len - rd->pos > off)
                        fuzz_fail("reader buffers %zu bytes of %zu fed", rd->len - rd->pos, off);
                /* As rconn_on_read(): an incomplete reply may not grow without bound. */
                if (rd->len - rd->pos > RCONN_MAX_REPLY_BYTES)
                        break;
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
