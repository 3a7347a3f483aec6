/* SPDX-License-Identifier: MIT */
/*
 * test-rpc: unit tests for the rpc tables, rpc_parse(), the rpc_pack_*
 * helpers (decoded again with msgpack-c and checked element by element) and
 * the buf module they write into.
 * Prints one line per failed check and a summary; exits 0 only if all passed.
 */
#include <errno.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "rpc.h"
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

/* --- helpers: pack into a buffer, decode it back ----------------------------- */

struct msg {
        struct buf b;
        msgpack_packer pk;
        msgpack_zone zone;
        msgpack_object obj;
        bool is_decoded;
};

static void
msg_begin(struct msg *t)
{
        buf_init(&t->b);
        msgpack_packer_init(&t->pk, &t->b, buf_msgpack_write);
        msgpack_zone_init(&t->zone, 4096);
        t->is_decoded = false;
}

static void
msg_end(struct msg *t)
{
        msgpack_zone_destroy(&t->zone);
        buf_deinit(&t->b);
}

/*
 * Decodes what was packed: it must be exactly one object, which scan_feed()
 * must frame to the same length.
 */
static const msgpack_object *
msg_decode(struct msg *t)
{
        struct scan_limits lim = {SIZE_MAX, SIZE_MAX, 32};
        struct scan s;
        size_t off = 0, flen = 0;
        msgpack_unpack_return r;

        r = msgpack_unpack((const char *)buf_head(&t->b), buf_size(&t->b), &off, &t->zone, &t->obj);
        t->is_decoded = r == MSGPACK_UNPACK_SUCCESS && off == buf_size(&t->b);
        CHECKF(t->is_decoded, "msgpack_unpack: r=%d off=%zu size=%zu", (int)r, off,
               buf_size(&t->b));
        scan_reset(&s);
        CHECK(scan_feed(&s, buf_head(&t->b), buf_size(&t->b), &lim, &flen) == SCAN_OK &&
              flen == buf_size(&t->b));
        if (!t->is_decoded)
                t->obj.type = MSGPACK_OBJECT_NIL;
        return &t->obj;
}

static int
msg_parse(struct msg *t, struct rpc_msg *m, const char **why)
{
        *why = NULL;
        return rpc_parse(msg_decode(t), m, why);
}

static bool
obj_is_str(const msgpack_object *o, const char *s)
{
        return o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
               (o->via.str.size == 0 || memcmp(o->via.str.ptr, s, o->via.str.size) == 0);
}

static bool
obj_is_uint(const msgpack_object *o, uint64_t v)
{
        return o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 == v;
}

static bool
method_is(const struct rpc_msg *m, const char *s)
{
        return m->method != NULL && m->method_len == strlen(s) &&
               memcmp(m->method, s, m->method_len) == 0;
}

/* --- tables ------------------------------------------------------------------ */

static void
test_tables(void)
{
        for (int i = 0; i < RPC_M_COUNT; i++) {
                const char *n = rpc_methods[i].name;

                CHECKF(n != NULL && rpc_method_find(n, strlen(n)) == i, "method %d", i);
                CHECKF(rpc_methods[i].params != NULL && rpc_methods[i].result != NULL, "method %s",
                       n);
                CHECKF((rpc_methods[i].opts & ~((1u << RPC_OPT_COUNT) - 1)) == 0,
                       "method %s: unknown option bits", n);
        }
        for (int i = 0; i < RPC_OPT_COUNT; i++) {
                const char *n = rpc_options[i].name;

                CHECKF(n != NULL && rpc_option_find(n, strlen(n)) == i, "option %d", i);
        }
        for (int i = 0; i < RPC_ERR_COUNT; i++) {
                const char *n = rpc_errors[i].name;

                CHECKF(n != NULL && rpc_error_find(n, strlen(n)) == i, "error %d", i);
                CHECKF(rpc_errors[i].http_status >= 400 && rpc_errors[i].desc != NULL, "error %s",
                       n);
        }

        /* Rows land in their enum slots, columns in their fields. */
        CHECK(strcmp(rpc_methods[RPC_M_get].name, "get") == 0);
        CHECK(rpc_methods[RPC_M_get].n_args == 1 && rpc_methods[RPC_M_get].flags == KC_M_READ);
        CHECK((rpc_methods[RPC_M_set].opts & KC_OPT_ttl) && !(rpc_methods[RPC_M_set].opts & KC_OPT_field) &&
              rpc_methods[RPC_M_set].n_args == 2);
        CHECK(rpc_methods[RPC_M_hello].flags == KC_M_LOCAL);
        CHECK(strcmp(rpc_options[RPC_OPT_ttl].name, "ttl") == 0);
        CHECK(rpc_options[RPC_OPT_ttl].type == OPT_INT);
        CHECK(strcmp(rpc_errors[RPC_ERR_NO_METHOD].name, "NO_METHOD") == 0);
        CHECK(rpc_errors[RPC_ERR_NO_METHOD].http_status == 501);
        CHECK(rpc_errors[RPC_ERR_TOO_LARGE].http_status == 413);

        /* Binary-safe lookups: length counts, NUL bytes count. */
        CHECK(rpc_method_find("nope", 4) == -1);
        CHECK(rpc_method_find("ge", 2) == -1);
        CHECK(rpc_method_find("gett", 4) == -1);
        CHECK(rpc_method_find("get", 2) == -1);
        CHECK(rpc_method_find("get\0", 4) == -1);
        CHECK(rpc_method_find("GET", 3) == -1);
        CHECK(rpc_method_find("getx", 3) == RPC_M_get);
        CHECK(rpc_method_find("", 0) == -1);
        CHECK(rpc_method_find(NULL, 0) == -1);
        CHECK(rpc_option_find("ttl\0", 4) == -1);
        CHECK(rpc_option_find("tt", 2) == -1);
        CHECK(rpc_option_find("nx", 2) == -1);
        CHECK(rpc_error_find("BAD_REQUES", 10) == -1);
        CHECK(rpc_error_find("bad_request", 11) == -1);
        CHECK(rpc_error_find("TIMEOUT", 7) == RPC_ERR_TIMEOUT);
}

