/* SPDX-License-Identifier: MIT */
/*
 * buf: a growable byte buffer with a read cursor. Owns its storage.
 *
 * Valid bytes are data[off .. len). Appends grow the tail; consumers advance
 * the cursor with buf_consume(). When the cursor catches up with the tail both
 * reset to 0, so a buffer that is drained regularly never moves memory.
 * buf_compact() moves the unread bytes to the front, for callers about to
 * read() into the tail.
 */
#ifndef KCACHE_BUF_H
#define KCACHE_BUF_H

#include <stddef.h>
#include <stdint.h>

struct buf {
        uint8_t *data;
        size_t off;
        size_t len;
        size_t cap;
};

#define BUF_INIT {NULL, 0, 0, 0}

void buf_init(struct buf *b);
void buf_deinit(struct buf *b);

/* Ensures room for n more bytes after len. 0, or -ENOMEM. */
int buf_reserve(struct buf *b, size_t n);
/* Appends n bytes. 0, or -ENOMEM (the buffer is unchanged then). */
int buf_append(struct buf *b, const void *p, size_t n);
/* Drops n unread bytes from the front (n <= buf_size()). */
void buf_consume(struct buf *b, size_t n);
/* Moves unread bytes to offset 0. */
void buf_compact(struct buf *b);
/* Forgets all bytes; keeps the storage. */
void buf_clear(struct buf *b);
/* Frees storage above keep bytes when the buffer is empty (idle connections). */
void buf_shrink(struct buf *b, size_t keep);

static inline size_t
buf_size(const struct buf *b)
{
        return b->len - b->off;
}

static inline uint8_t *
buf_head(const struct buf *b)
{
        return b->data + b->off;
}

/* msgpack_packer write callback: data is a struct buf *. 0, or -1 on ENOMEM. */
int buf_msgpack_write(void *data, const char *p, size_t n);

#endif
