/* SPDX-License-Identifier: MIT */
/*
 * test-scan: unit tests for the msgpack framer.
 *
 * Every msgpack type is framed in one call, byte by byte and split at every
 * point; frames are cross-checked against msgpack-c's own unpacker, which
 * must consume exactly the bytes scan_feed() reported. Then the limits, which
 * must trip on the header alone, and scan_peek_msgid().
 * Prints one line per failed check and a summary; exits 0 only if all passed.
 */
#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scan.h"

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

static const struct scan_limits big = {1u << 20, 1u << 20, 32};

/* One call on a fresh scanner. */
static int
scan_once(const void *p, size_t len, const struct scan_limits *lim, size_t *frame_len)
{
        struct scan s;

        scan_reset(&s);
        *frame_len = 0;
        return scan_feed(&s, p, len, lim, frame_len);
}

/*
 * Feeds p one byte more per call: every prefix but the whole must be PARTIAL
 * and never walk past what it was given. Returns the final result.
 */
static int
scan_bytewise(const uint8_t *p, size_t len, const struct scan_limits *lim, size_t *frame_len,
              bool *ok)
{
        struct scan s;
        int r = SCAN_E_PARTIAL;

        scan_reset(&s);
        *ok = true;
        for (size_t i = 1; i <= len; i++) {
                r = scan_feed(&s, p, i, lim, frame_len);
                if (r != SCAN_E_PARTIAL)
                        return r;
                if (s.pos > i)
                        *ok = false;
        }
        return r;
}

/* msgpack-c's view: how many bytes the first object takes, or 0 if it fails. */
static size_t
unpack_len(const uint8_t *p, size_t len)
{
        msgpack_zone zone;
        msgpack_object obj;
        size_t off = 0;
        msgpack_unpack_return r;

        msgpack_zone_init(&zone, 4096);
        r = msgpack_unpack((const char *)p, len, &off, &zone, &obj);
        msgpack_zone_destroy(&zone);
        return r == MSGPACK_UNPACK_SUCCESS || r == MSGPACK_UNPACK_EXTRA_BYTES ? off : 0;
}

/* The full set of framing checks on one complete frame. */
static void
check_frame(const char *name, const uint8_t *p, size_t len, uint8_t first)
{
        size_t flen = 0;
        uint8_t *q;
        bool ok;
        int r;

        CHECKF(len > 0 && p[0] == first, "%s: encoded as 0x%02x, expected 0x%02x", name,
               len ? p[0] : 0, first);
        CHECKF(unpack_len(p, len) == len, "%s: msgpack-c disagrees about the frame", name);

        r = scan_once(p, len, &big, &flen);
        CHECKF(r == SCAN_OK && flen == len, "%s: one call: r=%d len=%zu, expected %zu", name, r,
               flen, len);

        /* A trailing byte belongs to the next frame. */
        q = malloc(len + 1);
        memcpy(q, p, len);
        q[len] = 0xc0;
        r = scan_once(q, len + 1, &big, &flen);
        CHECKF(r == SCAN_OK && flen == len, "%s: with trailer: r=%d len=%zu", name, r, flen);
        free(q);

        r = scan_bytewise(p, len, &big, &flen, &ok);
        CHECKF(r == SCAN_OK && flen == len && ok, "%s: byte by byte: r=%d len=%zu ok=%d", name, r,
               flen, ok);

        /* Two calls, split at every point (sampled for big frames: it is quadratic). */
        ok = true;
        for (size_t k = 1; k<len; k += len> 4096 ? 997 : 1) {
                struct scan s;

                scan_reset(&s);
                r = scan_feed(&s, p, k, &big, &flen);
                if (r != SCAN_E_PARTIAL || s.pos > k) {
                        printf("    %s: split %zu: first half r=%d\n", name, k, r);
                        ok = false;
                        break;
                }
                r = scan_feed(&s, p, len, &big, &flen);
                if (r != SCAN_OK || flen != len) {
                        printf("    %s: split %zu: second half r=%d len=%zu\n", name, k, r, flen);
                        ok = false;
                        break;
                }
        }
        CHECKF(ok, "%s: split in two", name);
}