/* --- rpc_parse: valid messages -------------------------------------------------- */

static void
test_parse_valid(void)
{
        struct rpc_msg m;
        const char *why;
        struct msg t;
        int r;

        /* [0, 7, "get", ["k"]] */
        msg_begin(&t);
        msgpack_pack_array(&t.pk, 4);
        msgpack_pack_int(&t.pk, 0);
        msgpack_pack_int(&t.pk, 7);
        msgpack_pack_str_with_body(&t.pk, "get", 3);
        msgpack_pack_array(&t.pk, 1);
        msgpack_pack_str_with_body(&t.pk, "k", 1);
        r = msg_parse(&t, &m, &why);
        CHECKF(r == RPC_OK, "r=%d why=%s", r, why ? why : "");
        CHECK(m.type == RPC_REQUEST && m.msgid == 7 && method_is(&m, "get"));
        CHECK(m.params != NULL && m.params->type == MSGPACK_OBJECT_ARRAY &&
              m.params->via.array.size == 1);
        CHECK(m.error == NULL && m.result == NULL);
        CHECK(rpc_method_find(m.method, m.method_len) == RPC_M_get);
        msg_end(&t);

        /* [0, 0xffffffff, bin "g\0t", []]: method as bin, with a NUL inside */
        msg_begin(&t);
        msgpack_pack_array(&t.pk, 4);
        msgpack_pack_int(&t.pk, 0);
        msgpack_pack_uint32(&t.pk, UINT32_MAX);
        msgpack_pack_bin_with_body(&t.pk, "g\0t", 3);
        msgpack_pack_array(&t.pk, 0);
        r = msg_parse(&t, &m, &why);
        CHECKF(r == RPC_OK, "r=%d why=%s", r, why ? why : "");
        CHECK(m.type == RPC_REQUEST && m.msgid == UINT32_MAX);
        CHECK(m.method_len == 3 && memcmp(m.method, "g\0t", 3) == 0);
        CHECK(rpc_method_find(m.method, m.method_len) == -1);
        CHECK(m.params != NULL && m.params->via.array.size == 0);
        msg_end(&t);

        /* [0, 1, bin "ping", []] and msgid 0 is valid too */
        msg_begin(&t);
        msgpack_pack_array(&t.pk, 4);
        msgpack_pack_int(&t.pk, 0);
        msgpack_pack_int(&t.pk, 0);
        msgpack_pack_bin_with_body(&t.pk, "ping", 4);
        msgpack_pack_array(&t.pk, 0);
        r = msg_parse(&t, &m, &why);
        CHECK(r == RPC_OK && m.msgid == 0 && rpc_method_find(m.method, m.method_len) == RPC_M_ping);
        msg_end(&t);

        /* [0, 3, "", []]: an empty name still points somewhere */
        msg_begin(&t);
        msgpack_pack_array(&t.pk, 4);
        msgpack_pack_int(&t.pk, 0);
        msgpack_pack_int(&t.pk, 3);
        msgpack_pack_str(&t.pk, 0);
        msgpack_pack_array(&t.pk, 0);
        r = msg_parse(&t, &m, &why);
        CHECK(r == RPC_OK && m.method != NULL && m.method_len == 0);
        CHECK(rpc_method_find(m.method, m.method_len) == -1);
        msg_end(&t);

        /* [2, "kcache.error", [{}]] */
        msg_begin(&t);
        msgpack_pack_array(&t.pk, 3);
        msgpack_pack_int(&t.pk, 2);
        msgpack_pack_str_with_body(&t.pk, "kcache.error", 12);
        msgpack_pack_array(&t.pk, 1);
        msgpack_pack_map(&t.pk, 0);
        r = msg_parse(&t, &m, &why);
        CHECKF(r == RPC_OK, "r=%d why=%s", r, why ? why : "");
        CHECK(m.type == RPC_NOTIFY && m.msgid == 0 && method_is(&m, "kcache.error"));
        CHECK(m.params != NULL && m.params->via.array.size == 1);
        msg_end(&t);

        /* [2, bin "x", []] */
        msg_begin(&t);
        msgpack_pack_array(&t.pk, 3);
        msgpack_pack_int(&t.pk, 2);
        msgpack_pack_bin_with_body(&t.pk, "x", 1);
        msgpack_pack_array(&t.pk, 0);
        r = msg_parse(&t, &m, &why);
        CHECK(r == RPC_OK && m.type == RPC_NOTIFY && method_is(&m, "x"));
        msg_end(&t);

        /* [1, 9, nil, "pong"] */
        msg_begin(&t);
        msgpack_pack_array(&t.pk, 4);
        msgpack_pack_int(&t.pk, 1);
        msgpack_pack_int(&t.pk, 9);
        msgpack_pack_nil(&t.pk);
        msgpack_pack_str_with_body(&t.pk, "pong", 4);
        r = msg_parse(&t, &m, &why);
        CHECKF(r == RPC_OK, "r=%d why=%s", r, why ? why : "");
        CHECK(m.type == RPC_RESPONSE && m.msgid == 9 && m.method == NULL && m.params == NULL);
        CHECK(m.error != NULL && m.error->type == MSGPACK_OBJECT_NIL);
        CHECK(m.result != NULL && obj_is_str(m.result, "pong"));
        msg_end(&t);

        /* [1, 10, {"code": "TIMEOUT", "message": "late"}, nil] */
        msg_begin(&t);
        msgpack_pack_array(&t.pk, 4);
        msgpack_pack_int(&t.pk, 1);
        msgpack_pack_int(&t.pk, 10);
        msgpack_pack_map(&t.pk, 2);
        msgpack_pack_str_with_body(&t.pk, "code", 4);
        msgpack_pack_str_with_body(&t.pk, "TIMEOUT", 7);
        msgpack_pack_str_with_body(&t.pk, "message", 7);
        msgpack_pack_str_with_body(&t.pk, "late", 4);
        msgpack_pack_nil(&t.pk);
        r = msg_parse(&t, &m, &why);
        CHECK(r == RPC_OK && m.type == RPC_RESPONSE && m.msgid == 10);
        CHECK(m.error != NULL && m.error->type == MSGPACK_OBJECT_MAP);
        CHECK(m.result != NULL && m.result->type == MSGPACK_OBJECT_NIL);
        msg_end(&t);
}

