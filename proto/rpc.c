/* SPDX-License-Identifier: MIT */
/*
 * rpc: the method/option/error tables and the msgpack-RPC codec (see rpc.h).
 *
 * The tables are expanded from methods.def, options.def and errors.def, so the
 * daemon, the client and the docs cannot disagree about a name.
 *
 * rpc_parse() rules, in the order they are checked. Whatever can be answered
 * is RPC_E_BAD (with the msgid of a request, so the daemon replies
 * BAD_REQUEST to it); whatever cannot is RPC_E_NO_MSGID (the daemon can only
 * send a kcache.error notification and close).
 *   1. obj is not an array, or is empty, or its first element is not a
 *      positive integer 0, 1 or 2                        -> RPC_E_NO_MSGID
 *   2. request [0, msgid, method, params]:
 *      no element [1], or it is not a POSITIVE_INTEGER < 2^32 (a negative
 *      integer, float, string, >= 2^32 ...)               -> RPC_E_NO_MSGID
 *      size != 4                                          -> RPC_E_BAD, msgid set
 *      method not str/bin, params not an array            -> RPC_E_BAD, msgid set
 *   3. response [1, msgid, error, result]: the msgid as for requests, then
 *      size != 4 or error neither nil nor a map           -> RPC_E_BAD, msgid set
 *   4. notification [2, method, params]:
 *      size != 3, method not str/bin, params not an array -> RPC_E_BAD
 *      (notifications carry no msgid; m->msgid stays 0)
 * Only msgpack-c's POSITIVE_INTEGER counts as unsigned: msgpack-c decodes
 * every non-negative integer, whatever its wire encoding, as that type.
 * A method name may be str or bin and may contain any bytes; it is not
 * NUL-terminated, so consumers use method_len (rpc_method_find does).
 */
#include "rpc.h"

#include <string.h>

