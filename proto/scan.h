/* SPDX-License-Identifier: MIT */
/*
 * scan: the bounded msgpack framer. Finds where one msgpack object ends in a
 * byte stream WITHOUT allocating, so that only complete, checked frames ever
 * reach msgpack-c's unpacker (which allocates for declared array/map counts
 * before the elements arrive: `dd 20 00 00 00` would cost 16 GiB).
 *
 * The scanner is resumable: feed it the same growing buffer again and it goes
 * on from where it stopped, so a frame that arrives in many reads is walked
 * once, not once per read. Limits are checked as soon as a header is seen:
 *   - a str/bin/ext length, or a container count (maps count twice), that
 *     cannot fit in what max_bytes leaves of the frame -> SCAN_E_TOO_LARGE
 *   - more than max_elems objects announced in the frame (the top-level
 *     object plus every container's declared count)     -> SCAN_E_TOO_LARGE
 *   - containers nested deeper than max_nesting          -> SCAN_E_TOO_DEEP
 *   - the byte 0xc1 (never used by msgpack)              -> SCAN_E_INVALID
 * The top-level object itself has depth 0; [[x]] has depth 2.
 */
#ifndef KCACHE_SCAN_H
#define KCACHE_SCAN_H

#include <stddef.h>
#include <stdint.h>

#define SCAN_MAX_NESTING 64

enum {
        SCAN_OK = 0,       /* a complete frame of *frame_len bytes */
        SCAN_E_PARTIAL,    /* need more bytes; call again with the same buffer grown */
        SCAN_E_TOO_LARGE,  /* a declared size or count exceeds the limits */
        SCAN_E_TOO_DEEP,   /* nesting exceeds max_nesting */
        SCAN_E_INVALID,    /* not msgpack */
};

struct scan_limits {
        size_t max_bytes;     /* whole frame, header included */
        size_t max_elems;     /* objects in the frame, containers included */
        unsigned max_nesting; /* <= 32: msgpack-c's decoder refuses deeper frames */
};

struct scan {
        size_t pos;      /* bytes of the current frame already walked */
        size_t n_elems;  /* objects announced so far (see max_elems) */
        unsigned depth;  /* open containers */
        uint64_t left[SCAN_MAX_NESTING + 1]; /* objects still due in each open container */
};

void scan_reset(struct scan *s);

/*
 * Walks p[0..len), which must start at the frame's first byte and hold at
 * least the bytes of earlier calls. On SCAN_OK writes *frame_len and resets
 * the scanner for the next frame. Any error is final for this stream.
 */
int scan_feed(struct scan *s, const uint8_t *p, size_t len, const struct scan_limits *lim,
              size_t *frame_len);

/*
 * Best effort for error replies on streams we are about to close: if p holds
 * the start of a request [0, msgid, ...] with a uint32 msgid, writes it and
 * returns 0; else -1.
 */
int scan_peek_msgid(const uint8_t *p, size_t len, uint32_t *msgid);

const char *scan_strerror(int code);

#endif