/* --- rpc_parse: every malformed class ------------------------------------------------ */

/* Raw bytes, so odd encodings (non-minimal ints, 2^32) are exactly what we mean. */
struct bad_case {
        const char *name;
        const char *p;
        size_t len;
        int ret;
        enum rpc_type type; /* for RPC_E_BAD */
        uint32_t msgid;     /* for RPC_E_BAD requests/responses */
};

#define BAD(name, lit, ret, type, id)                                                              \
        {                                                                                          \
                name, lit, sizeof(lit) - 1, ret, type, id                                          \
        }

static const struct bad_case bad_cases[] = {
        BAD("not an array: int", "\x05", RPC_E_NO_MSGID, 0, 0),
        BAD("not an array: nil", "\xc0", RPC_E_NO_MSGID, 0, 0),
        BAD("not an array: map", "\x81\x00\x01", RPC_E_NO_MSGID, 0, 0),
        BAD("not an array: str",
            "\xa3"
            "abc",
            RPC_E_NO_MSGID, 0, 0),
        BAD("empty array", "\x90", RPC_E_NO_MSGID, 0, 0),
        BAD("type 3", "\x94\x03\x01\xa1x\x90", RPC_E_NO_MSGID, 0, 0),
        BAD("type 127", "\x93\x7f\xa1x\x90", RPC_E_NO_MSGID, 0, 0),
        BAD("type 2^32", "\x94\xcf\x00\x00\x00\x01\x00\x00\x00\x00\x01\xa1x\x90", RPC_E_NO_MSGID, 0,
            0),
        BAD("type -1", "\x94\xff\x01\xa1x\x90", RPC_E_NO_MSGID, 0, 0),
        BAD("type str",
            "\x94\xa1"
            "0"
            "\x01\xa1x\x90",
            RPC_E_NO_MSGID, 0, 0),
        BAD("type float", "\x94\xca\x00\x00\x00\x00\x01\xa1x\x90", RPC_E_NO_MSGID, 0, 0),
        BAD("type nil", "\x94\xc0\x01\xa1x\x90", RPC_E_NO_MSGID, 0, 0),
        BAD("type true", "\x94\xc3\x01\xa1x\x90", RPC_E_NO_MSGID, 0, 0),
        BAD("request [0]", "\x91\x00", RPC_E_NO_MSGID, 0, 0),
        BAD("request msgid -1", "\x94\x00\xff\xa1x\x90", RPC_E_NO_MSGID, 0, 0),
        BAD("request msgid int8 -100", "\x94\x00\xd0\x9c\xa1x\x90", RPC_E_NO_MSGID, 0, 0),
        BAD("request msgid 2^32", "\x94\x00\xcf\x00\x00\x00\x01\x00\x00\x00\x00\xa1x\x90",
            RPC_E_NO_MSGID, 0, 0),
        BAD("request msgid 2^64-1", "\x94\x00\xcf\xff\xff\xff\xff\xff\xff\xff\xff\xa1x\x90",
            RPC_E_NO_MSGID, 0, 0),
        BAD("request msgid str",
            "\x94\x00\xa1"
            "7"
            "\xa1x\x90",
            RPC_E_NO_MSGID, 0, 0),
        BAD("request msgid bin", "\x94\x00\xc4\x01\x07\xa1x\x90", RPC_E_NO_MSGID, 0, 0),
        BAD("request msgid float", "\x94\x00\xcb\x40\x1c\x00\x00\x00\x00\x00\x00\xa1x\x90",
            RPC_E_NO_MSGID, 0, 0),
        BAD("request msgid nil", "\x94\x00\xc0\xa1x\x90", RPC_E_NO_MSGID, 0, 0),
        BAD("request msgid array", "\x94\x00\x91\x07\xa1x\x90", RPC_E_NO_MSGID, 0, 0),
        BAD("request size 2", "\x92\x00\x07", RPC_E_BAD, RPC_REQUEST, 7),
        BAD("request size 3", "\x93\x00\x07\xa3get", RPC_E_BAD, RPC_REQUEST, 7),
        BAD("request size 5", "\x95\x00\x07\xa3get\x90\xc0", RPC_E_BAD, RPC_REQUEST, 7),
        BAD("request size 3, int8 msgid", "\x93\x00\xd0\x07\xa3get", RPC_E_BAD, RPC_REQUEST, 7),
        BAD("request method int", "\x94\x00\x07\x05\x90", RPC_E_BAD, RPC_REQUEST, 7),
        BAD("request method nil", "\x94\x00\x07\xc0\x90", RPC_E_BAD, RPC_REQUEST, 7),
        BAD("request method array", "\x94\x00\x07\x91\xa1x\x90", RPC_E_BAD, RPC_REQUEST, 7),
        BAD("request method ext", "\x94\x00\x07\xd4\x01\x78\x90", RPC_E_BAD, RPC_REQUEST, 7),
        BAD("request params map", "\x94\x00\x07\xa3get\x80", RPC_E_BAD, RPC_REQUEST, 7),
        BAD("request params str", "\x94\x00\x07\xa3get\xa1k", RPC_E_BAD, RPC_REQUEST, 7),
        BAD("request params nil", "\x94\x00\x07\xa3get\xc0", RPC_E_BAD, RPC_REQUEST, 7),
        BAD("request msgid max, params int", "\x94\x00\xce\xff\xff\xff\xff\xa3get\x01", RPC_E_BAD,
            RPC_REQUEST, UINT32_MAX),
        BAD("notification size 4", "\x94\x02\xa1x\x90\x01", RPC_E_BAD, RPC_NOTIFY, 0),
        BAD("notification size 2", "\x92\x02\xa1x", RPC_E_BAD, RPC_NOTIFY, 0),
        BAD("notification size 1", "\x91\x02", RPC_E_BAD, RPC_NOTIFY, 0),
        BAD("notification method int", "\x93\x02\x05\x90", RPC_E_BAD, RPC_NOTIFY, 0),
        BAD("notification params nil", "\x93\x02\xa1x\xc0", RPC_E_BAD, RPC_NOTIFY, 0),
        BAD("notification params map", "\x93\x02\xa1x\x80", RPC_E_BAD, RPC_NOTIFY, 0),
        BAD("response [1]", "\x91\x01", RPC_E_NO_MSGID, 0, 0),
        BAD("response msgid -1", "\x94\x01\xff\xc0\xc0", RPC_E_NO_MSGID, 0, 0),
        BAD("response msgid 2^32", "\x94\x01\xcf\x00\x00\x00\x01\x00\x00\x00\x00\xc0\xc0",
            RPC_E_NO_MSGID, 0, 0),
        BAD("response msgid str",
            "\x94\x01\xa1"
            "1"
            "\xc0\xc0",
            RPC_E_NO_MSGID, 0, 0),
        BAD("response size 3", "\x93\x01\x09\xc0", RPC_E_BAD, RPC_RESPONSE, 9),
        BAD("response size 5", "\x95\x01\x09\xc0\xc0\xc0", RPC_E_BAD, RPC_RESPONSE, 9),
        BAD("response error str", "\x94\x01\x09\xa1x\xc0", RPC_E_BAD, RPC_RESPONSE, 9),
        BAD("response error array", "\x94\x01\x09\x90\xc0", RPC_E_BAD, RPC_RESPONSE, 9),
        BAD("response error false", "\x94\x01\x09\xc2\xc0", RPC_E_BAD, RPC_RESPONSE, 9),
};