/* --- one frame per msgpack type ----------------------------------------- */

typedef void (*pack_fn)(msgpack_packer *pk);

static void
pack_blob(msgpack_packer *pk, int kind, size_t n)
{
        char *b = calloc(1, n + 1);

        for (size_t i = 0; i < n; i++)
                b[i] = (char)(i * 7);
        switch (kind) {
        case 's':
                msgpack_pack_str_with_body(pk, b, n);
                break;
        case 'b':
                msgpack_pack_bin_with_body(pk, b, n);
                break;
        default:
                msgpack_pack_ext_with_body(pk, b, n, 5);
                break;
        }
        free(b);
}

static void
pack_nils(msgpack_packer *pk, size_t n, bool is_map)
{
        if (is_map)
                msgpack_pack_map(pk, n);
        else
                msgpack_pack_array(pk, n);
        for (size_t i = 0; i < (is_map ? 2 * n : n); i++)
                msgpack_pack_nil(pk);
}

/* {"a": [1, {"b": [[], {}]}, "x"], "c": nil} */
static void
pack_nested(msgpack_packer *pk)
{
        msgpack_pack_map(pk, 2);
        msgpack_pack_str_with_body(pk, "a", 1);
        msgpack_pack_array(pk, 3);
        msgpack_pack_int(pk, 1);
        msgpack_pack_map(pk, 1);
        msgpack_pack_str_with_body(pk, "b", 1);
        msgpack_pack_array(pk, 2);
        msgpack_pack_array(pk, 0);
        msgpack_pack_map(pk, 0);
        msgpack_pack_str_with_body(pk, "x", 1);
        msgpack_pack_str_with_body(pk, "c", 1);
        msgpack_pack_nil(pk);
}

struct type_case {
        const char *name;
        uint8_t first;
        int kind; /* what to pack, see pack_case() */
        int64_t v;
};

enum {
        T_INT,
        T_NIL,
        T_FALSE,
        T_TRUE,
        T_FLOAT,
        T_DOUBLE,
        T_U8,
        T_U16,
        T_U32,
        T_U64,
        T_I8,
        T_I16,
        T_I32,
        T_I64,
        T_STR,
        T_BIN,
        T_EXT,
        T_ARRAY,
        T_MAP,
        T_NESTED,
};

static void
pack_case(msgpack_packer *pk, const struct type_case *c)
{
        switch (c->kind) {
        case T_INT:
                msgpack_pack_int64(pk, c->v);
                break;
        case T_NIL:
                msgpack_pack_nil(pk);
                break;
        case T_FALSE:
                msgpack_pack_false(pk);
                break;
        case T_TRUE:
                msgpack_pack_true(pk);
                break;
        case T_FLOAT:
                msgpack_pack_float(pk, 1.5f);
                break;
        case T_DOUBLE:
                msgpack_pack_double(pk, -2.25);
                break;
        case T_U8:
                msgpack_pack_fix_uint8(pk, (uint8_t)c->v);
                break;
        case T_U16:
                msgpack_pack_fix_uint16(pk, (uint16_t)c->v);
                break;
        case T_U32:
                msgpack_pack_fix_uint32(pk, (uint32_t)c->v);
                break;
        case T_U64:
                msgpack_pack_fix_uint64(pk, (uint64_t)c->v);
                break;
        case T_I8:
                msgpack_pack_fix_int8(pk, (int8_t)c->v);
                break;
        case T_I16:
                msgpack_pack_fix_int16(pk, (int16_t)c->v);
                break;
        case T_I32:
                msgpack_pack_fix_int32(pk, (int32_t)c->v);
                break;
        case T_I64:
                msgpack_pack_fix_int64(pk, c->v);
                break;
        case T_STR:
                pack_blob(pk, 's', (size_t)c->v);
                break;
        case T_BIN:
                pack_blob(pk, 'b', (size_t)c->v);
                break;
        case T_EXT:
                pack_blob(pk, 'e', (size_t)c->v);
                break;
        case T_ARRAY:
                pack_nils(pk, (size_t)c->v, false);
                break;
        case T_MAP:
                pack_nils(pk, (size_t)c->v, true);
                break;
        case T_NESTED:
                pack_nested(pk);
                break;
        }
}

