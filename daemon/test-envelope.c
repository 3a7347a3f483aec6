/* SPDX-License-Identifier: MIT */
/*
 * test-envelope: unit tests for the stored-value envelope.
 *
 * The byte layout is checked against envelopes built by hand (one with
 * zlib's compress2(), so the decoder is not only tested against its own
 * encoder); then round trips, the compression decisions, raw values, every
 * corruption class (every truncation, every single bit flip, lengths, crc,
 * a zlib bomb), versions, and 1000 calls on one envelope whose output must
 * match a fresh envelope's byte for byte. Ends with a timing of stream reuse
 * against fresh streams per call, printed and not checked.
 * Prints one line per failed check and a summary; exits 0 only if all passed.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

#include "buf.h"
#include "daemon/crc32.h"
#include "daemon/envelope.h"

static unsigned n_passed, n_failed;

#define CHECK(cond) check((cond), #cond, __func__, __LINE__)
#define CHECKF(cond, ...)                                                                          \
        do {                                                                                       \
                if (check((cond), #cond, __func__, __LINE__) == false) {                           \
                        printf("    ");                                                            \
                        printf(__VA_ARGS__);                                                       \
                        printf("\n");                                                              \
                }                                                                                  \
        } while (0)

static bool
check(bool ok, const char *what, const char *func, int line)
{
        if (ok) {
                n_passed++;
        } else {
                n_failed++;
                printf("FAIL %s:%d: %s\n", func, line, what);
        }
        return ok;
}

#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)

static const struct envelope_cfg cfg_default = {
        .compress = true,
        .level = 1,
        .threshold = 1024,
        .inline_max = 1 << 20,
        .max_value_bytes = 16 << 20,
};

static struct envelope *
new_envelope(void)
{
        struct envelope *e = NULL;

        if (envelope_new(&e) != 0) {
                printf("envelope_new failed\n");
                exit(2);
        }
        return e;
}

static void *
xmalloc(size_t n)
{
        void *p = malloc(n > 0 ? n : 1);

        if (p == NULL) {
                printf("out of memory\n");
                exit(2);
        }
        return p;
}

static uint32_t
next_rand(uint32_t *x)
{
        *x ^= *x << 13;
        *x ^= *x >> 17;
        *x ^= *x << 5;
        return *x;
}

static uint8_t *
random_bytes(size_t n, uint32_t seed)
{
        uint8_t *p = xmalloc(n);

        for (size_t i = 0; i < n; i++)
                p[i] = (uint8_t)next_rand(&seed);
        return p;
}

/* Cache-like JSON: repetitive keys, varying numbers. Compresses about 5:1. */
static uint8_t *
json_like(size_t n, uint32_t seed)
{
        uint8_t *p = xmalloc(n + 128);
        size_t len = 0;

        while (len < n) {
                uint32_t id = next_rand(&seed) % 100000;

                len += (size_t)snprintf((char *)p + len, 128,
                                        "{\"id\":%u,\"name\":\"user%u\",\"active\":%s,"
                                        "\"tags\":[\"a\",\"b\"]},",
                                        id, id % 977, id % 3 ? "true" : "false");
        }
        return p;
}

static void
put_be32(uint8_t *p, uint32_t x)
{
        p[0] = (uint8_t)(x >> 24);
        p[1] = (uint8_t)(x >> 16);
        p[2] = (uint8_t)(x >> 8);
        p[3] = (uint8_t)x;
}

/* An envelope built by hand, the way the spec reads: header + payload as given. */
static size_t
build(uint8_t *out, uint8_t version, uint8_t flags, const char *schema, uint32_t ulen, uint32_t crc,
      const void *payload, size_t plen)
{
        size_t slen = strlen(schema);

        out[0] = 0xC1;
        out[1] = 'K';
        out[2] = version;
        out[3] = flags;
        out[4] = (uint8_t)slen;
        memcpy(out + 5, schema, slen);
        put_be32(out + 5 + slen, ulen);
        put_be32(out + 9 + slen, crc);
        if (plen > 0)
                memcpy(out + 13 + slen, payload, plen);
        return 13 + slen + plen;
}

static bool
view_is(const struct envelope_view *v, const void *data, size_t len)
{
        return v->len == len && (len == 0 || memcmp(v->data, data, len) == 0);
}