static void
test_parse_bad(void)
{
        for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
                const struct bad_case *c = &bad_cases[i];
                msgpack_zone zone;
                msgpack_object obj;
                struct rpc_msg m;
                const char *why = NULL;
                size_t off = 0;
                msgpack_unpack_return ur;
                int r;

                msgpack_zone_init(&zone, 1024);
                ur = msgpack_unpack(c->p, c->len, &off, &zone, &obj);
                if (!CHECK(ur == MSGPACK_UNPACK_SUCCESS && off == c->len)) {
                        printf("    %s: test input does not decode\n", c->name);
                        msgpack_zone_destroy(&zone);
                        continue;
                }
                memset(&m, 0xa5, sizeof(m));
                r = rpc_parse(&obj, &m, &why);
                CHECKF(r == c->ret && why != NULL && *why != '\0', "%s: r=%d", c->name, r);
                if (c->ret == RPC_E_BAD) {
                        CHECKF(m.type == c->type && m.msgid == c->msgid, "%s: type=%d msgid=%u",
                               c->name, (int)m.type, m.msgid);
                }
                /* why is optional. */
                CHECKF(rpc_parse(&obj, &m, NULL) == c->ret, "%s: why=NULL", c->name);
                msgpack_zone_destroy(&zone);
        }
}

