/* SPDX-License-Identifier: MIT */
/*
 * envelope: encode and decode stored values (see envelope.h for the format).
 *
 * Invariants: both z_streams are always ready for a new value (reset right
 * after each use, so a failed call leaves nothing behind); e->level is the
 * deflate stream's current level; the scratch buffer is exactly as large as
 * the largest value inflated since it was last freed, and inflate is never
 * given more output room than the header's length, so a stream that would
 * inflate further stops there and is reported corrupt.
 */
/* next_in is const with ZLIB_CONST: no casting away const on the values. */
#define ZLIB_CONST

#include "daemon/envelope.h"

#include "daemon/crc32.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* The level the deflate stream starts with: the config default. */
#define ENVELOPE_INIT_LEVEL 1

/*
 * A scratch buffer above this size is freed at the start of the next decode
 * rather than kept: one 16 MiB value must not pin 16 MiB for the life of the
 * daemon, while the common small values keep reusing one block.
 */
#define ENVELOPE_SCRATCH_KEEP ((size_t)1 << 20)

/*
 * Deflate's best case is 2 bits per 258-byte match (one-bit codes for both
 * the length and the distance), so n bytes of zlib stream never inflate to
 * more than 1032 * n bytes. A header claiming more is corrupt on its face.
 */
#define ENVELOPE_DEFLATE_MAX_RATIO 1032

struct envelope {
        z_stream deflate;
        z_stream inflate;
        int level;          /* the deflate stream's current level */
        uint8_t *scratch;   /* inflated values; views point into it */
        size_t scratch_cap; /* bytes allocated at scratch */
        const char *why;    /* static string: why the last decode failed */
};

static void
envelope_put_be32(uint8_t *p, uint32_t x)
{
        p[0] = (uint8_t)(x >> 24);
        p[1] = (uint8_t)(x >> 16);
        p[2] = (uint8_t)(x >> 8);
        p[3] = (uint8_t)x;
}