/*
 * Encodes and decodes one value; checks everything the caller can see.
 * zlib: 1 must be compressed, 0 must not, -1 either. Returns the envelope size.
 */
static size_t
round_trip(struct envelope *e, const struct envelope_cfg *cfg, const void *val, size_t n,
           const char *schema, unsigned flags, int zlib)
{
        struct buf out = BUF_INIT;
        struct envelope_view v;
        size_t slen = schema ? strlen(schema) : 0, saved = 12345, size;
        int r;

        r = envelope_encode(e, cfg, val, n, schema, slen, flags, &out, &saved);
        CHECKF(r == 0, "encode n=%zu: %d", n, r);
        size = buf_size(&out);
        CHECKF(size == ENVELOPE_HDR_MIN + slen + n - saved, "n=%zu size=%zu saved=%zu", n, size,
               saved);
        r = envelope_decode(e, cfg, buf_head(&out), size, &v);
        CHECKF(r == ENVELOPE_OK, "decode n=%zu: %d (%s)", n, r, envelope_why(e));
        if (r == ENVELOPE_OK) {
                CHECKF(view_is(&v, val, n), "n=%zu: data differs", n);
                CHECK(v.is_raw == false);
                CHECK(v.slen == slen && (slen == 0 || memcmp(v.schema, schema, slen) == 0));
                CHECK((v.flags & ENVELOPE_F_STALE) == (flags & ENVELOPE_F_STALE));
                CHECK(((v.flags & ENVELOPE_F_ZLIB) != 0) == (saved > 0));
                if (zlib >= 0)
                        CHECKF(((v.flags & ENVELOPE_F_ZLIB) != 0) == (zlib == 1),
                               "n=%zu: zlib flag %u, expected %d", n, v.flags, zlib);
        }
        buf_deinit(&out);
        return size;
}

/* crc32_fast() gives zlib's values: every length to 4,200, every alignment, chained. */
static void
test_crc32(void)
{
        static unsigned char b[4300];
        uint32_t x = 1;
        unsigned bad = 0;

        for (size_t i = 0; i < sizeof(b); i++) {
                x = x * 1103515245u + 12345u;
                b[i] = (unsigned char)(x >> 16);
        }
        for (size_t n = 0; n <= 4200; n++) {
                size_t off = n % 16;
                uint32_t want = (uint32_t)crc32_z(0, b + off, n);
                if (crc32_fast(0, b + off, n) != want)
                        bad++;
                /* chained: the first part's crc carried into the rest */
                if (crc32_fast(crc32_fast(0, b + off, n / 3), b + off + n / 3, n - n / 3) != want)
                        bad++;
        }
        CHECK(bad == 0);
        CHECK(crc32_fast(0, "123456789", 9) == 0xCBF43926u); /* the check value of CRC-32 */
}

static void
test_layout(void)
{
        struct envelope *e = new_envelope();
        struct envelope_cfg cfg = cfg_default;
        struct buf out = BUF_INIT;
        struct envelope_view v;
        uint8_t want[64], packed[64];
        uLongf clen = sizeof(packed);
        size_t n, saved = 1;

        /* Encoder output, byte for byte. */
        cfg.compress = false;
        n = build(want, 1, ENVELOPE_F_STALE, "v1", 5, (uint32_t)crc32(0, (const Bytef *)"hello", 5),
                  "hello", 5);
        CHECK(envelope_encode(e, &cfg, "hello", 5, "v1", 2, ENVELOPE_F_STALE, &out, &saved) == 0);
        CHECK(saved == 0);
        CHECK(buf_size(&out) == n && memcmp(buf_head(&out), want, n) == 0);
        CHECK(memcmp(want, "\xC1K\x01\x02\x02v1\x00\x00\x00\x05", 11) == 0);
        buf_deinit(&out);

        /* A zlib payload made by zlib's compress2(), not by our encoder. */
        static const char text[] = "abcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabc";
        CHECK(compress2(packed, &clen, (const Bytef *)text, sizeof(text) - 1, 9) == Z_OK);
        n = build(want, 1, ENVELOPE_F_ZLIB, "", sizeof(text) - 1,
                  (uint32_t)crc32(0, (const Bytef *)text, sizeof(text) - 1), packed, clen);
        CHECK(envelope_decode(e, &cfg, want, n, &v) == ENVELOPE_OK);
        CHECK(view_is(&v, text, sizeof(text) - 1) && v.flags == ENVELOPE_F_ZLIB && v.slen == 0);
        /* Inflated data lives in the scratch buffer, stored data inside the input. */
        CHECK(v.data < want || v.data >= want + n);

        n = build(want, 1, 0, "s", 3, (uint32_t)crc32(0, (const Bytef *)"xyz", 3), "xyz", 3);
        CHECK(envelope_decode(e, &cfg, want, n, &v) == ENVELOPE_OK);
        CHECK(v.data == want + 14 && v.schema == want + 5 && v.slen == 1 && v.flags == 0);
        envelope_free(e);
}

