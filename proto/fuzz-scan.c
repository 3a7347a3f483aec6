/* SPDX-License-Identifier: MIT */
/*
 * fuzz-scan: libFuzzer target for the receive path, scan_feed() ->
 * msgpack_unpack() -> rpc_parse(), as a connection runs it.
 *
 * Input layout: byte 0 picks the limits, byte 1 seeds the read sizes, the
 * rest is the byte stream. The stream is offered to scan_feed() in pieces of
 * pseudo-random size (1 to 4 bytes mostly, sometimes up to 512), the same
 * buffer growing as a socket buffer would, and each accepted frame is
 * consumed before the next is scanned.
 *
 * Besides "no crash, no leak, no sanitizer report", it checks that the
 * framer and msgpack-c agree: a frame scan_feed() accepts must decode with
 * msgpack_unpack() to exactly frame_len bytes (msgpack-c's own nesting limit
 * is 32, so the limits here never exceed it), and re-encoding the object must
 * frame again. A disagreement aborts, which libFuzzer reports as a crash.
 *
 * Build: clang -fsanitize=fuzzer,address,undefined -Iproto proto/fuzz-scan.c
 *        proto/scan.c proto/rpc.c proto/buf.c -lmsgpackc
 */
#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>

#include "buf.h"
#include "rpc.h"
#include "scan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint32_t
fuzz_next(uint32_t *x)
{
        /* xorshift32: deterministic, so every crash reproduces from its input. */
        *x ^= *x << 13;
        *x ^= *x >> 17;
        *x ^= *x << 5;
        return *x;
}

/* Everything a connection does with one accepted frame. */
static void
fuzz_frame(const uint8_t *p, size_t len)
{
        static const struct scan_limits unlimited = {SIZE_MAX, SIZE_MAX, 32};
        msgpack_zone zone;
        msgpack_object obj;
        msgpack_sbuffer sb;
        msgpack_packer pk;
        struct rpc_msg m;
        struct scan s;
        struct buf out = BUF_INIT;
        const char *why, *name;
        size_t off = 0, flen, n;
        uint32_t id;
        int r;

        msgpack_zone_init(&zone, 2048);
        if (msgpack_unpack((const char *)p, len, &off, &zone, &obj) != MSGPACK_UNPACK_SUCCESS ||
            off != len)
                abort();

        /* Re-encoded (minimal encodings: never longer), it must frame again. */
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        if (msgpack_pack_object(&pk, obj) != 0)
                abort();
        scan_reset(&s);
        if (scan_feed(&s, (const uint8_t *)sb.data, sb.size, &unlimited, &flen) != SCAN_OK ||
            flen != sb.size || sb.size > len)
                abort();
        msgpack_sbuffer_destroy(&sb);

        /* The daemon's answers: a reply to requests, an error otherwise. */
        msgpack_packer_init(&pk, &out, buf_msgpack_write);
        r = rpc_parse(&obj, &m, &why);
        switch (r) {
        case RPC_OK:
                if (m.type == RPC_RESPONSE)
                        break;
                if (m.method == NULL || m.params == NULL || m.params->type != MSGPACK_OBJECT_ARRAY)
                        abort();
                if (rpc_method_find(m.method, m.method_len) < 0 && m.type == RPC_REQUEST)
                        rpc_pack_error(&pk, m.msgid, RPC_ERR_NO_METHOD, NULL);
                else if (m.type == RPC_REQUEST && rpc_pack_result_head(&pk, m.msgid) == 0)
                        rpc_pack_bin(&pk, m.method, m.method_len);
                for (uint32_t i = 0; i < m.params->via.array.size; i++)
                        rpc_obj_bytes(&m.params->via.array.ptr[i], &name, &n);
                break;
        case RPC_E_BAD:
                if (why == NULL)
                        abort();
                if (m.type == RPC_REQUEST)
                        rpc_pack_error(&pk, m.msgid, RPC_ERR_BAD_REQUEST, why);
                break;
        default:
                if (why == NULL)
                        abort();
                rpc_pack_error_notify(&pk, RPC_ERR_BAD_REQUEST, why);
                break;
        }
        if (buf_size(&out) > 0) {
                scan_reset(&s);
                if (scan_feed(&s, buf_head(&out), buf_size(&out), &unlimited, &flen) != SCAN_OK ||
                    flen != buf_size(&out))
                        abort();
        }
        /*
         * The peek used on doomed streams and rpc_parse() must agree: the
         * peek finds a msgid exactly in the requests rpc_parse() can answer.
         */
        if (scan_peek_msgid(p, len, &id) == 0) {
                if (r == RPC_E_NO_MSGID || m.type != RPC_REQUEST || m.msgid != id)
                        abort();
        } else if (r != RPC_E_NO_MSGID && m.type == RPC_REQUEST) {
                abort();
        }
        buf_deinit(&out);
        msgpack_zone_destroy(&zone);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static const size_t max_bytes[] = {16, 256, 4096, 1u << 20};
        static const size_t max_elems[] = {4, 64, 1024, 65536};
        static const unsigned max_nesting[] = {0, 2, 8, 32};
        struct scan_limits lim;
        struct scan s;
        size_t start = 0, avail = 0, flen;
        uint32_t x;
        uint32_t id;

        if (size < 2)
                return 0;
        lim.max_bytes = max_bytes[data[0] & 3];
        lim.max_elems = max_elems[(data[0] >> 2) & 3];
        lim.max_nesting = max_nesting[(data[0] >> 4) & 3];
        x = 0x9e3779b9u ^ ((uint32_t)data[1] << 8 | data[0]);
        data += 2;
        size -= 2;

        scan_reset(&s);
        while (start < size) {
                size_t step =
                        fuzz_next(&x) % 8 == 0 ? 1 + fuzz_next(&x) % 512 : 1 + fuzz_next(&x) % 4;
                int r;

                avail = avail + step > size - start ? size - start : avail + step;
                r = scan_feed(&s, data + start, avail, &lim, &flen);
                if (r == SCAN_E_PARTIAL) {
                        if (s.pos > avail)
                                abort();
                        if (start + avail == size)
                                break; /* the peer went away mid-frame */
                        continue;
                }
                if (r != SCAN_OK) {
                        /* Final for the stream: answer if we can, then close. */
                        (void)scan_peek_msgid(data + start, avail, &id);
                        (void)scan_strerror(r);
                        break;
                }
                if (flen == 0 || flen > avail || flen > lim.max_bytes)
                        abort();
                fuzz_frame(data + start, flen);
                start += flen;
                avail -= flen;
        }
        return 0;
}
