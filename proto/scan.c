/* SPDX-License-Identifier: MIT */
/*
 * scan: the bounded, resumable msgpack framer (see scan.h).
 *
 * The walk is a loop over object headers. Each header is classified from its
 * type byte into a scalar (fixed size, nothing follows), a byte string
 * (str/bin/ext: a length, then that many payload bytes) or a container
 * (array/map: a count, then that many objects, twice for maps).
 *
 * State between calls is the position of the next header (s->pos), the open
 * containers with the objects each still owes (s->left[1..depth]) and the
 * objects announced so far (s->n_elems). That state only changes once a whole
 * header (and, for scalars and byte strings, the whole object) is in the
 * buffer, so a call that runs out of bytes returns SCAN_E_PARTIAL and the next
 * call re-reads at most one header of at most 18 bytes.
 *
 * Limits come before bytes: a length or count is checked against what
 * max_bytes leaves of the frame as soon as the header is readable, and every
 * announced element is counted against max_elems at once, so a five-byte
 * `dd ff ff ff ff` is refused without waiting for (or allocating) anything.
 * All size arithmetic is in uint64_t, where pos + header + a 32-bit length
 * cannot overflow; results are only stored once they are <= max_bytes, which
 * fits a size_t.
 *
 * Invariants: s->pos <= the len of the last call; s->n_elems <= max_elems;
 * s->depth <= max_nesting <= SCAN_MAX_NESTING; s->left[1..depth] > 0.
 */
#include "scan.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum scan_kind {
        SCAN_K_SCALAR, /* size bytes in all */
        SCAN_K_BYTES,  /* size header bytes, then n payload bytes */
        SCAN_K_ARRAY,  /* size header bytes, then n objects */
        SCAN_K_MAP,    /* size header bytes, then 2n objects */
};

struct scan_head {
        enum scan_kind kind;
        unsigned size;  /* type byte + length field (+ ext type, or a scalar's value) */
        unsigned width; /* bytes of the big-endian length/count after the type byte; 0: n is inline
                         */
        uint64_t n;     /* payload bytes or element count */
};

void
scan_reset(struct scan *s)
{
        s->pos = 0;
        s->n_elems = 0;
        s->depth = 0;
        /* left[] is only read below depth, which is 0: no need to clear it. */
}

static uint64_t
scan_be(const uint8_t *p, unsigned width)
{
        uint64_t v = 0;

        for (unsigned i = 0; i < width; i++)
                v = v << 8 | p[i];
        return v;
}

static void
scan_set(struct scan_head *h, enum scan_kind kind, unsigned size, unsigned width)
{
        h->kind = kind;
        h->size = size;
        h->width = width;
        h->n = 0;
}

