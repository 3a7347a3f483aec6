/* SPDX-License-Identifier: MIT */
/*
 * rpc: msgpack-RPC messages on top of msgpack-c, shared by daemon and client.
 *
 *   request       [0, msgid, method, params]
 *   response      [1, msgid, error, result]   error: nil or {"code", "message"}
 *   notification  [2, method, params]
 *
 * rpc_parse() classifies one decoded object (a frame that scan_feed()
 * accepted). The rpc_pack_* helpers write message heads into a packer; the
 * caller packs the rest. The method/error/option tables live in *.def beside
 * this file and are exposed here as enums and name arrays.
 */
#ifndef KCACHE_RPC_H
#define KCACHE_RPC_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RPC_PROTOCOL_VERSION 1

/* --- tables ------------------------------------------------------------ */

enum rpc_error {
#define KC_ERROR(name, http, desc) RPC_ERR_##name,
#include "errors.def"
#undef KC_ERROR
        RPC_ERR_COUNT
};

enum rpc_option {
#define KC_OPTION(name, type, desc) RPC_OPT_##name,
#include "options.def"
#undef KC_OPTION
        RPC_OPT_COUNT
};

#define KC_OPT_BIT(o) (1u << (o))
enum {
#define KC_OPTION(name, type, desc) KC_OPT_##name = KC_OPT_BIT(RPC_OPT_##name),
#include "options.def"
#undef KC_OPTION
};

enum rpc_option_type { OPT_INT, OPT_STR, OPT_BOOL, OPT_STRLIST };

enum rpc_method {
#define KC_METHOD(name, n_args, flags, opts, params, result) RPC_M_##name,
#include "methods.def"
#undef KC_METHOD
        RPC_M_COUNT
};

enum {
        KC_M_LOCAL = 1u << 0,
        KC_M_READ = 1u << 1,
        KC_M_WRITE = 1u << 2,
};

struct rpc_method_info {
        const char *name;
        unsigned n_args;
        unsigned flags;
        unsigned opts;
        const char *params;
        const char *result;
};

struct rpc_option_info {
        const char *name;
        enum rpc_option_type type;
        const char *desc;
};

struct rpc_error_info {
        const char *name;
        int http_status;
        const char *desc;
};

extern const struct rpc_method_info rpc_methods[RPC_M_COUNT];
extern const struct rpc_option_info rpc_options[RPC_OPT_COUNT];
extern const struct rpc_error_info rpc_errors[RPC_ERR_COUNT];

/* Method by name (binary-safe); -1 if unknown. */
int rpc_method_find(const char *name, size_t len);
/* Option by name; -1 if unknown. */
int rpc_option_find(const char *name, size_t len);
/* Error code by wire name; -1 if unknown. */
int rpc_error_find(const char *name, size_t len);

/* --- parsing ----------------------------------------------------------- */

enum rpc_type { RPC_REQUEST = 0, RPC_RESPONSE = 1, RPC_NOTIFY = 2 };

struct rpc_msg {
        enum rpc_type type;
        uint32_t msgid;            /* request, response */
        const char *method;        /* request, notify: ref into the object, not NUL-terminated */
        size_t method_len;
        const msgpack_object *params; /* request, notify: an array */
        const msgpack_object *error;  /* response: nil or map */
        const msgpack_object *result; /* response */
};

enum {
        RPC_OK = 0,
        RPC_E_NO_MSGID,   /* cannot be answered: not an RPC array, or msgid is not a uint32 */
        RPC_E_BAD,        /* a request with a valid msgid but bad method/params: answer
                             BAD_REQUEST to m->msgid; or a malformed notification/response */
};

/*
 * Classifies obj. Returns RPC_OK with *m filled; RPC_E_BAD with m->type and
 * (for requests) m->msgid filled and *why set; or RPC_E_NO_MSGID with *why.
 * Pointers in *m refer into obj (its zone).
 */
int rpc_parse(const msgpack_object *obj, struct rpc_msg *m, const char **why);

/* A str or bin object's bytes; false for any other type. */
bool rpc_obj_bytes(const msgpack_object *o, const char **p, size_t *len);

/* --- packing ----------------------------------------------------------- */

/* [0, msgid, method, ... : the caller packs params (an array) next. */
int rpc_pack_request_head(msgpack_packer *pk, uint32_t msgid, const char *method);
/* [1, msgid, nil, ... : the caller packs the result next. */
int rpc_pack_result_head(msgpack_packer *pk, uint32_t msgid);
/* A whole error response [1, msgid, {"code","message"}, nil]. */
int rpc_pack_error(msgpack_packer *pk, uint32_t msgid, enum rpc_error code, const char *message);
/* A whole notification [2, method, [{"code","message"}]] (kcache.error). */
int rpc_pack_error_notify(msgpack_packer *pk, enum rpc_error code, const char *message);
/* The same with a code that is not in errors.def (e.g. TOO_MANY_CLIENTS at accept). */
int rpc_pack_error_notify_code(msgpack_packer *pk, const char *code, const char *message);
/* [2, method, ... : the caller packs params next. */
int rpc_pack_notify_head(msgpack_packer *pk, const char *method);

int rpc_pack_str(msgpack_packer *pk, const char *s);
int rpc_pack_bin(msgpack_packer *pk, const void *p, size_t n);

#endif