static void
test_round_trips(void)
{
        struct envelope *e = new_envelope();
        struct envelope_cfg cfg = cfg_default;
        static const uint8_t nuls[] = {0, 1, 0, 0, 0xC1, 'K', 1, 0, 0xff, 0};
        char schema255[256];
        uint8_t *json = json_like(100 * KIB, 1), *rnd = random_bytes(100 * KIB, 2);
        size_t size;

        memset(schema255, 's', 255);
        schema255[255] = '\0';

        round_trip(e, &cfg, NULL, 0, NULL, 0, 0);
        round_trip(e, &cfg, "", 0, "schema", ENVELOPE_F_STALE, 0);
        round_trip(e, &cfg, "x", 1, NULL, 0, 0);
        round_trip(e, &cfg, nuls, sizeof(nuls), NULL, 0, 0);
        round_trip(e, &cfg, nuls, sizeof(nuls), "user:v2", ENVELOPE_F_STALE, 0);
        round_trip(e, &cfg, nuls, sizeof(nuls), schema255, 0, 0);

        size = round_trip(e, &cfg, json, 100 * KIB, NULL, 0, 1);
        CHECKF(size < 100 * KIB / 3, "100 KiB of JSON -> %zu bytes", size);
        size = round_trip(e, &cfg, json, 100 * KIB, "with-schema", ENVELOPE_F_STALE, 1);
        CHECKF(size < 100 * KIB / 3, "100 KiB of JSON -> %zu bytes", size);
        size = round_trip(e, &cfg, rnd, 100 * KIB, NULL, 0, 0);
        CHECK(size == ENVELOPE_HDR_MIN + 100 * KIB);

        /* threshold and inline_max are both inclusive bounds. */
        round_trip(e, &cfg, json, cfg.threshold - 1, NULL, 0, 0);
        round_trip(e, &cfg, json, cfg.threshold, NULL, 0, 1);
        cfg.inline_max = 50 * KIB;
        round_trip(e, &cfg, json, 50 * KIB, NULL, 0, 1);
        round_trip(e, &cfg, json, 50 * KIB + 1, NULL, 0, 0);
        round_trip(e, &cfg, json, 100 * KIB, NULL, 0, 0);
        cfg = cfg_default;
        cfg.threshold = 0;
        round_trip(e, &cfg, NULL, 0, NULL, 0, 0); /* nothing to gain */
        round_trip(e, &cfg, "a", 1, NULL, 0, 0);
        round_trip(e, &cfg, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 40, NULL, 0, 1);
        cfg.compress = false;
        round_trip(e, &cfg, json, 100 * KIB, NULL, 0, 0);
        cfg.level = 42; /* ignored when not compressing */
        round_trip(e, &cfg, json, 2 * KIB, NULL, 0, 0);

        cfg = cfg_default;
        for (int level = -1; level <= 9; level++) {
                cfg.level = level;
                round_trip(e, &cfg, json, 4 * KIB, NULL, 0, level == 0 ? 0 : 1);
        }

        /* Exactly max_value_bytes is allowed. */
        cfg = cfg_default;
        cfg.max_value_bytes = 100 * KIB;
        round_trip(e, &cfg, rnd, 100 * KIB, NULL, 0, 0);
        round_trip(e, &cfg, json, 100 * KIB, NULL, 0, 1);

        free(json);
        free(rnd);
        envelope_free(e);
}