/* Classifies a type byte. false for 0xc1, the one byte msgpack never uses. */
static bool
scan_type(uint8_t b, struct scan_head *h)
{
        if (b <= 0x7f || b >= 0xe0) { /* positive / negative fixint */
                scan_set(h, SCAN_K_SCALAR, 1, 0);
                return true;
        }
        if (b <= 0x8f) {
                scan_set(h, SCAN_K_MAP, 1, 0);
                h->n = b & 0x0f;
                return true;
        }
        if (b <= 0x9f) {
                scan_set(h, SCAN_K_ARRAY, 1, 0);
                h->n = b & 0x0f;
                return true;
        }
        if (b <= 0xbf) {
                scan_set(h, SCAN_K_BYTES, 1, 0);
                h->n = b & 0x1f;
                return true;
        }

        switch (b) {
        case 0xc0: /* nil */
        case 0xc2: /* false */
        case 0xc3: /* true */
                scan_set(h, SCAN_K_SCALAR, 1, 0);
                break;
        case 0xc4: /* bin8 */
        case 0xd9: /* str8 */
                scan_set(h, SCAN_K_BYTES, 2, 1);
                break;
        case 0xc5: /* bin16 */
        case 0xda: /* str16 */
                scan_set(h, SCAN_K_BYTES, 3, 2);
                break;
        case 0xc6: /* bin32 */
        case 0xdb: /* str32 */
                scan_set(h, SCAN_K_BYTES, 5, 4);
                break;
        case 0xc7: /* ext8: length, then the ext type byte */
                scan_set(h, SCAN_K_BYTES, 3, 1);
                break;
        case 0xc8: /* ext16 */
                scan_set(h, SCAN_K_BYTES, 4, 2);
                break;
        case 0xc9: /* ext32 */
                scan_set(h, SCAN_K_BYTES, 6, 4);
                break;
        case 0xcc: /* uint8 */
        case 0xd0: /* int8 */
                scan_set(h, SCAN_K_SCALAR, 2, 0);
                break;
        case 0xcd: /* uint16 */
        case 0xd1: /* int16 */
                scan_set(h, SCAN_K_SCALAR, 3, 0);
                break;
        case 0xca: /* float32 */
        case 0xce: /* uint32 */
        case 0xd2: /* int32 */
                scan_set(h, SCAN_K_SCALAR, 5, 0);
                break;
        case 0xcb: /* float64 */
        case 0xcf: /* uint64 */
        case 0xd3: /* int64 */
                scan_set(h, SCAN_K_SCALAR, 9, 0);
                break;
        case 0xd4: /* fixext1: type byte + 1 */
                scan_set(h, SCAN_K_SCALAR, 3, 0);
                break;
        case 0xd5: /* fixext2 */
                scan_set(h, SCAN_K_SCALAR, 4, 0);
                break;
        case 0xd6: /* fixext4 */
                scan_set(h, SCAN_K_SCALAR, 6, 0);
                break;
        case 0xd7: /* fixext8 */
                scan_set(h, SCAN_K_SCALAR, 10, 0);
                break;
        case 0xd8: /* fixext16 */
                scan_set(h, SCAN_K_SCALAR, 18, 0);
                break;
        case 0xdc: /* array16 */
                scan_set(h, SCAN_K_ARRAY, 3, 2);
                break;
        case 0xdd: /* array32 */
                scan_set(h, SCAN_K_ARRAY, 5, 4);
                break;
        case 0xde: /* map16 */
                scan_set(h, SCAN_K_MAP, 3, 2);
                break;
        case 0xdf: /* map32 */
                scan_set(h, SCAN_K_MAP, 5, 4);
                break;
        default: /* 0xc1 */
                return false;
        }
        return true;
}

int
scan_feed(struct scan *s, const uint8_t *p, size_t len, const struct scan_limits *lim,
          size_t *frame_len)
{
        const uint64_t max_bytes = lim->max_bytes;
        const uint64_t max_elems = lim->max_elems;
        const unsigned max_nesting =
                lim->max_nesting < SCAN_MAX_NESTING ? lim->max_nesting : SCAN_MAX_NESTING;

        if (s->pos == 0 && s->depth == 0) {
                /* A frame is at least one object: the top-level one. */
                if (max_elems < 1)
                        return SCAN_E_TOO_LARGE;
                s->n_elems = 1;
        }

        for (;;) {
                struct scan_head h;
                uint64_t end;

                if (s->pos >= len)
                        return SCAN_E_PARTIAL;
                if (!scan_type(p[s->pos], &h))
                        return SCAN_E_INVALID;
                if (h.kind != SCAN_K_SCALAR && h.kind != SCAN_K_BYTES && s->depth >= max_nesting)
                        return SCAN_E_TOO_DEEP;

                end = (uint64_t)s->pos + h.size;
                if (end > max_bytes)
                        return SCAN_E_TOO_LARGE;
                if (end > len)
                        return SCAN_E_PARTIAL;
                if (h.width > 0)
                        h.n = scan_be(p + s->pos + 1, h.width);

                if (h.kind == SCAN_K_BYTES) {
                        if (h.n > max_bytes - end)
                                return SCAN_E_TOO_LARGE;
                        end += h.n;
                        /* Not committed: the header is read again next time. */
                        if (end > len)
                                return SCAN_E_PARTIAL;
                } else if (h.kind != SCAN_K_SCALAR) {
                        uint64_t n = h.kind == SCAN_K_MAP ? 2 * h.n : h.n;

                        /* Every object takes at least one byte. */
                        if (n > max_bytes - end)
                                return SCAN_E_TOO_LARGE;
                        if (n > max_elems - s->n_elems)
                                return SCAN_E_TOO_LARGE;
                        s->n_elems += (size_t)n;
                        s->pos = (size_t)end;
                        if (n > 0) {
                                s->depth++;
                                s->left[s->depth] = n;
                                continue;
                        }
                        /* An empty container is complete at once, like a scalar. */
                }
                s->pos = (size_t)end;

                /* One object done; it may be the last one its container (and theirs) owed. */
                while (s->depth > 0) {
                        if (--s->left[s->depth] > 0)
                                break;
                        s->depth--;
                }
                if (s->depth == 0) {
                        *frame_len = s->pos;
                        scan_reset(s);
                        return SCAN_OK;
                }
        }
}

