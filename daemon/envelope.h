/* SPDX-License-Identifier: MIT */
/*
 * envelope: the format of the values kcached stores in Redis. Owns one
 * reusable zlib deflate stream, one inflate stream and the scratch buffer
 * that inflated values are decoded into.
 *
 *   offset  size  field
 *   0       2     magic 0xC1 'K'
 *   2       1     version, 1
 *   3       1     flags: bit0 the payload is a zlib stream, bit1 written with a stale window
 *   4       1     s, the schema tag's length (0..255)
 *   5       s     schema tag
 *   5+s     4     uncompressed length, uint32 big endian
 *   9+s     4     crc32 (zlib's) of the uncompressed payload, uint32 big endian
 *   13+s    ...   payload: the value, or a zlib stream (zlib header, windowBits 15)
 *
 * Values that do not start with the two magic bytes were written by another
 * client and are returned as they are. A value with the magic is decoded
 * strictly: any inconsistency makes it corrupt (a miss), never a guess.
 * Inflating is bounded by the length in the header, which is itself bounded
 * by max_value_bytes, so a zlib bomb costs at most max_value_bytes of memory
 * and that much inflate work.
 *
 * Streams are reset, not re-created, between values: deflateInit() allocates
 * ~256 KiB and clears a hash table, which is most of the cost for small values.
 * Not thread-safe: one struct envelope per event loop.
 */
#ifndef KCACHE_ENVELOPE_H
#define KCACHE_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define ENVELOPE_MAGIC0     0xC1 /* never a valid msgpack byte, and not UTF-8 */
#define ENVELOPE_MAGIC1     'K'
#define ENVELOPE_VERSION    1
#define ENVELOPE_SCHEMA_MAX 255
#define ENVELOPE_HDR_MIN    13 /* header size with an empty schema tag */

/* Flag bits, as stored. Callers pass only ENVELOPE_F_STALE to envelope_encode(). */
#define ENVELOPE_F_ZLIB  0x01u
#define ENVELOPE_F_STALE 0x02u

enum {
        ENVELOPE_OK = 0,
        ENVELOPE_E_TOO_LARGE, /* encode: the value is larger than max_value_bytes or 4 GiB - 1 */
        ENVELOPE_E_CORRUPT,   /* decode: has the magic but fails a check; treat as a miss */
        ENVELOPE_E_NEWER,     /* decode: written by a newer kcached (version > 1); a miss */
};

struct envelope_cfg {
        bool compress;          /* compression = zlib */
        int level;              /* zlib level, -1 (zlib default) or 0..9 */
        size_t threshold;       /* compress values of at least this many bytes ... */
        size_t inline_max;      /* ... and at most this many */
        size_t max_value_bytes; /* largest value encoded or decoded (after inflating) */
};

struct envelope;

/* 0, or -ENOMEM. */
int envelope_new(struct envelope **out);
/* Accepts NULL; returns NULL. Views from envelope_decode() die with it. */
struct envelope *envelope_free(struct envelope *e);

/*
 * Appends the envelope of val[0..n) with the schema tag schema[0..slen) to
 * out. flags is 0 or ENVELOPE_F_STALE. The payload is compressed when
 * cfg->compress, threshold <= n <= inline_max and the zlib stream comes out
 * smaller than n; else it is stored as is. If saved is not NULL it gets the
 * bytes saved by compression (0 when stored as is). val must not point into
 * out (appending may move out's storage).
 * Returns 0; ENVELOPE_E_TOO_LARGE if n > max_value_bytes or n > UINT32_MAX;
 * -EINVAL if slen > ENVELOPE_SCHEMA_MAX, flags has other bits or cfg->level
 * is out of range (caller bugs: config and request parsing check these);
 * -ENOMEM. On any error out is unchanged.
 */
int envelope_encode(struct envelope *e, const struct envelope_cfg *cfg, const void *val, size_t n,
                    const void *schema, size_t slen, unsigned flags, struct buf *out,
                    size_t *saved);

struct envelope_view {
        const uint8_t *data; /* the value: into p, or into e's scratch buffer */
        size_t len;
        const uint8_t *schema; /* into p; slen 0 when there is no tag (and for raw values) */
        size_t slen;
        unsigned flags; /* stored flags: ENVELOPE_F_ZLIB, ENVELOPE_F_STALE; 0 for raw values */
        bool is_raw;    /* p has no magic: data = p, len = n, returned as is */
};

/*
 * Decodes the stored value p[0..n). Only cfg->max_value_bytes is used: a
 * value compressed by an instance with a larger inline_max still decodes.
 * Returns ENVELOPE_OK and fills *v, whose pointers stay valid while p does
 * and until the next envelope_decode() on e or envelope_free(e);
 * ENVELOPE_E_CORRUPT if p starts with the magic and is shorter than its
 * header, has a version of 0, flag bits other than ZLIB and STALE, a length
 * above max_value_bytes, a payload that is not exactly the length (stored)
 * or does not inflate to exactly the length with no trailing bytes (zlib),
 * or a crc mismatch (a zlib payload too short to inflate to the length at
 * deflate's best ratio, 1032:1, is corrupt before anything is allocated);
 * ENVELOPE_E_NEWER if its version is above
 * ENVELOPE_VERSION (checked before anything after the version byte);
 * -ENOMEM. *v is written only on ENVELOPE_OK. A value starting with 0xC1
 * followed by anything but 'K', or just the byte 0xC1, is raw.
 */
int envelope_decode(struct envelope *e, const struct envelope_cfg *cfg, const void *p, size_t n,
                    struct envelope_view *v);

/* Why the last envelope_decode() on e failed, for the log ("crc mismatch"). Static string. */
const char *envelope_why(const struct envelope *e);

/* Bytes held by the inflate scratch buffer now (memory accounting, tests). */
size_t envelope_scratch_bytes(const struct envelope *e);

const char *envelope_strerror(int code);

#endif