/* --- packing ---------------------------------------------------------------------- */

/* {"code": code, "message": message} exactly, keys as str. */
static bool
is_error_map(const msgpack_object *o, enum rpc_error code, const char *message)
{
        const msgpack_object_kv *kv;

        if (o->type != MSGPACK_OBJECT_MAP || o->via.map.size != 2)
                return false;
        kv = o->via.map.ptr;
        return obj_is_str(&kv[0].key, "code") && obj_is_str(&kv[0].val, rpc_errors[code].name) &&
               obj_is_str(&kv[1].key, "message") && obj_is_str(&kv[1].val, message);
}

static void
test_pack_heads(void)
{
        const msgpack_object *o, *e;
        struct rpc_msg m;
        const char *why;
        struct msg t;

        msg_begin(&t);
        CHECK(rpc_pack_request_head(&t.pk, 42, "get") == 0);
        msgpack_pack_array(&t.pk, 1);
        CHECK(rpc_pack_bin(&t.pk, "k", 1) == 0);
        o = msg_decode(&t);
        CHECK(o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 4);
        if (t.is_decoded && o->via.array.size == 4) {
                e = o->via.array.ptr;
                CHECK(obj_is_uint(&e[0], 0) && obj_is_uint(&e[1], 42) && obj_is_str(&e[2], "get"));
                CHECK(e[3].type == MSGPACK_OBJECT_ARRAY && e[3].via.array.size == 1 &&
                      e[3].via.array.ptr[0].type == MSGPACK_OBJECT_BIN);
        }
        CHECK(rpc_parse(o, &m, &why) == RPC_OK && m.type == RPC_REQUEST && m.msgid == 42 &&
              method_is(&m, "get"));
        msg_end(&t);

        msg_begin(&t);
        CHECK(rpc_pack_request_head(&t.pk, UINT32_MAX, "ping") == 0);
        msgpack_pack_array(&t.pk, 0);
        o = msg_decode(&t);
        CHECK(rpc_parse(o, &m, &why) == RPC_OK && m.msgid == UINT32_MAX);
        msg_end(&t);

        msg_begin(&t);
        CHECK(rpc_pack_result_head(&t.pk, 43) == 0);
        CHECK(rpc_pack_str(&t.pk, "pong") == 0);
        o = msg_decode(&t);
        CHECK(o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 4);
        if (t.is_decoded && o->via.array.size == 4) {
                e = o->via.array.ptr;
                CHECK(obj_is_uint(&e[0], 1) && obj_is_uint(&e[1], 43));
                CHECK(e[2].type == MSGPACK_OBJECT_NIL && obj_is_str(&e[3], "pong"));
        }
        CHECK(rpc_parse(o, &m, &why) == RPC_OK && m.type == RPC_RESPONSE && m.msgid == 43);
        msg_end(&t);

        msg_begin(&t);
        CHECK(rpc_pack_notify_head(&t.pk, "kcache.invalidate") == 0);
        msgpack_pack_array(&t.pk, 0);
        o = msg_decode(&t);
        CHECK(o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 3);
        if (t.is_decoded && o->via.array.size == 3) {
                e = o->via.array.ptr;
                CHECK(obj_is_uint(&e[0], 2) && obj_is_str(&e[1], "kcache.invalidate"));
        }
        CHECK(rpc_parse(o, &m, &why) == RPC_OK && m.type == RPC_NOTIFY &&
              method_is(&m, "kcache.invalidate"));
        msg_end(&t);
}

