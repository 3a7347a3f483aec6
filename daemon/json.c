/* SPDX-License-Identifier: MIT */
/* json: streaming writer (see json.h). */
#include "daemon/json.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static void
json_raw(struct json *j, const char *p, size_t n)
{
        if (buf_append(j->b, p, n) < 0)
                j->failed = true;
}

/* Separator before a value or key at the current level. */
static void
json_sep(struct json *j)
{
        if (j->after_key) {
                j->after_key = false;
                return;
        }
        if (j->has_items[j->depth])
                json_raw(j, ",", 1);
        j->has_items[j->depth] = true;
}

void
json_init(struct json *j, struct buf *b)
{
        memset(j, 0, sizeof(*j));
        j->b = b;
}

static void
json_open(struct json *j, char ch)
{
        json_sep(j);
        json_raw(j, &ch, 1);
        if (j->depth < JSON_MAX_DEPTH)
                j->depth++;
        j->has_items[j->depth] = false;
}

static void
json_close(struct json *j, char ch)
{
        json_raw(j, &ch, 1);
        if (j->depth > 0)
                j->depth--;
}

void
json_obj_begin(struct json *j)
{
        json_open(j, '{');
}

void
json_obj_end(struct json *j)
{
        json_close(j, '}');
}

void
json_arr_begin(struct json *j)
{
        json_open(j, '[');
}

void
json_arr_end(struct json *j)
{
        json_close(j, ']');
}

static void
json_escaped(struct json *j, const char *s, size_t n)
{
        json_raw(j, "\"", 1);
        for (size_t i = 0; i < n; i++) {
                unsigned char ch = (unsigned char)s[i];
                char esc[8];
                if (ch == '"' || ch == '\\') {
                        esc[0] = '\\';
                        esc[1] = (char)ch;
                        json_raw(j, esc, 2);
                } else if (ch < 0x20 || ch >= 0x7f) {
                        json_raw(j, esc, (size_t)snprintf(esc, sizeof(esc), "\\u%04x", ch));
                } else {
                        json_raw(j, (const char *)&s[i], 1);
                }
        }
        json_raw(j, "\"", 1);
}

void
json_key(struct json *j, const char *key)
{
        json_sep(j);
        json_escaped(j, key, strlen(key));
        json_raw(j, ":", 1);
        j->after_key = true;
}

void
json_str(struct json *j, const char *s)
{
        json_strn(j, s, s == NULL ? 0 : strlen(s));
}

void
json_strn(struct json *j, const char *s, size_t n)
{
        json_sep(j);
        json_escaped(j, s == NULL ? "" : s, n);
}

void
json_int(struct json *j, int64_t v)
{
        char s[32];

        json_sep(j);
        json_raw(j, s, (size_t)snprintf(s, sizeof(s), "%" PRId64, v));
}

void
json_uint(struct json *j, uint64_t v)
{
        char s[32];

        json_sep(j);
        json_raw(j, s, (size_t)snprintf(s, sizeof(s), "%" PRIu64, v));
}

void
json_double(struct json *j, double v)
{
        char s[40];

        json_sep(j);
        if (!isfinite(v)) {
                json_raw(j, "null", 4);
                return;
        }
        json_raw(j, s, (size_t)snprintf(s, sizeof(s), "%.15g", v));
}

void
json_bool(struct json *j, bool v)
{
        json_sep(j);
        json_raw(j, v ? "true" : "false", v ? 4 : 5);
}

void
json_null(struct json *j)
{
        json_sep(j);
        json_raw(j, "null", 4);
}