static const struct type_case type_cases[] = {
        {"positive fixint 0", 0x00, T_INT, 0},
        {"positive fixint 127", 0x7f, T_INT, 127},
        {"negative fixint -1", 0xff, T_INT, -1},
        {"negative fixint -32", 0xe0, T_INT, -32},
        {"nil", 0xc0, T_NIL, 0},
        {"false", 0xc2, T_FALSE, 0},
        {"true", 0xc3, T_TRUE, 0},
        {"float32", 0xca, T_FLOAT, 0},
        {"float64", 0xcb, T_DOUBLE, 0},
        {"uint8", 0xcc, T_U8, 200},
        {"uint16", 0xcd, T_U16, 60000},
        {"uint32", 0xce, T_U32, 4000000000},
        {"uint64", 0xcf, T_U64, INT64_MAX},
        {"int8", 0xd0, T_I8, -100},
        {"int16", 0xd1, T_I16, -30000},
        {"int32", 0xd2, T_I32, -2000000000},
        {"int64", 0xd3, T_I64, INT64_MIN},
        {"fixstr empty", 0xa0, T_STR, 0},
        {"fixstr 31", 0xbf, T_STR, 31},
        {"str8", 0xd9, T_STR, 40},
        {"str16", 0xda, T_STR, 300},
        {"str32", 0xdb, T_STR, 70000},
        {"bin8 empty", 0xc4, T_BIN, 0},
        {"bin8", 0xc4, T_BIN, 10},
        {"bin16", 0xc5, T_BIN, 300},
        {"bin32", 0xc6, T_BIN, 70000},
        {"fixext1", 0xd4, T_EXT, 1},
        {"fixext2", 0xd5, T_EXT, 2},
        {"fixext4", 0xd6, T_EXT, 4},
        {"fixext8", 0xd7, T_EXT, 8},
        {"fixext16", 0xd8, T_EXT, 16},
        {"ext8 empty", 0xc7, T_EXT, 0},
        {"ext8", 0xc7, T_EXT, 3},
        {"ext16", 0xc8, T_EXT, 300},
        {"ext32", 0xc9, T_EXT, 70000},
        {"fixarray empty", 0x90, T_ARRAY, 0},
        {"fixarray", 0x93, T_ARRAY, 3},
        {"array16", 0xdc, T_ARRAY, 20},
        {"array32", 0xdd, T_ARRAY, 65536},
        {"fixmap empty", 0x80, T_MAP, 0},
        {"fixmap", 0x81, T_MAP, 1},
        {"map16", 0xde, T_MAP, 20},
        {"map32", 0xdf, T_MAP, 65536},
        {"nested", 0x82, T_NESTED, 0},
};

static void
test_types(void)
{
        for (size_t i = 0; i < sizeof(type_cases) / sizeof(type_cases[0]); i++) {
                msgpack_sbuffer sb;
                msgpack_packer pk;

                msgpack_sbuffer_init(&sb);
                msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
                pack_case(&pk, &type_cases[i]);
                check_frame(type_cases[i].name, (const uint8_t *)sb.data, sb.size,
                            type_cases[i].first);
                msgpack_sbuffer_destroy(&sb);
        }
}