static void
test_pack_errors(void)
{
        const msgpack_object *o, *e;
        struct rpc_msg m;
        const char *why;
        struct msg t;

        msg_begin(&t);
        CHECK(rpc_pack_error(&t.pk, 44, RPC_ERR_NO_METHOD, "no such method: foo") == 0);
        o = msg_decode(&t);
        CHECK(o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 4);
        if (t.is_decoded && o->via.array.size == 4) {
                e = o->via.array.ptr;
                CHECK(obj_is_uint(&e[0], 1) && obj_is_uint(&e[1], 44));
                CHECK(is_error_map(&e[2], RPC_ERR_NO_METHOD, "no such method: foo"));
                CHECK(e[3].type == MSGPACK_OBJECT_NIL);
        }
        CHECK(rpc_parse(o, &m, &why) == RPC_OK && m.type == RPC_RESPONSE && m.msgid == 44 &&
              m.error->type == MSGPACK_OBJECT_MAP);
        msg_end(&t);

        /* Every code, with the table description as the default message. */
        for (int c = 0; c < RPC_ERR_COUNT; c++) {
                msg_begin(&t);
                CHECK(rpc_pack_error(&t.pk, (uint32_t)c, (enum rpc_error)c, NULL) == 0);
                o = msg_decode(&t);
                CHECKF(t.is_decoded && o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 4 &&
                               is_error_map(&o->via.array.ptr[2], (enum rpc_error)c,
                                            rpc_errors[c].desc),
                       "code %s", rpc_errors[c].name);
                if (t.is_decoded && o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 4) {
                        const msgpack_object *code = &o->via.array.ptr[2].via.map.ptr[0].val;

                        CHECK(rpc_error_find(code->via.str.ptr, code->via.str.size) == c);
                }
                msg_end(&t);
        }

        /* [2, "kcache.error", [{"code": "TOO_LARGE", "message": desc}]] */
        msg_begin(&t);
        CHECK(rpc_pack_error_notify(&t.pk, RPC_ERR_TOO_LARGE, NULL) == 0);
        o = msg_decode(&t);
        CHECK(o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 3);
        if (t.is_decoded && o->via.array.size == 3) {
                e = o->via.array.ptr;
                CHECK(obj_is_uint(&e[0], 2) && obj_is_str(&e[1], "kcache.error"));
                CHECK(e[2].type == MSGPACK_OBJECT_ARRAY && e[2].via.array.size == 1 &&
                      is_error_map(&e[2].via.array.ptr[0], RPC_ERR_TOO_LARGE,
                                   rpc_errors[RPC_ERR_TOO_LARGE].desc));
        }
        CHECK(rpc_parse(o, &m, &why) == RPC_OK && m.type == RPC_NOTIFY &&
              method_is(&m, "kcache.error") && m.params->via.array.size == 1);
        msg_end(&t);

        msg_begin(&t);
        CHECK(rpc_pack_error_notify(&t.pk, RPC_ERR_BAD_REQUEST, "frame: not msgpack") == 0);
        o = msg_decode(&t);
        CHECK(t.is_decoded && o->via.array.size == 3 &&
              is_error_map(&o->via.array.ptr[2].via.array.ptr[0], RPC_ERR_BAD_REQUEST,
                           "frame: not msgpack"));
        msg_end(&t);

        /* An out-of-range code must not index past the table. */
        msg_begin(&t);
        CHECK(rpc_pack_error(&t.pk, 1, RPC_ERR_COUNT, NULL) == 0);
        o = msg_decode(&t);
        CHECK(t.is_decoded && o->via.array.size == 4 &&
              is_error_map(&o->via.array.ptr[2], RPC_ERR_INTERNAL,
                           rpc_errors[RPC_ERR_INTERNAL].desc));
        msg_end(&t);
}

