/* SPDX-License-Identifier: MIT */
/*
 * buf: a growable byte buffer with a read cursor (see buf.h).
 *
 * Invariants: off <= len <= cap; data is NULL exactly when cap is 0.
 * Storage grows geometrically (doubling, from BUF_MIN_CAP) so appending n
 * bytes one at a time costs O(n) copies in total. buf_reserve() never moves
 * the unread bytes inside the storage: callers may keep offsets relative to
 * data across a reserve; only buf_compact() and a drain reset them.
 */
#include "buf.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BUF_MIN_CAP 64

/*
 * No object may be larger than PTRDIFF_MAX (pointer differences inside it
 * would overflow), and asking the allocator for more only makes sanitizers
 * abort instead of returning NULL. So this is our hard ceiling.
 */
#define BUF_MAX_CAP ((size_t)PTRDIFF_MAX)

void
buf_init(struct buf *b)
{
        b->data = NULL;
        b->off = 0;
        b->len = 0;
        b->cap = 0;
}

void
buf_deinit(struct buf *b)
{
        free(b->data);
        buf_init(b);
}

int
buf_reserve(struct buf *b, size_t n)
{
        size_t need, cap;
        uint8_t *p;

        if (b->cap - b->len >= n)
                return 0;
        /* Reuse the consumed front before growing: a buffer that is appended to
         * while being read from, but never quite drained, must not creep. The
         * off >= cap / 4 rule keeps the memmove amortised. */
        if (b->off >= b->cap / 4 && b->cap - buf_size(b) >= n) {
                buf_compact(b);
                return 0;
        }
        if (n > BUF_MAX_CAP - b->len)
                return -ENOMEM;
        need = b->len + n;

        cap = b->cap < BUF_MIN_CAP ? BUF_MIN_CAP : b->cap;
        while (cap < need)
                cap = cap > BUF_MAX_CAP / 2 ? BUF_MAX_CAP : cap * 2;

        p = realloc(b->data, cap);
        if (p == NULL)
                return -ENOMEM;
        b->data = p;
        b->cap = cap;
        return 0;
}

int
buf_append(struct buf *b, const void *p, size_t n)
{
        int r;

        /* memcpy() from a NULL source is undefined even for 0 bytes. */
        if (n == 0)
                return 0;
        r = buf_reserve(b, n);
        if (r < 0)
                return r;
        memcpy(b->data + b->len, p, n);
        b->len += n;
        return 0;
}

void
buf_consume(struct buf *b, size_t n)
{
        /*
         * n > buf_size() is a caller bug; treating it as "everything" keeps
         * the invariants instead of walking the cursor past the tail.
         */
        if (n >= buf_size(b)) {
                b->off = 0;
                b->len = 0;
                return;
        }
        b->off += n;
}

void
buf_compact(struct buf *b)
{
        size_t n = buf_size(b);

        if (b->off == 0)
                return;
        if (n > 0)
                memmove(b->data, b->data + b->off, n);
        b->off = 0;
        b->len = n;
}

void
buf_clear(struct buf *b)
{
        b->off = 0;
        b->len = 0;
}

void
buf_shrink(struct buf *b, size_t keep)
{
        uint8_t *p;

        if (buf_size(b) != 0 || b->cap <= keep)
                return;
        b->off = 0;
        b->len = 0;
        if (keep == 0) {
                free(b->data);
                b->data = NULL;
                b->cap = 0;
                return;
        }
        /* Shrinking may fail; then we simply keep the larger block. */
        p = realloc(b->data, keep);
        if (p == NULL)
                return;
        b->data = p;
        b->cap = keep;
}

int
buf_msgpack_write(void *data, const char *p, size_t n)
{
        return buf_append(data, p, n) == 0 ? 0 : -1;
}