/* Non-minimal encodings are legal msgpack and must frame the same way. */
static void
test_hand_encoded(void)
{
        static const uint8_t array16_empty[] = {0xdc, 0x00, 0x00};
        static const uint8_t array32_one[] = {0xdd, 0x00, 0x00, 0x00, 0x01, 0xc0};
        static const uint8_t map16_empty[] = {0xde, 0x00, 0x00};
        static const uint8_t map32_one[] = {0xdf, 0x00, 0x00, 0x00, 0x01, 0x01, 0x02};
        static const uint8_t str32_two[] = {0xdb, 0x00, 0x00, 0x00, 0x02, 'h', 'i'};
        static const uint8_t bin16_empty[] = {0xc5, 0x00, 0x00};
        static const uint8_t ext32_one[] = {0xc9, 0x00, 0x00, 0x00, 0x01, 0x7f, 0xaa};
        /* [[], {}, [[]]] closes four containers with its last byte. */
        static const uint8_t empties[] = {0x93, 0x90, 0x80, 0x91, 0x90};

        check_frame("array16 empty", array16_empty, sizeof(array16_empty), 0xdc);
        check_frame("array32 one", array32_one, sizeof(array32_one), 0xdd);
        check_frame("map16 empty", map16_empty, sizeof(map16_empty), 0xde);
        check_frame("map32 one", map32_one, sizeof(map32_one), 0xdf);
        check_frame("str32 two", str32_two, sizeof(str32_two), 0xdb);
        check_frame("bin16 empty", bin16_empty, sizeof(bin16_empty), 0xc5);
        check_frame("ext32 one", ext32_one, sizeof(ext32_one), 0xc9);
        check_frame("empty containers", empties, sizeof(empties), 0x93);
}

static void
test_back_to_back(void)
{
        /* [1, "ab"] then {} then 7 then [[]] */
        static const uint8_t stream[] = {0x92, 0x01, 0xa2, 'a', 'b', 0x80, 0x07, 0x91, 0x90};
        static const size_t frames[] = {5, 1, 1, 2};
        struct scan s;
        size_t flen, start = 0, n = 0;
        bool ok = true;
        int r;

        /* All bytes at once: one frame per call. */
        scan_reset(&s);
        for (size_t i = 0; i < 4; i++) {
                r = scan_feed(&s, stream + start, sizeof(stream) - start, &big, &flen);
                CHECKF(r == SCAN_OK && flen == frames[i], "frame %zu: r=%d len=%zu", i, r, flen);
                start += flen;
        }
        CHECK(start == sizeof(stream));

        /* One byte per read, as a connection would see it. */
        scan_reset(&s);
        start = 0;
        for (size_t have = 1; have <= sizeof(stream); have++) {
                while (start < have) {
                        r = scan_feed(&s, stream + start, have - start, &big, &flen);
                        if (r == SCAN_E_PARTIAL)
                                break;
                        if (r != SCAN_OK || n >= 4 || flen != frames[n]) {
                                ok = false;
                                break;
                        }
                        start += flen;
                        n++;
                }
        }
        CHECKF(ok && n == 4 && start == sizeof(stream), "byte stream: %zu frames, ok=%d", n, ok);
}

/* --- limits --------------------------------------------------------------- */

#define SCAN_LIT(lit, lim, flen) scan_once(lit, sizeof(lit) - 1, lim, flen)

static void
test_limits_headers(void)
{
        struct scan_limits huge = {SIZE_MAX, SIZE_MAX, SCAN_MAX_NESTING};
        struct scan_limits small = {255, 1024, 8};
        size_t flen;

        /* 16 GiB for msgpack-c's unpacker; five bytes and a refusal for us. */
        CHECK(SCAN_LIT("\xdd\x20\x00\x00\x00", &big, &flen) == SCAN_E_TOO_LARGE);
        CHECK(SCAN_LIT("\xdd\xff\xff\xff\xff", &big, &flen) == SCAN_E_TOO_LARGE);
        CHECK(SCAN_LIT("\xdf\x10\x00\x00\x00", &big, &flen) == SCAN_E_TOO_LARGE);
        CHECK(SCAN_LIT("\xdf\xff\xff\xff\xff", &big, &flen) == SCAN_E_TOO_LARGE);
        CHECK(SCAN_LIT("\xc6\xff\xff\xff\xff", &big, &flen) == SCAN_E_TOO_LARGE);
        CHECK(SCAN_LIT("\xdb\xff\xff\xff\xff", &big, &flen) == SCAN_E_TOO_LARGE);
        CHECK(SCAN_LIT("\xdb\x00\x10\x00\x00", &big, &flen) == SCAN_E_TOO_LARGE);
        CHECK(SCAN_LIT("\xc9\xff\xff\xff\xff\x01", &big, &flen) == SCAN_E_TOO_LARGE);
        CHECK(SCAN_LIT("\xde\xff\xff", &small, &flen) == SCAN_E_TOO_LARGE);
        CHECK(SCAN_LIT("\xdc\xff\xff", &small, &flen) == SCAN_E_TOO_LARGE);
        CHECK(SCAN_LIT("\xc5\x01\x00", &small, &flen) == SCAN_E_TOO_LARGE);
        /* The same, nested: the room left is what counts. */
        CHECK(SCAN_LIT("\x92\xc0\xdd\x00\x10\x00\x00", &big, &flen) == SCAN_E_TOO_LARGE);
        /* A header cut short is PARTIAL, not a guess. */
        CHECK(SCAN_LIT("\xdd\x20\x00", &big, &flen) == SCAN_E_PARTIAL);
        CHECK(SCAN_LIT("\xc6\xff", &big, &flen) == SCAN_E_PARTIAL);

        /* Without limits nothing overflows: the scanner just waits. */
        CHECK(SCAN_LIT("\xdd\xff\xff\xff\xff", &huge, &flen) == SCAN_E_PARTIAL);
        CHECK(SCAN_LIT("\xdf\xff\xff\xff\xff", &huge, &flen) == SCAN_E_PARTIAL);
        CHECK(SCAN_LIT("\xc6\xff\xff\xff\xff", &huge, &flen) == SCAN_E_PARTIAL);
        CHECK(SCAN_LIT("\xc9\xff\xff\xff\xff\x01", &huge, &flen) == SCAN_E_PARTIAL);
}