static void
test_pack_values(void)
{
        static const char nul3[] = {'a', '\0', 'b'};
        const msgpack_object *o;
        const char *p;
        size_t n;
        struct msg t;

        msg_begin(&t);
        CHECK(rpc_pack_str(&t.pk, "h\xc3\xa9llo") == 0);
        o = msg_decode(&t);
        CHECK(obj_is_str(o, "h\xc3\xa9llo"));
        CHECK(rpc_obj_bytes(o, &p, &n) && n == 6 && memcmp(p, "h\xc3\xa9llo", 6) == 0);
        msg_end(&t);

        msg_begin(&t);
        CHECK(rpc_pack_str(&t.pk, NULL) == 0);
        o = msg_decode(&t);
        CHECK(obj_is_str(o, ""));
        msg_end(&t);

        msg_begin(&t);
        CHECK(rpc_pack_bin(&t.pk, nul3, sizeof(nul3)) == 0);
        o = msg_decode(&t);
        CHECK(o->type == MSGPACK_OBJECT_BIN && o->via.bin.size == 3 &&
              memcmp(o->via.bin.ptr, nul3, 3) == 0);
        CHECK(rpc_obj_bytes(o, &p, &n) && n == 3 && memcmp(p, nul3, 3) == 0);
        msg_end(&t);

        msg_begin(&t);
        CHECK(rpc_pack_bin(&t.pk, NULL, 0) == 0);
        o = msg_decode(&t);
        CHECK(o->type == MSGPACK_OBJECT_BIN && o->via.bin.size == 0);
        CHECK(rpc_obj_bytes(o, &p, &n) && n == 0 && p != NULL);
        msg_end(&t);

        msg_begin(&t);
        msgpack_pack_int(&t.pk, 5);
        o = msg_decode(&t);
        p = NULL;
        CHECK(!rpc_obj_bytes(o, &p, &n) && p == NULL);
        msg_end(&t);
}

/* A value of 1 MiB, NUL bytes included, survives pack -> frame -> unpack. */
static void
test_pack_big_bin(void)
{
        const size_t n = 1u << 20;
        uint8_t *v = malloc(n);
        const msgpack_object *o;
        struct rpc_msg m;
        const char *why;
        struct msg t;

        for (size_t i = 0; i < n; i++)
                v[i] = (uint8_t)(i % 251 == 0 ? 0 : i * 13);
        msg_begin(&t);
        CHECK(rpc_pack_result_head(&t.pk, 5) == 0);
        CHECK(rpc_pack_bin(&t.pk, v, n) == 0);
        CHECK(buf_size(&t.b) == n + 5 + 4);
        o = msg_decode(&t);
        CHECK(rpc_parse(o, &m, &why) == RPC_OK && m.msgid == 5);
        CHECK(m.result != NULL && m.result->type == MSGPACK_OBJECT_BIN &&
              m.result->via.bin.size == n && memcmp(m.result->via.bin.ptr, v, n) == 0);
        msg_end(&t);
        free(v);
}

/* A writer that accepts `left` bytes, then fails: every helper must report it. */
struct short_writer {
        size_t left;
};

static int
short_write(void *data, const char *p, size_t n)
{
        struct short_writer *w = data;

        if (n > w->left)
                return -1;
        w->left -= n;
        return 0;
}

static int
pack_one(msgpack_packer *pk, int which)
{
        switch (which) {
        case 0:
                return rpc_pack_request_head(pk, 70000, "mget");
        case 1:
                return rpc_pack_result_head(pk, 70000);
        case 2:
                return rpc_pack_error(pk, 70000, RPC_ERR_BACKEND, "ERR wrong type");
        case 3:
                return rpc_pack_error_notify(pk, RPC_ERR_UNAVAILABLE, NULL);
        case 4:
                return rpc_pack_notify_head(pk, "kcache.x");
        case 5:
                return rpc_pack_str(pk, "a string");
        default:
                return rpc_pack_bin(pk, "bin\0ary", 7);
        }
}

static void
test_pack_failures(void)
{
        for (int which = 0; which < 7; which++) {
                struct short_writer w = {SIZE_MAX};
                msgpack_packer pk;
                size_t full;
                bool ok = true;

                msgpack_packer_init(&pk, &w, short_write);
                CHECKF(pack_one(&pk, which) == 0, "helper %d", which);
                full = SIZE_MAX - w.left;
                for (size_t k = 0; k < full; k++) {
                        w.left = k;
                        if (pack_one(&pk, which) != -1)
                                ok = false;
                }
                CHECKF(ok, "helper %d: a failed write was not reported", which);
        }
}

/* --- buf ---------------------------------------------------------------------------- */