static uint32_t
envelope_get_be32(const uint8_t *p)
{
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

int
envelope_new(struct envelope **out)
{
        struct envelope *e;
        int r;

        e = calloc(1, sizeof(*e));
        if (e == NULL)
                return -ENOMEM;
        e->deflate.zalloc = Z_NULL;
        e->deflate.zfree = Z_NULL;
        e->deflate.opaque = Z_NULL;
        e->inflate = e->deflate;
        e->level = ENVELOPE_INIT_LEVEL;
        e->why = "";

        /* Both streams keep a pointer to themselves: e must not move, hence the heap. */
        r = deflateInit(&e->deflate, e->level);
        if (r != Z_OK) {
                free(e);
                return r == Z_MEM_ERROR ? -ENOMEM : -EIO;
        }
        r = inflateInit(&e->inflate);
        if (r != Z_OK) {
                deflateEnd(&e->deflate);
                free(e);
                return r == Z_MEM_ERROR ? -ENOMEM : -EIO;
        }
        *out = e;
        return 0;
}

struct envelope *
envelope_free(struct envelope *e)
{
        if (e == NULL)
                return NULL;
        deflateEnd(&e->deflate);
        inflateEnd(&e->inflate);
        free(e->scratch);
        free(e);
        return NULL;
}

/*
 * Compresses val[0..n) into dst, which has room for n bytes, but lets deflate
 * write at most n - 1 of them: a stream that does not fit is not smaller, and
 * deflate stops there instead of finishing work we would throw away.
 * 1 and *plen when compressed, 0 when not worth it (or zlib balked: storing
 * the value as is is always correct).
 */
static int
envelope_deflate(struct envelope *e, int level, const void *val, size_t n, uint8_t *dst,
                 size_t *plen)
{
        z_stream *zs = &e->deflate;
        size_t total;
        int r;

        if (n < 2)
                return 0;
        /* On a freshly reset stream deflateParams() has nothing to flush. */
        if (level != e->level) {
                if (deflateParams(zs, level, Z_DEFAULT_STRATEGY) != Z_OK)
                        return 0;
                e->level = level;
        }
        zs->next_in = val;
        zs->avail_in = (uInt)n;
        zs->next_out = dst;
        zs->avail_out = (uInt)(n - 1);
        r = deflate(zs, Z_FINISH);
        total = zs->total_out;
        deflateReset(zs);
        if (r != Z_STREAM_END)
                return 0;
        *plen = total;
        return 1;
}

int
envelope_encode(struct envelope *e, const struct envelope_cfg *cfg, const void *val, size_t n,
                const void *schema, size_t slen, unsigned flags, struct buf *out, size_t *saved)
{
        size_t hdr, plen = n;
        uint8_t *h;
        unsigned stored = flags;
        bool try_zlib;
        int r;

        if (slen > ENVELOPE_SCHEMA_MAX || (flags & ~ENVELOPE_F_STALE) != 0)
                return -EINVAL;
        if (cfg->compress &&
            (cfg->level < Z_DEFAULT_COMPRESSION || cfg->level > Z_BEST_COMPRESSION))
                return -EINVAL;
        hdr = ENVELOPE_HDR_MIN + slen;
        if (n > cfg->max_value_bytes || n > UINT32_MAX || n > SIZE_MAX - hdr)
                return ENVELOPE_E_TOO_LARGE;

        /* Room for the value stored as is: the fallback, and the bound on the zlib stream. */
        r = buf_reserve(out, hdr + n);
        if (r < 0)
                return r;
        h = out->data + out->len;

        try_zlib = cfg->compress && n >= cfg->threshold && n <= cfg->inline_max;
        if (try_zlib && envelope_deflate(e, cfg->level, val, n, h + hdr, &plen) == 1)
                stored |= ENVELOPE_F_ZLIB;
        else if (n > 0)
                memcpy(h + hdr, val, n);

        h[0] = ENVELOPE_MAGIC0;
        h[1] = ENVELOPE_MAGIC1;
        h[2] = ENVELOPE_VERSION;
        h[3] = (uint8_t)stored;
        h[4] = (uint8_t)slen;
        if (slen > 0)
                memcpy(h + 5, schema, slen);
        envelope_put_be32(h + 5 + slen, (uint32_t)n);
        envelope_put_be32(h + 9 + slen, crc32_fast(0, val, n));
        out->len += hdr + plen;
        if (saved != NULL)
                *saved = n - plen;
        return 0;
}

static int
envelope_corrupt(struct envelope *e, const char *why)
{
        e->why = why;
        return ENVELOPE_E_CORRUPT;
}

/*
 * Inflates the zlib stream p[0..n) into the scratch buffer, which must come
 * out at exactly ulen bytes with no bytes left over. inflate() gets exactly
 * ulen bytes of room, so a bomb stops at the header's length.
 */
static int
envelope_inflate(struct envelope *e, const uint8_t *p, size_t n, uint32_t ulen,
                 const uint8_t **data)
{
        z_stream *zs = &e->inflate;
        size_t need, total, left_in, left_out;
        const char *msg;
        int r;

        if (n > UINT_MAX || ulen / ENVELOPE_DEFLATE_MAX_RATIO > n)
                return envelope_corrupt(e, "length beyond what the zlib payload can hold");

        /* Never a zero-byte buffer: inflate() refuses a NULL next_out. */
        need = ulen > 0 ? ulen : 1;
        if (e->scratch_cap < need) {
                /* The old contents are dead (views die with this call): no realloc copy. */
                free(e->scratch);
                e->scratch_cap = 0;
                e->scratch = malloc(need);
                if (e->scratch == NULL)
                        return -ENOMEM;
                e->scratch_cap = need;
        }

        zs->next_in = p;
        zs->avail_in = (uInt)n;
        zs->next_out = e->scratch;
        zs->avail_out = ulen;
        r = inflate(zs, Z_FINISH);
        total = zs->total_out;
        left_in = zs->avail_in;
        left_out = zs->avail_out;
        msg = zs->msg; /* zlib's messages are string literals; inflateReset() clears the pointer */
        inflateReset(zs);

        switch (r) {
        case Z_STREAM_END:
                break;
        case Z_MEM_ERROR:
                return -ENOMEM;
        case Z_BUF_ERROR:
                if (left_out == 0)
                        return envelope_corrupt(e, "zlib payload does not end at its length");
                return envelope_corrupt(e, "zlib payload truncated");
        case Z_NEED_DICT:
                return envelope_corrupt(e, "zlib payload needs a dictionary");
        default:
                return envelope_corrupt(e, msg != NULL ? msg : "zlib payload does not inflate");
        }
        if (total != ulen)
                return envelope_corrupt(e, "zlib payload inflates short of its length");
        if (left_in != 0)
                return envelope_corrupt(e, "bytes after the zlib payload");
        *data = e->scratch;
        return 0;
}

int
envelope_decode(struct envelope *e, const struct envelope_cfg *cfg, const void *p_, size_t n,
                struct envelope_view *v)
{
        const uint8_t *p = p_, *data;
        size_t slen, hdr, plen;
        uint32_t ulen, crc;
        unsigned flags;
        int r;

        e->why = "";
        if (e->scratch_cap > ENVELOPE_SCRATCH_KEEP) {
                free(e->scratch);
                e->scratch = NULL;
                e->scratch_cap = 0;
        }

        if (n < 2 || p[0] != ENVELOPE_MAGIC0 || p[1] != ENVELOPE_MAGIC1) {
                *v = (struct envelope_view){.data = p, .len = n, .is_raw = true};
                return ENVELOPE_OK;
        }
        if (n < 3)
                return envelope_corrupt(e, "short header");
        /* Before anything else: a newer version may lay out the rest differently. */
        if (p[2] > ENVELOPE_VERSION) {
                e->why = "newer envelope version";
                return ENVELOPE_E_NEWER;
        }
        if (p[2] == 0)
                return envelope_corrupt(e, "version 0");
        if (n < 5)
                return envelope_corrupt(e, "short header");
        flags = p[3];
        if ((flags & ~(ENVELOPE_F_ZLIB | ENVELOPE_F_STALE)) != 0)
                return envelope_corrupt(e, "unknown flags");
        slen = p[4];
        hdr = ENVELOPE_HDR_MIN + slen;
        if (n < hdr)
                return envelope_corrupt(e, "short header");
        ulen = envelope_get_be32(p + 5 + slen);
        crc = envelope_get_be32(p + 9 + slen);
        if (ulen > cfg->max_value_bytes)
                return envelope_corrupt(e, "length above max_value_bytes");
        plen = n - hdr;

        if ((flags & ENVELOPE_F_ZLIB) == 0) {
                if (plen != ulen)
                        return envelope_corrupt(e, "payload size differs from its length");
                data = p + hdr;
        } else {
                r = envelope_inflate(e, p + hdr, plen, ulen, &data);
                if (r != 0)
                        return r;
        }
        if (crc32_fast(0, data, ulen) != crc)
                return envelope_corrupt(e, "crc mismatch");

        *v = (struct envelope_view){
                .data = data,
                .len = ulen,
                .schema = p + 5,
                .slen = slen,
                .flags = flags,
                .is_raw = false,
        };
        return ENVELOPE_OK;
}

const char *
envelope_why(const struct envelope *e)
{
        return e->why;
}

size_t
envelope_scratch_bytes(const struct envelope *e)
{
        return e->scratch_cap;
}

const char *
envelope_strerror(int code)
{
        switch (code) {
        case ENVELOPE_OK:
                return "ok";
        case ENVELOPE_E_TOO_LARGE:
                return "value too large";
        case ENVELOPE_E_CORRUPT:
                return "corrupt envelope";
        case ENVELOPE_E_NEWER:
                return "envelope from a newer version";
        default:
                return "unknown envelope error";
        }
}