static void
test_limits_bytes(void)
{
        /* bin8 of 10 bytes: a 12-byte frame. */
        static const uint8_t bin[] = {0xc4, 10, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
        /* [1, 2, uint16]: the last element's 3 bytes end at byte 6. */
        static const uint8_t arr[] = {0x93, 0x01, 0x02, 0xcd, 0x12, 0x34};
        /* {48 pairs}: 96 objects; {47 pairs}: 94. */
        static const uint8_t map48[] = {0xdf, 0x00, 0x00, 0x00, 48};
        static const uint8_t map47[] = {0xdf, 0x00, 0x00, 0x00, 47};
        static const uint8_t u64[] = {0xcf, 0, 0, 0, 0, 0, 0, 0, 1};
        struct scan_limits lim = {12, 100, 8};
        size_t flen;
        int r;

        r = scan_once(bin, sizeof(bin), &lim, &flen);
        CHECKF(r == SCAN_OK && flen == 12, "r=%d", r);
        lim.max_bytes = 11;
        CHECK(scan_once(bin, sizeof(bin), &lim, &flen) == SCAN_E_TOO_LARGE);
        CHECK(scan_once(bin, 2, &lim, &flen) == SCAN_E_TOO_LARGE); /* header alone */
        CHECK(scan_once(bin, 1, &lim, &flen) == SCAN_E_PARTIAL);

        lim.max_bytes = 6;
        r = scan_once(arr, sizeof(arr), &lim, &flen);
        CHECKF(r == SCAN_OK && flen == 6, "r=%d", r);
        lim.max_bytes = 5;
        CHECK(scan_once(arr, sizeof(arr), &lim, &flen) == SCAN_E_TOO_LARGE);
        CHECK(scan_once(arr, 4, &lim, &flen) == SCAN_E_TOO_LARGE); /* type byte of the uint16 */
        lim.max_bytes = 3;                                         /* 3 elements need 4 bytes */
        CHECK(scan_once(arr, 1, &lim, &flen) == SCAN_E_TOO_LARGE);

        lim.max_bytes = 9;
        r = scan_once(u64, sizeof(u64), &lim, &flen);
        CHECKF(r == SCAN_OK && flen == 9, "r=%d", r);
        lim.max_bytes = 8;
        CHECK(scan_once(u64, 1, &lim, &flen) == SCAN_E_TOO_LARGE);

        /* A count that needs exactly the room left fits. */
        lim.max_bytes = 4;
        r = scan_once("\x93\x01\x02\x03", 4, &lim, &flen);
        CHECKF(r == SCAN_OK && flen == 4, "r=%d", r);
        lim.max_bytes = 3;
        CHECK(scan_once("\x93\x01\x02\x03", 4, &lim, &flen) == SCAN_E_TOO_LARGE);
        lim.max_bytes = 5 + 94;
        CHECK(scan_once(map47, sizeof(map47), &lim, &flen) == SCAN_E_PARTIAL);
        lim.max_bytes = 5 + 93;
        CHECK(scan_once(map47, sizeof(map47), &lim, &flen) == SCAN_E_TOO_LARGE);

        /* Maps count twice against the room left. */
        lim.max_bytes = 100;
        CHECK(scan_once(map48, sizeof(map48), &lim, &flen) == SCAN_E_TOO_LARGE);
        CHECK(scan_once(map47, sizeof(map47), &lim, &flen) == SCAN_E_PARTIAL);
}

static void
test_limits_elems(void)
{
        static const uint8_t arr3[] = {0x93, 0x01, 0x02, 0x03};       /* 4 objects */
        static const uint8_t map1[] = {0x81, 0x01, 0x02};             /* 3 objects */
        static const uint8_t nest[] = {0x92, 0x92, 1, 2, 0x92, 3, 4}; /* 7 objects */
        static const uint8_t empties[] = {0x92, 0x90, 0x80};          /* 3 objects */
        struct scan_limits lim = {1024, 4, 8};
        size_t flen;
        int r;

        r = scan_once(arr3, sizeof(arr3), &lim, &flen);
        CHECKF(r == SCAN_OK && flen == 4, "r=%d", r);
        lim.max_elems = 3;
        CHECK(scan_once(arr3, 1, &lim, &flen) == SCAN_E_TOO_LARGE); /* on the header */
        r = scan_once(map1, sizeof(map1), &lim, &flen);
        CHECKF(r == SCAN_OK && flen == 3, "r=%d", r);
        lim.max_elems = 2;
        CHECK(scan_once(map1, 1, &lim, &flen) == SCAN_E_TOO_LARGE);
        lim.max_elems = 7;
        r = scan_once(nest, sizeof(nest), &lim, &flen);
        CHECKF(r == SCAN_OK && flen == sizeof(nest), "r=%d", r);
        lim.max_elems = 6;
        CHECK(scan_once(nest, sizeof(nest), &lim, &flen) == SCAN_E_TOO_LARGE);
        lim.max_elems = 3;
        r = scan_once(empties, sizeof(empties), &lim, &flen);
        CHECKF(r == SCAN_OK && flen == 3, "r=%d", r);
        lim.max_elems = 1;
        r = scan_once("\x07", 1, &lim, &flen);
        CHECKF(r == SCAN_OK && flen == 1, "r=%d", r);
        lim.max_elems = 0;
        CHECK(scan_once("\x07", 1, &lim, &flen) == SCAN_E_TOO_LARGE);

        /* The count starts again with each frame. */
        {
                struct scan s;

                lim.max_elems = 4;
                scan_reset(&s);
                for (int i = 0; i < 3; i++) {
                        r = scan_feed(&s, arr3, sizeof(arr3), &lim, &flen);
                        CHECKF(r == SCAN_OK && flen == 4, "frame %d: r=%d", i, r);
                }
        }
}

static void
test_limits_nesting(void)
{
        uint8_t p[SCAN_MAX_NESTING + 2];
        struct scan_limits lim = {1024, 1024, 32};
        size_t flen;
        int r;

        /* n nested arrays: 0x91 x (n-1), then the innermost empty 0x90. */
        memset(p, 0x91, sizeof(p));
        p[31] = 0x90;
        r = scan_once(p, 32, &lim, &flen);
        CHECKF(r == SCAN_OK && flen == 32, "32 deep: r=%d", r);
        CHECKF(unpack_len(p, 32) == 32, "msgpack-c rejects 32 deep");
        p[31] = 0x91;
        p[32] = 0x90;
        r = scan_once(p, 33, &lim, &flen);
        CHECKF(r == SCAN_E_TOO_DEEP, "33 deep: r=%d", r);
        /* Refused on the 33rd type byte, before anything follows it. */
        p[32] = 0x91;
        CHECK(scan_once(p, 33, &lim, &flen) == SCAN_E_TOO_DEEP);
        p[32] = 0x90;
        /* msgpack-c's own stack is 32 deep too (MSGPACK_EMBED_STACK_SIZE). */
        CHECKF(unpack_len(p, 33) == 0, "msgpack-c accepts 33 deep");

        /* 32 arrays around a scalar: still 32 containers. */
        memset(p, 0x91, sizeof(p));
        p[32] = 0x05;
        r = scan_once(p, 33, &lim, &flen);
        CHECKF(r == SCAN_OK && flen == 33, "32 deep + scalar: r=%d", r);

        /* Maps nest the same way: {0: {0: ... {}}} */
        {
                uint8_t m[2 * 32 + 1];

                for (int i = 0; i < 32; i++) {
                        m[2 * i] = 0x81;
                        m[2 * i + 1] = 0x00;
                }
                m[64] = 0x80;
                r = scan_once(m, 65, &lim, &flen);
                CHECKF(r == SCAN_E_TOO_DEEP, "33 maps: r=%d", r);
                r = scan_once(m + 2, 63, &lim, &flen);
                CHECKF(r == SCAN_OK && flen == 63, "32 maps: r=%d", r);
        }

        lim.max_nesting = 0;
        CHECK(scan_once("\x90", 1, &lim, &flen) == SCAN_E_TOO_DEEP);
        CHECK(scan_once("\x80", 1, &lim, &flen) == SCAN_E_TOO_DEEP);
        r = scan_once("\x05", 1, &lim, &flen);
        CHECKF(r == SCAN_OK && flen == 1, "scalar at max_nesting 0: r=%d", r);

        /* max_nesting above the scanner's own stack is clamped to it. */
        lim.max_nesting = 1000;
        memset(p, 0x91, sizeof(p));
        p[SCAN_MAX_NESTING - 1] = 0x90;
        r = scan_once(p, SCAN_MAX_NESTING, &lim, &flen);
        CHECKF(r == SCAN_OK && flen == SCAN_MAX_NESTING, "64 deep: r=%d", r);
        p[SCAN_MAX_NESTING - 1] = 0x91;
        p[SCAN_MAX_NESTING] = 0x90;
        r = scan_once(p, SCAN_MAX_NESTING + 1, &lim, &flen);
        CHECKF(r == SCAN_E_TOO_DEEP, "65 deep: r=%d", r);
}

static void
test_invalid(void)
{
        size_t flen;

        CHECK(SCAN_LIT("\xc1", &big, &flen) == SCAN_E_INVALID);
        CHECK(SCAN_LIT("\x92\x01\xc1", &big, &flen) == SCAN_E_INVALID);
        CHECK(SCAN_LIT("\x81\xc1\x01", &big, &flen) == SCAN_E_INVALID);
        CHECK(SCAN_LIT("", &big, &flen) == SCAN_E_PARTIAL);
        /* Every other byte starts some object. */
        for (unsigned b = 0; b < 256; b++) {
                uint8_t c = (uint8_t)b;
                int r = scan_once(&c, 1, &big, &flen);

                if (b == 0xc1)
                        continue;
                if (r != SCAN_OK && r != SCAN_E_PARTIAL)
                        CHECKF(false, "byte 0x%02x: r=%d", b, r);
        }
        CHECK(strcmp(scan_strerror(SCAN_E_TOO_LARGE), scan_strerror(SCAN_E_INVALID)) != 0);
        CHECK(scan_strerror(SCAN_OK) != NULL && scan_strerror(SCAN_E_PARTIAL) != NULL &&
              scan_strerror(SCAN_E_TOO_DEEP) != NULL && scan_strerror(-5) != NULL);
}

/* --- scan_peek_msgid ------------------------------------------------------- */

struct peek_case {
        const char *p;
        size_t len;
        int ret;
        uint32_t msgid;
};

#define PEEK(lit, ret, id)                                                                         \
        {                                                                                          \
                lit, sizeof(lit) - 1, ret, id                                                      \
        }

static const struct peek_case peek_cases[] = {
        PEEK("\x94\x00\x05", 0, 5),
        PEEK("\x94\x00\x05\xa3get\x90", 0, 5),
        PEEK("\x93\x00\x05", 0, 5), /* short requests still have a msgid to answer */
        PEEK("\x92\x00\x7f", 0, 127),
        PEEK("\x94\x00\xcc\xff", 0, 255),
        PEEK("\x94\x00\xcd\x01\x00", 0, 256),
        PEEK("\x94\x00\xce\xff\xff\xff\xff", 0, UINT32_MAX),
        PEEK("\x94\x00\xcf\x00\x00\x00\x00\xff\xff\xff\xff", 0, UINT32_MAX),
        PEEK("\x94\x00\xd0\x2a", 0, 42),
        PEEK("\x94\x00\xd2\x00\x00\x00\x10", 0, 16),
        PEEK("\x94\x00\xd3\x00\x00\x00\x00\x00\x00\x00\x00", 0, 0),
        PEEK("\x94\xcc\x00\x2a", 0, 42),
        PEEK("\x94\xd0\x00\x2a", 0, 42),
        PEEK("\x94\xcf\x00\x00\x00\x00\x00\x00\x00\x00\x2a", 0, 42),
        PEEK("\xdc\x00\x04\x00\x01", 0, 1),
        PEEK("\xdd\x00\x00\x00\x04\x00\x07", 0, 7),
        PEEK("\xdd\xff\xff\xff\xff\x00\x07", 0, 7), /* the TOO_LARGE frame we answer */
        PEEK("", -1, 0),
        PEEK("\x94", -1, 0),
        PEEK("\x94\x00", -1, 0),
        PEEK("\x94\x01\x05", -1, 0), /* a response */
        PEEK("\x94\x02\x05", -1, 0), /* a notification */
        PEEK("\x94\xff\x05", -1, 0),
        PEEK("\x94\x00\xff", -1, 0), /* msgid -1 */
        PEEK("\x94\x00\xd0\xff", -1, 0),
        PEEK("\x94\x00\xd3\xff\xff\xff\xff\xff\xff\xff\xff", -1, 0),
        PEEK("\x94\x00\xcf\x00\x00\x00\x01\x00\x00\x00\x00", -1, 0), /* 2^32 */
        PEEK("\x94\x00\xd3\x00\x00\x00\x01\x00\x00\x00\x00", -1, 0),
        PEEK("\x94\x00\xce\xff\xff", -1, 0), /* cut short */
        PEEK("\x94\x00\xcc", -1, 0),
        PEEK("\x94\x00\xa1x", -1, 0),
        PEEK("\x94\x00\xca\x00\x00\x00\x00", -1, 0),
        PEEK("\x94\x00\xc0", -1, 0),
        PEEK("\x94\xc0\x05", -1, 0),
        PEEK("\x91\x00\x05", -1, 0), /* [0] then another frame */
        PEEK("\x90", -1, 0),
        PEEK("\x84\x00\x05", -1, 0),
        PEEK("\xdc\x00", -1, 0),
        PEEK("\xdd\x00\x00\x00", -1, 0),
        PEEK("\xdc\x00\x01\x00\x05", -1, 0),
        PEEK("\xc0", -1, 0),
        PEEK("\x00\x00\x05", -1, 0),
};

static void
test_peek(void)
{
        for (size_t i = 0; i < sizeof(peek_cases) / sizeof(peek_cases[0]); i++) {
                const struct peek_case *c = &peek_cases[i];
                uint32_t id = 12345;
                int r = scan_peek_msgid((const uint8_t *)c->p, c->len, &id);

                if (c->ret == 0)
                        CHECKF(r == 0 && id == c->msgid, "case %zu: r=%d id=%u", i, r, id);
                else
                        CHECKF(r == -1 && id == 12345, "case %zu: r=%d id=%u", i, r, id);
        }
}

int
main(void)
{
        test_types();
        test_hand_encoded();
        test_back_to_back();
        test_limits_headers();
        test_limits_bytes();
        test_limits_elems();
        test_limits_nesting();
        test_invalid();
        test_peek();
        printf("%u passed, %u failed\n", n_passed, n_failed);
        return n_failed == 0 ? 0 : 1;
}