static void
test_buf(void)
{
        struct buf b = BUF_INIT;
        uint8_t *data;
        size_t cap, changes = 0;
        bool ok = true;

        CHECK(b.data == NULL && b.off == 0 && b.len == 0 && b.cap == 0 && buf_size(&b) == 0);
        buf_init(&b);
        CHECK(b.data == NULL && buf_size(&b) == 0);

        CHECK(buf_append(&b, "hello", 5) == 0);
        CHECK(buf_size(&b) == 5 && memcmp(buf_head(&b), "hello", 5) == 0 && b.cap >= 5);
        CHECK(buf_append(&b, NULL, 0) == 0 && buf_size(&b) == 5);
        buf_consume(&b, 2);
        CHECK(buf_size(&b) == 3 && b.off == 2 && memcmp(buf_head(&b), "llo", 3) == 0);
        CHECK(buf_append(&b, "!", 1) == 0 && memcmp(buf_head(&b), "llo!", 4) == 0);
        /* Draining resets both ends: no memmove ever needed. */
        buf_consume(&b, 4);
        CHECK(buf_size(&b) == 0 && b.off == 0 && b.len == 0 && b.data != NULL);

        CHECK(buf_append(&b, "abcdef", 6) == 0);
        buf_consume(&b, 2);
        buf_compact(&b);
        CHECK(b.off == 0 && b.len == 4 && memcmp(b.data, "cdef", 4) == 0);
        buf_compact(&b);
        CHECK(b.off == 0 && b.len == 4 && memcmp(b.data, "cdef", 4) == 0);
        /* Consuming more than there is is a caller bug, treated as "all". */
        buf_consume(&b, 100);
        CHECK(b.off == 0 && b.len == 0);

        buf_clear(&b);
        CHECK(buf_size(&b) == 0 && b.data != NULL && b.cap > 0);

        /* Geometric growth: 1 MiB one byte at a time, few reallocations. */
        cap = b.cap;
        for (size_t i = 0; i < (1u << 20); i++) {
                uint8_t c = (uint8_t)i;

                if (buf_append(&b, &c, 1) != 0) {
                        ok = false;
                        break;
                }
                if (b.cap != cap) {
                        changes++;
                        cap = b.cap;
                }
        }
        CHECK(ok && buf_size(&b) == (1u << 20) && b.cap >= buf_size(&b));
        CHECKF(changes <= 20, "%zu reallocations", changes);
        ok = true;
        for (size_t i = 0; i < buf_size(&b); i++)
                if (buf_head(&b)[i] != (uint8_t)i)
                        ok = false;
        CHECK(ok);

        /* reserve: room after len, and overflow is -ENOMEM with nothing changed. */
        buf_consume(&b, 10);
        CHECK(buf_reserve(&b, 5000000) == 0 && b.cap - b.len >= 5000000);
        CHECK(b.off == 10);
        data = b.data;
        cap = b.cap;
        CHECK(buf_reserve(&b, 0) == 0 && b.data == data && b.cap == cap);
        CHECK(buf_reserve(&b, SIZE_MAX) == -ENOMEM);
        CHECK(buf_reserve(&b, SIZE_MAX - b.len) == -ENOMEM);
        CHECK(buf_reserve(&b, SIZE_MAX - b.len + 1) == -ENOMEM);
        CHECK(buf_reserve(&b, (size_t)PTRDIFF_MAX) == -ENOMEM);
        CHECK(buf_append(&b, "x", SIZE_MAX) == -ENOMEM);
        CHECK(b.data == data && b.cap == cap && b.off == 10 && b.len == (1u << 20));
        CHECK(buf_head(&b)[0] == 10);

        /* shrink only acts on an empty buffer. */
        buf_shrink(&b, 4096);
        CHECK(b.cap == cap && buf_size(&b) == (1u << 20) - 10);
        buf_consume(&b, buf_size(&b));
        buf_shrink(&b, 4096);
        CHECK(b.cap == 4096 && b.data != NULL && buf_size(&b) == 0);
        CHECK(buf_append(&b, "again", 5) == 0 && memcmp(buf_head(&b), "again", 5) == 0);
        buf_clear(&b);
        buf_shrink(&b, 0);
        CHECK(b.cap == 0 && b.data == NULL);
        CHECK(buf_append(&b, "x", 1) == 0 && buf_size(&b) == 1);

        /* The msgpack write callback. */
        buf_clear(&b);
        CHECK(buf_msgpack_write(&b, "ab", 2) == 0 && buf_size(&b) == 2);
        CHECK(buf_msgpack_write(&b, "ab", SIZE_MAX) == -1 && buf_size(&b) == 2);

        buf_deinit(&b);
        CHECK(b.data == NULL && b.cap == 0 && b.len == 0 && b.off == 0);
        buf_deinit(&b);
}

int
main(void)
{
        test_tables();
        test_parse_valid();
        test_parse_bad();
        test_pack_heads();
        test_pack_errors();
        test_pack_values();
        test_pack_big_bin();
        test_pack_failures();
        test_buf();
        printf("%u passed, %u failed\n", n_passed, n_failed);
        return n_failed == 0 ? 0 : 1;
}