static void
test_encode_errors(void)
{
        struct envelope *e = new_envelope();
        struct envelope_cfg cfg = cfg_default;
        struct buf out = BUF_INIT;
        char schema[257];
        size_t saved = 7;
        uint8_t *val = random_bytes(200, 3);

        memset(schema, 'x', sizeof(schema));
        CHECK(buf_append(&out, "prefix", 6) == 0);

        cfg.max_value_bytes = 199;
        CHECK(envelope_encode(e, &cfg, val, 200, NULL, 0, 0, &out, &saved) == ENVELOPE_E_TOO_LARGE);
        cfg.max_value_bytes = 0;
        CHECK(envelope_encode(e, &cfg, val, 1, NULL, 0, 0, &out, &saved) == ENVELOPE_E_TOO_LARGE);
        CHECK(envelope_encode(e, &cfg, NULL, 0, NULL, 0, 0, &out, &saved) == 0);
        cfg = cfg_default;
        CHECK(envelope_encode(e, &cfg, val, 10, schema, 256, 0, &out, &saved) == -EINVAL);
        CHECK(envelope_encode(e, &cfg, val, 10, schema, 255, 0, &out, &saved) == 0);
        CHECK(envelope_encode(e, &cfg, val, 10, NULL, 0, ENVELOPE_F_ZLIB, &out, &saved) == -EINVAL);
        CHECK(envelope_encode(e, &cfg, val, 10, NULL, 0, 0x80, &out, &saved) == -EINVAL);
        cfg.level = 10;
        CHECK(envelope_encode(e, &cfg, val, 10, NULL, 0, 0, &out, &saved) == -EINVAL);
        cfg.level = -2;
        CHECK(envelope_encode(e, &cfg, val, 10, NULL, 0, 0, &out, &saved) == -EINVAL);

        /* Errors leave out alone; successes append after what was there. */
        CHECK(buf_size(&out) == 6 + 13 + (13 + 255 + 10));
        CHECK(memcmp(buf_head(&out), "prefix", 6) == 0);
        CHECK(buf_head(&out)[6] == 0xC1 && buf_head(&out)[6 + 13] == 0xC1);
        CHECK(strcmp(envelope_strerror(ENVELOPE_E_TOO_LARGE), "value too large") == 0);

        /* Appending behind a read cursor. */
        buf_consume(&out, 6);
        cfg = cfg_default;
        {
                size_t before = buf_size(&out);
                struct envelope_view v;

                CHECK(envelope_encode(e, &cfg, val, 200, "t", 1, 0, &out, &saved) == 0);
                CHECK(envelope_decode(e, &cfg, buf_head(&out) + before, buf_size(&out) - before,
                                      &v) == ENVELOPE_OK);
                CHECK(view_is(&v, val, 200));
        }
        buf_deinit(&out);
        free(val);
        envelope_free(e);
}

static void
test_raw(void)
{
        static const struct {
                const char *p;
                size_t n;
        } raws[] = {
                {"", 0},
                {"x", 1},
                {"\xC1", 1},
                {"\xC1k\x01\x00\x00", 5},
                {"\xC1\x00", 2},
                {"\xC1\xC1K", 3},
                {"K\xC1", 2},
                {"\x93\x00\x01\xc0", 4},
                {"{\"json\":true}", 13},
                {"\xC2K\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", 13},
        };
        struct envelope *e = new_envelope();
        struct envelope_view v;

        for (size_t i = 0; i < sizeof(raws) / sizeof(raws[0]); i++) {
                memset(&v, 0xAA, sizeof(v));
                CHECKF(envelope_decode(e, &cfg_default, raws[i].p, raws[i].n, &v) == ENVELOPE_OK,
                       "raw %zu", i);
                CHECKF(v.is_raw && v.data == (const uint8_t *)raws[i].p && v.len == raws[i].n &&
                               v.slen == 0 && v.flags == 0,
                       "raw %zu", i);
        }
        CHECK(envelope_decode(e, &cfg_default, NULL, 0, &v) == ENVELOPE_OK && v.is_raw &&
              v.len == 0);
        /* The two magic bytes alone are an envelope, and a short one. */
        CHECK(envelope_decode(e, &cfg_default, "\xC1K", 2, &v) == ENVELOPE_E_CORRUPT);
        envelope_free(e);
}

