/* SPDX-License-Identifier: MIT */
/*
 * json: a small streaming JSON writer into a struct buf, for the admin
 * socket's answers. Commas are inserted automatically; strings are escaped
 * (binary-safe: bytes that are not printable ASCII become \u00XX), so one
 * answer is always one line. Nesting deeper than JSON_MAX_DEPTH is a bug.
 */
#ifndef KCACHE_JSON_H
#define KCACHE_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define JSON_MAX_DEPTH 16

struct json {
        struct buf *b; /* ref */
        int depth;
        bool has_items[JSON_MAX_DEPTH + 1];
        bool after_key;
        bool failed; /* out of memory somewhere: discard the answer */
};

void json_init(struct json *j, struct buf *b);
void json_obj_begin(struct json *j);
void json_obj_end(struct json *j);
void json_arr_begin(struct json *j);
void json_arr_end(struct json *j);
void json_key(struct json *j, const char *key);
void json_str(struct json *j, const char *s);
void json_strn(struct json *j, const char *s, size_t n);
void json_int(struct json *j, int64_t v);
void json_uint(struct json *j, uint64_t v);
void json_double(struct json *j, double v);
void json_bool(struct json *j, bool v);
void json_null(struct json *j);

#endif