/*
 * Reads one integer at *pos. 0 with *v if it is complete and not negative,
 * advancing *pos; -1 otherwise.
 */
static int
scan_peek_uint(const uint8_t *p, size_t len, size_t *pos, uint64_t *v)
{
        unsigned width;
        bool is_signed = false;
        uint8_t b;

        if (*pos >= len)
                return -1;
        b = p[*pos];
        if (b <= 0x7f) {
                *v = b;
                *pos += 1;
                return 0;
        }
        switch (b) {
        case 0xcc:
                width = 1;
                break;
        case 0xcd:
                width = 2;
                break;
        case 0xce:
                width = 4;
                break;
        case 0xcf:
                width = 8;
                break;
        case 0xd0:
                width = 1;
                is_signed = true;
                break;
        case 0xd1:
                width = 2;
                is_signed = true;
                break;
        case 0xd2:
                width = 4;
                is_signed = true;
                break;
        case 0xd3:
                width = 8;
                is_signed = true;
                break;
        default:
                return -1;
        }
        if (len - *pos < 1 + (size_t)width)
                return -1;
        /* A signed encoding is negative exactly when its top bit is set. */
        if (is_signed && (p[*pos + 1] & 0x80))
                return -1;
        *v = scan_be(p + *pos + 1, width);
        *pos += 1 + width;
        return 0;
}

int
scan_peek_msgid(const uint8_t *p, size_t len, uint32_t *msgid)
{
        uint64_t count, type, id;
        size_t pos;

        if (len < 1)
                return -1;
        if (p[0] >= 0x90 && p[0] <= 0x9f) {
                count = p[0] & 0x0f;
                pos = 1;
        } else if (p[0] == 0xdc && len >= 3) {
                count = scan_be(p + 1, 2);
                pos = 3;
        } else if (p[0] == 0xdd && len >= 5) {
                count = scan_be(p + 1, 4);
                pos = 5;
        } else {
                return -1;
        }
        if (count < 2)
                return -1;
        if (scan_peek_uint(p, len, &pos, &type) < 0 || type != 0)
                return -1;
        if (scan_peek_uint(p, len, &pos, &id) < 0 || id > UINT32_MAX)
                return -1;
        *msgid = (uint32_t)id;
        return 0;
}

const char *
scan_strerror(int code)
{
        switch (code) {
        case SCAN_OK:
                return "ok";
        case SCAN_E_PARTIAL:
                return "incomplete message";
        case SCAN_E_TOO_LARGE:
                return "message too large";
        case SCAN_E_TOO_DEEP:
                return "message nested too deeply";
        case SCAN_E_INVALID:
                return "not msgpack";
        default:
                return "unknown scan error";
        }
}