/* Every prefix is raw (shorter than the magic) or corrupt; so is one byte more. */
static void
check_truncations(struct envelope *e, const uint8_t *env, size_t n, const char *what)
{
        struct envelope_view v;
        uint8_t *copy = xmalloc(n + 1);
        unsigned bad = 0;
        int r;

        /* A heap copy of each prefix, so ASan sees any read past its end. */
        for (size_t i = 0; i < n; i++) {
                uint8_t *pre = xmalloc(i);

                memcpy(pre, env, i);
                r = envelope_decode(e, &cfg_default, pre, i, &v);
                if (i < 2 ? (r != ENVELOPE_OK || !v.is_raw) : r != ENVELOPE_E_CORRUPT)
                        bad++;
                free(pre);
        }
        CHECKF(bad == 0, "%s: %u of %zu prefixes misdecoded", what, bad, n);
        memcpy(copy, env, n);
        copy[n] = 0;
        CHECKF(envelope_decode(e, &cfg_default, copy, n + 1, &v) == ENVELOPE_E_CORRUPT,
               "%s: trailing byte accepted", what);
        CHECKF(envelope_decode(e, &cfg_default, copy, n, &v) == ENVELOPE_OK, "%s: whole", what);
        free(copy);
}

/*
 * Every single bit flip: raw (the magic), newer, corrupt, or a good decode
 * of the same data. The crc covers the payload, not the header's flags and
 * schema tag, so flips there decode; nor does inflate look at the padding
 * bits after a zlib stream's last block. Everywhere else (length, crc, a
 * stored payload) a flip must be caught, and the data must never change.
 */
static void
check_bit_flips(struct envelope *e, const uint8_t *env, size_t n, const uint8_t *val, size_t vlen,
                const char *what)
{
        struct envelope_view v;
        uint8_t *copy = xmalloc(n);
        unsigned bad = 0, undetected = 0;
        int r;

        for (size_t i = 0; i < n * 8; i++) {
                memcpy(copy, env, n);
                copy[i / 8] ^= (uint8_t)(1u << (i % 8));
                r = envelope_decode(e, &cfg_default, copy, n, &v);
                if (r == ENVELOPE_OK && !v.is_raw) {
                        if (!view_is(&v, val, vlen))
                                bad++;
                        else if (i / 8 >= 5 + v.slen &&
                                 (i / 8 < 13 + v.slen || !(v.flags & ENVELOPE_F_ZLIB)))
                                undetected++;
                } else if (r != ENVELOPE_OK && r != ENVELOPE_E_CORRUPT && r != ENVELOPE_E_NEWER) {
                        bad++;
                }
        }
        CHECKF(bad == 0, "%s: %u flips changed the data", what, bad);
        CHECKF(undetected == 0, "%s: %u payload/length/crc flips undetected", what, undetected);
        free(copy);
}