const struct rpc_method_info rpc_methods[RPC_M_COUNT] = {
#define KC_METHOD(name, n_args, flags, opts, params, result)                                       \
        [RPC_M_##name] = {#name, n_args, flags, opts, params, result},
#include "methods.def"
#undef KC_METHOD
};

const struct rpc_option_info rpc_options[RPC_OPT_COUNT] = {
#define KC_OPTION(name, type, desc) [RPC_OPT_##name] = {#name, type, desc},
#include "options.def"
#undef KC_OPTION
};

const struct rpc_error_info rpc_errors[RPC_ERR_COUNT] = {
#define KC_ERROR(name, http, desc) [RPC_ERR_##name] = {#name, http, desc},
#include "errors.def"
#undef KC_ERROR
};

#define RPC_ERROR_NOTIFY_METHOD "kcache.error"

/* Binary-safe: "get\0x" is not "get". */
static bool
rpc_name_eq(const char *table_name, const char *name, size_t len)
{
        return strlen(table_name) == len && (len == 0 || memcmp(table_name, name, len) == 0);
}

int
rpc_method_find(const char *name, size_t len)
{
        for (int i = 0; i < RPC_M_COUNT; i++)
                if (rpc_name_eq(rpc_methods[i].name, name, len))
                        return i;
        return -1;
}

int
rpc_option_find(const char *name, size_t len)
{
        for (int i = 0; i < RPC_OPT_COUNT; i++)
                if (rpc_name_eq(rpc_options[i].name, name, len))
                        return i;
        return -1;
}

int
rpc_error_find(const char *name, size_t len)
{
        for (int i = 0; i < RPC_ERR_COUNT; i++)
                if (rpc_name_eq(rpc_errors[i].name, name, len))
                        return i;
        return -1;
}

bool
rpc_obj_bytes(const msgpack_object *o, const char **p, size_t *len)
{
        switch (o->type) {
        case MSGPACK_OBJECT_STR:
                *p = o->via.str.ptr;
                *len = o->via.str.size;
                break;
        case MSGPACK_OBJECT_BIN:
                *p = o->via.bin.ptr;
                *len = o->via.bin.size;
                break;
        default:
                return false;
        }
        /*
         * msgpack-c leaves ptr NULL for empty strings; a non-NULL pointer
         * lets callers pass it to memcmp()/memcpy() without a special case.
         */
        if (*len == 0)
                *p = "";
        return true;
}

static int
rpc_fail(const char **why, const char *reason, int code)
{
        if (why != NULL)
                *why = reason;
        return code;
}

/* Rule 2/3's msgid, shared by requests and responses. */
static int
rpc_parse_msgid(const msgpack_object_array *a, struct rpc_msg *m, const char **why)
{
        const msgpack_object *id;

        if (a->size < 2)
                return rpc_fail(why, "no msgid", RPC_E_NO_MSGID);
        id = &a->ptr[1];
        if (id->type != MSGPACK_OBJECT_POSITIVE_INTEGER || id->via.u64 > UINT32_MAX)
                return rpc_fail(why, "msgid is not an unsigned 32-bit integer", RPC_E_NO_MSGID);
        m->msgid = (uint32_t)id->via.u64;
        return RPC_OK;
}

/* The [method, params] pair of requests and notifications. */
static int
rpc_parse_call(const msgpack_object *method, const msgpack_object *params, struct rpc_msg *m,
               const char **why)
{
        if (!rpc_obj_bytes(method, &m->method, &m->method_len))
                return rpc_fail(why, "method is not a string", RPC_E_BAD);
        if (params->type != MSGPACK_OBJECT_ARRAY)
                return rpc_fail(why, "params is not an array", RPC_E_BAD);
        m->params = params;
        return RPC_OK;
}

int
rpc_parse(const msgpack_object *obj, struct rpc_msg *m, const char **why)
{
        const msgpack_object_array *a;
        int r;

        memset(m, 0, sizeof(*m));
        if (obj->type != MSGPACK_OBJECT_ARRAY)
                return rpc_fail(why, "message is not an array", RPC_E_NO_MSGID);
        a = &obj->via.array;
        if (a->size == 0)
                return rpc_fail(why, "message is an empty array", RPC_E_NO_MSGID);
        if (a->ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a->ptr[0].via.u64 > RPC_NOTIFY)
                return rpc_fail(why, "message type is not 0, 1 or 2", RPC_E_NO_MSGID);
        m->type = (enum rpc_type)a->ptr[0].via.u64;

        switch (m->type) {
        case RPC_REQUEST:
                r = rpc_parse_msgid(a, m, why);
                if (r != RPC_OK)
                        return r;
                if (a->size != 4)
                        return rpc_fail(why, "a request has 4 elements", RPC_E_BAD);
                return rpc_parse_call(&a->ptr[2], &a->ptr[3], m, why);
        case RPC_RESPONSE:
                r = rpc_parse_msgid(a, m, why);
                if (r != RPC_OK)
                        return r;
                if (a->size != 4)
                        return rpc_fail(why, "a response has 4 elements", RPC_E_BAD);
                if (a->ptr[2].type != MSGPACK_OBJECT_NIL && a->ptr[2].type != MSGPACK_OBJECT_MAP)
                        return rpc_fail(why, "response error is neither nil nor a map", RPC_E_BAD);
                m->error = &a->ptr[2];
                m->result = &a->ptr[3];
                return RPC_OK;
        case RPC_NOTIFY:
                if (a->size != 3)
                        return rpc_fail(why, "a notification has 3 elements", RPC_E_BAD);
                return rpc_parse_call(&a->ptr[1], &a->ptr[2], m, why);
        }
        /* Not reached: type was checked to be 0..2 above. */
        return rpc_fail(why, "message type is not 0, 1 or 2", RPC_E_NO_MSGID);
}

/* msgpack-c returns the write callback's value; ours is 0 or -1. */
#define RPC_TRY(expr)                                                                              \
        do {                                                                                       \
                if ((expr) != 0)                                                                   \
                        return -1;                                                                 \
        } while (0)

int
rpc_pack_str(msgpack_packer *pk, const char *s)
{
        size_t n;

        /* NULL packs as "", so a missing optional string never crashes a reply. */
        if (s == NULL)
                s = "";
        n = strlen(s);
        RPC_TRY(msgpack_pack_str(pk, n));
        if (n > 0)
                RPC_TRY(msgpack_pack_str_body(pk, s, n));
        return 0;
}

int
rpc_pack_bin(msgpack_packer *pk, const void *p, size_t n)
{
        RPC_TRY(msgpack_pack_bin(pk, n));
        /* Some write callbacks memcpy() unconditionally; p may be NULL when n is 0. */
        if (n > 0)
                RPC_TRY(msgpack_pack_bin_body(pk, p, n));
        return 0;
}

int
rpc_pack_request_head(msgpack_packer *pk, uint32_t msgid, const char *method)
{
        RPC_TRY(msgpack_pack_array(pk, 4));
        RPC_TRY(msgpack_pack_unsigned_int(pk, RPC_REQUEST));
        RPC_TRY(msgpack_pack_uint32(pk, msgid));
        return rpc_pack_str(pk, method);
}

int
rpc_pack_result_head(msgpack_packer *pk, uint32_t msgid)
{
        RPC_TRY(msgpack_pack_array(pk, 4));
        RPC_TRY(msgpack_pack_unsigned_int(pk, RPC_RESPONSE));
        RPC_TRY(msgpack_pack_uint32(pk, msgid));
        RPC_TRY(msgpack_pack_nil(pk));
        return 0;
}

/* {"code": NAME, "message": message}; an unknown code is reported as INTERNAL. */
static int
rpc_pack_error_map(msgpack_packer *pk, enum rpc_error code, const char *message)
{
        if ((unsigned)code >= RPC_ERR_COUNT)
                code = RPC_ERR_INTERNAL;
        if (message == NULL)
                message = rpc_errors[code].desc;
        RPC_TRY(msgpack_pack_map(pk, 2));
        RPC_TRY(rpc_pack_str(pk, "code"));
        RPC_TRY(rpc_pack_str(pk, rpc_errors[code].name));
        RPC_TRY(rpc_pack_str(pk, "message"));
        return rpc_pack_str(pk, message);
}

int
rpc_pack_error(msgpack_packer *pk, uint32_t msgid, enum rpc_error code, const char *message)
{
        RPC_TRY(msgpack_pack_array(pk, 4));
        RPC_TRY(msgpack_pack_unsigned_int(pk, RPC_RESPONSE));
        RPC_TRY(msgpack_pack_uint32(pk, msgid));
        RPC_TRY(rpc_pack_error_map(pk, code, message));
        RPC_TRY(msgpack_pack_nil(pk));
        return 0;
}

int
rpc_pack_error_notify(msgpack_packer *pk, enum rpc_error code, const char *message)
{
        RPC_TRY(rpc_pack_notify_head(pk, RPC_ERROR_NOTIFY_METHOD));
        RPC_TRY(msgpack_pack_array(pk, 1));
        return rpc_pack_error_map(pk, code, message);
}

int
rpc_pack_error_notify_code(msgpack_packer *pk, const char *code, const char *message)
{
        RPC_TRY(rpc_pack_notify_head(pk, RPC_ERROR_NOTIFY_METHOD));
        RPC_TRY(msgpack_pack_array(pk, 1));
        RPC_TRY(msgpack_pack_map(pk, 2));
        RPC_TRY(rpc_pack_str(pk, "code"));
        RPC_TRY(rpc_pack_str(pk, code));
        RPC_TRY(rpc_pack_str(pk, "message"));
        return rpc_pack_str(pk, message != NULL ? message : "");
}

int
rpc_pack_notify_head(msgpack_packer *pk, const char *method)
{
        RPC_TRY(msgpack_pack_array(pk, 3));
        RPC_TRY(msgpack_pack_unsigned_int(pk, RPC_NOTIFY));
        return rpc_pack_str(pk, method);
}
