/* SPDX-License-Identifier: MIT */
/*
 * fuzz-envelope: libFuzzer target for envelope_decode(), the path every
 * value read from Redis takes.
 *
 * Input layout: byte 0 picks the re-encoding config, the rest is the stored
 * value. It is decoded with max_value_bytes 1 MiB. Besides "no crash, no
 * leak, no sanitizer report", a successful decode must describe bytes inside
 * the input or the envelope's scratch buffer, within max_value_bytes, and must
 * survive a round trip: re-encoded with its schema tag and stale flag (and
 * compressed or not, per byte 0) it decodes to the same data, tag and flag.
 * A disagreement aborts, which libFuzzer reports as a crash.
 *
 * Build: clang -fsanitize=fuzzer,address,undefined -I. -Iproto
 *        daemon/fuzz-envelope.c daemon/envelope.c proto/buf.c -lz
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "daemon/envelope.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_VALUE ((size_t)1 << 20)

static struct envelope *fuzz_dec, *fuzz_enc;

static void
fuzz_require(bool ok)
{
        if (!ok)
                abort();
}

static bool
fuzz_same(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
        return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct envelope_cfg cfg = {
                .compress = true,
                .level = 1,
                .threshold = 0,
                .inline_max = FUZZ_MAX_VALUE,
                .max_value_bytes = FUZZ_MAX_VALUE,
        };
        struct envelope_view v, w;
        struct buf out = BUF_INIT;
        const uint8_t *p;
        size_t n, saved;
        int r;

        /* Kept across inputs, as the daemon keeps them: stale stream state would show. */
        if (fuzz_dec == NULL && envelope_new(&fuzz_dec) != 0)
                abort();
        if (fuzz_enc == NULL && envelope_new(&fuzz_enc) != 0)
                abort();
        if (size < 1)
                return 0;
        cfg.compress = (data[0] & 1) != 0;
        cfg.level = data[0] >> 1 & 7;
        cfg.threshold = data[0] & 0x10 ? 64 : 0;
        p = data + 1;
        n = size - 1;

        r = envelope_decode(fuzz_dec, &cfg, p, n, &v);
        if (r == ENVELOPE_E_CORRUPT || r == ENVELOPE_E_NEWER) {
                fuzz_require(envelope_why(fuzz_dec)[0] != '\0');
                return 0;
        }
        fuzz_require(r == ENVELOPE_OK);
        if (v.is_raw) {
                fuzz_require(v.data == p && v.len == n && v.slen == 0 && v.flags == 0);
        } else {
                fuzz_require(n >= 2 && p[0] == ENVELOPE_MAGIC0 && p[1] == ENVELOPE_MAGIC1);
                fuzz_require(v.len <= FUZZ_MAX_VALUE);
                fuzz_require(v.len <= envelope_scratch_bytes(fuzz_dec) ||
                             (v.data >= p && v.data + v.len <= p + n));
                fuzz_require(v.schema >= p && v.schema + v.slen <= p + n);
                fuzz_require((v.flags & ~(ENVELOPE_F_ZLIB | ENVELOPE_F_STALE)) == 0);
        }

        /* Round trip. v points into the input or fuzz_dec's scratch: encode with the other. */
        r = envelope_encode(fuzz_enc, &cfg, v.data, v.len, v.schema, v.slen,
                            v.flags & ENVELOPE_F_STALE, &out, &saved);
        fuzz_require(r == 0);
        fuzz_require(buf_size(&out) == ENVELOPE_HDR_MIN + v.slen + v.len - saved);
        r = envelope_decode(fuzz_enc, &cfg, buf_head(&out), buf_size(&out), &w);
        fuzz_require(r == ENVELOPE_OK && !w.is_raw);
        fuzz_require(fuzz_same(w.data, w.len, v.data, v.len));
        fuzz_require(fuzz_same(w.schema, w.slen, v.schema, v.slen));
        fuzz_require((w.flags & ENVELOPE_F_STALE) == (v.flags & ENVELOPE_F_STALE));
        fuzz_require(((w.flags & ENVELOPE_F_ZLIB) != 0) == (saved > 0));
        buf_deinit(&out);
        return 0;
}