static void
test_corruption(void)
{
        struct envelope *e = new_envelope();
        struct envelope_cfg cfg = cfg_default;
        struct buf out = BUF_INIT;
        struct envelope_view v;
        uint8_t *json = json_like(4 * KIB, 4), *rnd = random_bytes(300, 5);
        uint8_t *env;
        size_t n, saved;

        /* Stored, with schema and stale. */
        CHECK(envelope_encode(e, &cfg, rnd, 300, "schema", 6, ENVELOPE_F_STALE, &out, &saved) == 0);
        env = buf_head(&out);
        n = buf_size(&out);
        check_truncations(e, env, n, "stored");
        check_bit_flips(e, env, n, rnd, 300, "stored");

        for (size_t i = 0; i < 4; i++) {
                env[15 + i] ^= 0x10; /* the crc, after "schema" and the length */
                CHECK(envelope_decode(e, &cfg, env, n, &v) == ENVELOPE_E_CORRUPT);
                CHECK(strcmp(envelope_why(e), "crc mismatch") == 0);
                env[15 + i] ^= 0x10;
        }
        CHECK(envelope_decode(e, &cfg, env, n, &v) == ENVELOPE_OK);

        /* Length field larger, smaller than the payload; larger than max_value_bytes. */
        put_be32(env + 11, 301);
        CHECK(envelope_decode(e, &cfg, env, n, &v) == ENVELOPE_E_CORRUPT);
        put_be32(env + 11, 299);
        CHECK(envelope_decode(e, &cfg, env, n, &v) == ENVELOPE_E_CORRUPT);
        put_be32(env + 11, UINT32_MAX);
        CHECK(envelope_decode(e, &cfg, env, n, &v) == ENVELOPE_E_CORRUPT);
        put_be32(env + 11, 300);
        cfg.max_value_bytes = 299;
        CHECK(envelope_decode(e, &cfg, env, n, &v) == ENVELOPE_E_CORRUPT);
        CHECK(strcmp(envelope_why(e), "length above max_value_bytes") == 0);
        cfg.max_value_bytes = 300;
        CHECK(envelope_decode(e, &cfg, env, n, &v) == ENVELOPE_OK);
        cfg = cfg_default;

        /* A schema length running past the end. */
        env[4] = 255;
        CHECK(envelope_decode(e, &cfg, env, 13 + 200, &v) == ENVELOPE_E_CORRUPT);
        env[4] = 6;

        /* Flags: unknown bits; zlib set on a stored payload. */
        for (unsigned bit = 2; bit < 8; bit++) {
                env[3] ^= (uint8_t)(1u << bit);
                CHECK(envelope_decode(e, &cfg, env, n, &v) == ENVELOPE_E_CORRUPT);
                env[3] ^= (uint8_t)(1u << bit);
        }
        env[3] |= ENVELOPE_F_ZLIB;
        CHECK(envelope_decode(e, &cfg, env, n, &v) == ENVELOPE_E_CORRUPT);
        buf_deinit(&out);

        /* Compressed, without schema. */
        CHECK(envelope_encode(e, &cfg, json, 4 * KIB, NULL, 0, 0, &out, &saved) == 0);
        env = buf_head(&out);
        n = buf_size(&out);
        CHECK(saved > 0 && (env[3] & ENVELOPE_F_ZLIB));
        check_truncations(e, env, n, "zlib");
        check_bit_flips(e, env, n, json, 4 * KIB, "zlib");

        /* A length one short: inflate gets exactly that much room and stops there. */
        envelope_free(e);
        e = new_envelope();
        put_be32(env + 5, 4 * KIB - 1);
        CHECK(envelope_decode(e, &cfg, env, n, &v) == ENVELOPE_E_CORRUPT);
        CHECKF(envelope_scratch_bytes(e) == 4 * KIB - 1, "scratch %zu", envelope_scratch_bytes(e));
        put_be32(env + 5, 4 * KIB + 1);
        CHECK(envelope_decode(e, &cfg, env, n, &v) == ENVELOPE_E_CORRUPT);
        put_be32(env + 5, 4 * KIB);
        env[9] ^= 1;
        CHECK(envelope_decode(e, &cfg, env, n, &v) == ENVELOPE_E_CORRUPT);
        CHECK(strcmp(envelope_why(e), "crc mismatch") == 0);
        env[9] ^= 1;
        CHECK(envelope_decode(e, &cfg, env, n, &v) == ENVELOPE_OK && view_is(&v, json, 4 * KIB));
        buf_deinit(&out);

        /* A zlib payload that is not zlib; an empty one. */
        {
                uint8_t bad[64];

                n = build(bad, 1, ENVELOPE_F_ZLIB, "", 10, 0, "not zlib at all", 15);
                CHECK(envelope_decode(e, &cfg, bad, n, &v) == ENVELOPE_E_CORRUPT);
                n = build(bad, 1, ENVELOPE_F_ZLIB, "", 0, 0, NULL, 0);
                CHECK(envelope_decode(e, &cfg, bad, n, &v) == ENVELOPE_E_CORRUPT);
        }
        free(json);
        free(rnd);
        envelope_free(e);
}

/* 64 MiB of zeros through deflate at level 9, a MiB at a time. */
static uint8_t *
zero_bomb(size_t *len)
{
        z_stream zs;
        uint8_t *zeros = calloc(1, MIB), *out = xmalloc(256 * KIB);

        memset(&zs, 0, sizeof(zs));
        if (zeros == NULL || deflateInit(&zs, 9) != Z_OK)
                exit(2);
        zs.next_out = out;
        zs.avail_out = 256 * KIB;
        for (int i = 0; i < 64; i++) {
                zs.next_in = zeros;
                zs.avail_in = MIB;
                if (deflate(&zs, i == 63 ? Z_FINISH : Z_NO_FLUSH) == Z_STREAM_ERROR)
                        exit(2);
        }
        *len = zs.total_out;
        deflateEnd(&zs);
        free(zeros);
        return out;
}

static void
test_bomb(void)
{
        struct envelope *e = new_envelope();
        struct envelope_cfg cfg = cfg_default;
        struct envelope_view v;
        uint8_t *zeros = calloc(1, 64 * MIB), *bomb, *env;
        size_t blen, n;
        uint32_t crc1k, crc64m;

        if (zeros == NULL)
                exit(2);
        crc1k = (uint32_t)crc32_z(0, zeros, KIB);
        crc64m = (uint32_t)crc32_z(0, zeros, 64 * MIB);
        bomb = zero_bomb(&blen);
        printf("zlib bomb: 64 MiB of zeros -> %zu bytes (ratio %.0f:1)\n", blen,
               (double)(64 * MIB) / (double)blen);
        CHECK(blen < 100 * KIB);
        env = xmalloc(blen + 13);

        /* Claims 1 KiB: inflating stops at 1 KiB, on a buffer of exactly 1 KiB. */
        n = build(env, 1, ENVELOPE_F_ZLIB, "", (uint32_t)KIB, crc1k, bomb, blen);
        CHECK(envelope_decode(e, &cfg, env, n, &v) == ENVELOPE_E_CORRUPT);
        CHECKF(envelope_scratch_bytes(e) == KIB, "scratch %zu", envelope_scratch_bytes(e));
        CHECK(strcmp(envelope_why(e), "zlib payload does not end at its length") == 0);

        /* Claims 64 MiB, the truth, with max_value_bytes 16 MiB: refused before inflating. */
        envelope_free(e);
        e = new_envelope();
        n = build(env, 1, ENVELOPE_F_ZLIB, "", (uint32_t)(64 * MIB), crc64m, bomb, blen);
        CHECK(envelope_decode(e, &cfg, env, n, &v) == ENVELOPE_E_CORRUPT);
        CHECK(envelope_scratch_bytes(e) == 0);

        /* The same with room for it decodes: the bomb is valid zlib at deflate's best ratio,
         * which the ratio check must let through. The big scratch goes at the next call. */
        cfg.max_value_bytes = 64 * MIB;
        CHECK(envelope_decode(e, &cfg, env, n, &v) == ENVELOPE_OK && view_is(&v, zeros, 64 * MIB));
        CHECK(envelope_scratch_bytes(e) == 64 * MIB);
        CHECK(envelope_decode(e, &cfg, "raw", 3, &v) == ENVELOPE_OK && v.is_raw);
        CHECK(envelope_scratch_bytes(e) == 0);

        /* A claim no zlib stream of this size could meet is refused without allocating. */
        cfg.max_value_bytes = 1u << 30;
        n = build(env, 1, ENVELOPE_F_ZLIB, "", (uint32_t)(512 * MIB), 0, bomb, blen);
        CHECK(envelope_decode(e, &cfg, env, n, &v) == ENVELOPE_E_CORRUPT);
        CHECK(envelope_scratch_bytes(e) == 0);
        n = build(env, 1, ENVELOPE_F_ZLIB, "", (uint32_t)(16 * MIB), 0, bomb, 10);
        CHECK(envelope_decode(e, &cfg, env, n, &v) == ENVELOPE_E_CORRUPT);
        CHECK(envelope_scratch_bytes(e) == 0);

        free(env);
        free(bomb);
        free(zeros);
        envelope_free(e);
}

static void
test_versions(void)
{
        struct envelope *e = new_envelope();
        struct envelope_view v;
        uint8_t env[64];
        size_t n;

        CHECK(envelope_decode(e, &cfg_default, "\xC1K\x02", 3, &v) == ENVELOPE_E_NEWER);
        CHECK(envelope_decode(e, &cfg_default, "\xC1K\xff\xff", 4, &v) == ENVELOPE_E_NEWER);
        n = build(env, 2, 0, "", 3, (uint32_t)crc32(0, (const Bytef *)"abc", 3), "abc", 3);
        CHECK(envelope_decode(e, &cfg_default, env, n, &v) == ENVELOPE_E_NEWER);
        CHECK(strcmp(envelope_why(e), "newer envelope version") == 0);
        env[2] = 0;
        CHECK(envelope_decode(e, &cfg_default, env, n, &v) == ENVELOPE_E_CORRUPT);
        env[2] = 1;
        CHECK(envelope_decode(e, &cfg_default, env, n, &v) == ENVELOPE_OK && view_is(&v, "abc", 3));
        CHECK(strcmp(envelope_why(e), "") == 0);
        envelope_free(e);
}

/*
 * 1000 values on one envelope, the level changing as a reload would: each
 * decodes, and every envelope equals what a fresh envelope writes, so no
 * state leaks from one value into the next.
 */
static void
test_reuse(void)
{
        struct envelope *e = new_envelope(), *fresh;
        struct envelope_cfg cfg = cfg_default;
        struct buf out = BUF_INIT, ref = BUF_INIT;
        struct envelope_view v;
        uint8_t *json = json_like(8 * KIB + 8, 6), *rnd = random_bytes(8 * KIB + 8, 7);
        uint32_t seed = 8;
        unsigned bad_decode = 0, bad_bytes = 0, n_zlib = 0;
        size_t saved;

        cfg.threshold = 64;
        for (int i = 0; i < 1000; i++) {
                size_t n = next_rand(&seed) % (8 * KIB);
                const uint8_t *val = i % 3 == 2 ? rnd : json;
                const char *schema = i % 2 ? "v1" : NULL;

                if (i % 50 == 0)
                        cfg.level = (int)(next_rand(&seed) % 10);
                buf_clear(&out);
                if (envelope_encode(e, &cfg, val + (i % 7), n, schema, schema ? 2 : 0,
                                    i % 5 ? 0 : ENVELOPE_F_STALE, &out, &saved) != 0 ||
                    envelope_decode(e, &cfg, buf_head(&out), buf_size(&out), &v) != ENVELOPE_OK ||
                    !view_is(&v, val + (i % 7), n)) {
                        bad_decode++;
                        continue;
                }
                n_zlib += (v.flags & ENVELOPE_F_ZLIB) != 0;
                if (i % 10 == 0) {
                        fresh = new_envelope();
                        buf_clear(&ref);
                        envelope_encode(fresh, &cfg, val + (i % 7), n, schema, schema ? 2 : 0,
                                        i % 5 ? 0 : ENVELOPE_F_STALE, &ref, &saved);
                        if (buf_size(&ref) != buf_size(&out) ||
                            memcmp(buf_head(&ref), buf_head(&out), buf_size(&out)) != 0)
                                bad_bytes++;
                        envelope_free(fresh);
                }
        }
        CHECKF(bad_decode == 0, "%u of 1000 failed", bad_decode);
        CHECKF(bad_bytes == 0, "%u of 100 differ from a fresh envelope's", bad_bytes);
        CHECKF(n_zlib > 300, "only %u compressed", n_zlib);
        buf_deinit(&out);
        buf_deinit(&ref);
        free(json);
        free(rnd);
        envelope_free(e);
}

static double
now(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Printed, not checked: timings depend on the machine and the sanitizers. */
static void
measure(void)
{
        struct envelope *e = new_envelope(), *fresh;
        struct buf out = BUF_INIT;
        struct envelope_view v;
        uint8_t *json = json_like(KIB, 9);
        const int rounds = 2000;
        unsigned bad = 0;
        double t0, reuse, per_call;
        size_t saved;

        t0 = now();
        for (int i = 0; i < rounds; i++) {
                buf_clear(&out);
                bad += envelope_encode(e, &cfg_default, json, KIB, NULL, 0, 0, &out, &saved) != 0;
                bad += envelope_decode(e, &cfg_default, buf_head(&out), buf_size(&out), &v) != 0;
        }
        reuse = (now() - t0) / rounds;
        t0 = now();
        for (int i = 0; i < rounds; i++) {
                fresh = new_envelope();
                buf_clear(&out);
                bad += envelope_encode(fresh, &cfg_default, json, KIB, NULL, 0, 0, &out, &saved) !=
                       0;
                bad += envelope_decode(fresh, &cfg_default, buf_head(&out), buf_size(&out), &v) !=
                       0;
                envelope_free(fresh);
        }
        per_call = (now() - t0) / rounds;
        CHECK(bad == 0);
        printf("1 KiB JSON -> %zu bytes; encode+decode: %.2f us reusing streams, %.2f us with "
               "fresh streams per call (%.1fx)\n",
               buf_size(&out), reuse * 1e6, per_call * 1e6, per_call / reuse);
        buf_deinit(&out);
        free(json);
        envelope_free(e);
}

int
main(void)
{
        CHECK(envelope_free(NULL) == NULL);
        test_crc32();
        test_layout();
        test_round_trips();
        test_encode_errors();
        test_raw();
        test_corruption();
        test_bomb();
        test_versions();
        test_reuse();
        measure();
        printf("%u passed, %u failed\n", n_passed, n_failed);
        return n_failed == 0 ? 0 : 1;
}
