/* SPDX-License-Identifier: MIT */
/*
 * libkcache: the C client for kcached, the local cache sidecar.
 *
 * One handle talks to one kcached over its Unix socket. A handle is not
 * thread-safe: use one per thread. The library has no global state, never
 * prints, never aborts and never raises a signal in the application (sends use
 * MSG_NOSIGNAL).
 *
 * Every call is bounded by the handle's deadline (kcache_options.timeout_ms,
 * default 1000 ms), connecting included. When it passes the call returns
 * KCACHE_E_TIMEOUT; a reply that arrives later is recognised by its msgid and
 * discarded. The connection is made lazily on the first call and remade on a
 * later call after kcached restarted, or after fork() (the handle notices the
 * pid change and never shares the parent's socket). Idempotent reads (ping,
 * get, mget, exists, ttl, hello) that fail because the connection broke are
 * retried once on a new connection within the same deadline; writes are never
 * retried.
 *
 * Return codes: KCACHE_OK (0), KCACHE_MISS (1, get only), or a KCACHE_E_*
 * (negative). kcache_strerror() gives a one-line detail for the handle's last
 * error, valid until the next call on that handle.
 *
 * Every call below that talks to kcached can return, besides what its own
 * comment lists:
 *   KCACHE_E_ARG        a NULL handle or pointer, a length above 2^32-1; nothing sent
 *   KCACHE_E_NOMEM      out of memory
 *   KCACHE_E_CONNECT    connect() failed (no socket, refused); the detail names the path
 *   KCACHE_E_IO         the connection broke during the call (closed; the next call reconnects)
 *   KCACHE_E_PROTOCOL   kcached's reply was not understood (connection closed)
 *   KCACHE_E_TIMEOUT    the deadline passed; the connection is kept when the request was
 *                       sent whole, and the late reply is discarded by a later call
 *   KCACHE_E_BAD_REQUEST .. KCACHE_E_SERVER  kcached's error reply; the detail is its message
 * Output arguments are written only on KCACHE_OK (and KCACHE_MISS for get).
 *
 * Connection details. A connection that kcached closed while it was idle (a
 * restart) is found when the next request cannot be sent at all; since not a
 * byte of it went out, that request goes again on a new connection whatever
 * the method: nothing can be applied twice. More than 16 abandoned replies
 * outstanding make the next call reconnect, so nothing grows without bound. Replies are framed with
 * hard limits (256 MiB, 4M objects, nesting 32): a reply above them is KCACHE_E_PROTOCOL.
 *
 * Memory: values returned by the library are malloc()ed and owned by the
 * caller; release them with free() (or kcache_values_free() for arrays).
 */
#ifndef KCACHE_H
#define KCACHE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Marks the exported API: the library is built with hidden visibility. */
#if defined(__GNUC__) || defined(__clang__)
#define KCACHE_API __attribute__((visibility("default")))
#else
#define KCACHE_API
#endif

#define KCACHE_DEFAULT_SOCKET     "/run/kcache/kcached.sock"
#define KCACHE_DEFAULT_TIMEOUT_MS 1000

enum kcache_code {
        KCACHE_OK = 0,
        KCACHE_MISS = 1,            /* get: the key does not exist */
        KCACHE_E_ARG = -1,          /* bad argument from the caller */
        KCACHE_E_NOMEM = -2,        /* out of memory */
        KCACHE_E_CONNECT = -3,      /* kcached is not reachable */
        KCACHE_E_IO = -4,           /* the connection broke during the call */
        KCACHE_E_PROTOCOL = -5,     /* kcached sent something this library does not understand */
        KCACHE_E_TIMEOUT = -6,      /* the deadline passed (here, or kcached's TIMEOUT: 504) */
        KCACHE_E_BAD_REQUEST = -7,  /* kcached: BAD_REQUEST (400) */
        KCACHE_E_NO_METHOD = -8,    /* kcached: NO_METHOD (501) */
        KCACHE_E_TOO_LARGE = -9,    /* kcached: TOO_LARGE (413) */
        KCACHE_E_UNAVAILABLE = -10, /* kcached: UNAVAILABLE, no Redis reachable (503) */
        KCACHE_E_BACKEND = -11,     /* kcached: BACKEND, Redis answered an error (502) */
        KCACHE_E_INTERNAL = -12,    /* kcached: INTERNAL (500) */
        KCACHE_E_SERVER = -13,      /* kcached: an error code newer than this library */
};

struct kcache;

struct kcache_options {
        int timeout_ms;          /* deadline of every call, connecting included; <= 0: default */
        const char *socket_path; /* NULL: $KCACHE_SOCKET, else KCACHE_DEFAULT_SOCKET; copied */
};

/* A value in a batch result: data is NULL for a miss. */
struct kcache_value {
        void *data; /* malloc()ed, owned by the caller */
        size_t len;
};

/* Server facts from `hello`. Strings are owned by the handle, valid until
 * the next successful kcache_hello() or kcache_free(). A limit kcached did not
 * report is 0. */
struct kcache_server_info {
        const char *server;
        const char *version;
        int protocol;
        int64_t max_request_bytes;
        int64_t max_batch_keys;
};

/*
 * Creates a handle; does not connect. opts may be NULL. The socket path is
 * opts->socket_path, else $KCACHE_SOCKET (read now, not per call), else
 * KCACHE_DEFAULT_SOCKET. Returns KCACHE_OK, KCACHE_E_NOMEM, or KCACHE_E_ARG
 * (out NULL, or the path empty or too long for a Unix socket). *out is written
 * only on success; release it with kcache_free().
 */
KCACHE_API int kcache_new(struct kcache **out, const struct kcache_options *opts);
/* Closes the connection (without sending anything) and frees the handle and
 * every string it owns. NULL is accepted. */
KCACHE_API void kcache_free(struct kcache *kc);

/* Changes the deadline of later calls; <= 0 restores the default. */
KCACHE_API void kcache_set_timeout(struct kcache *kc, int timeout_ms);

/* Detail of the handle's last error, "" after a success. Owned by the handle,
 * valid until its next call. Never NULL (a NULL kc gives a fixed string). */
KCACHE_API const char *kcache_strerror(const struct kcache *kc);
/* Stable name of a code: "OK", "MISS", "TIMEOUT", "UNAVAILABLE", ...; "UNKNOWN"
 * for a value outside enum kcache_code. A static string. */
KCACHE_API const char *kcache_code_name(int code);

/* KCACHE_OK when kcached answered "pong". */
KCACHE_API int kcache_ping(struct kcache *kc);
/* KCACHE_OK with *info filled (strings owned by the handle, see struct
 * kcache_server_info). info may be NULL: the facts are still kept for
 * kcache_server_limit(). */
KCACHE_API int kcache_hello(struct kcache *kc, struct kcache_server_info *info);
/*
 * The i-th entry (from 0, in kcached's order) of the "limits" map of the last
 * successful kcache_hello(), for tools that print them all: KCACHE_OK with
 * *name (owned by the handle, valid until the next successful hello or
 * kcache_free()) and *value; KCACHE_E_ARG when i is past the end (or no hello
 * succeeded yet). Entries whose value is not an integer are left out. Does not
 * talk to kcached and does not change kcache_strerror().
 */
KCACHE_API int kcache_server_limit(const struct kcache *kc, size_t i, const char **name,
                                   int64_t *value);

/* Hit: KCACHE_OK with *val (malloc()ed, NUL-terminated for convenience, not
 * counted in *len) and *len. Miss: KCACHE_MISS with *val = NULL, *len = 0. */
KCACHE_API int kcache_get(struct kcache *kc, const void *key, size_t klen, void **val, size_t *len);
/* Stores the value. ttl_s = 0: the daemon's default_ttl; ttl_s < 0 is
 * KCACHE_E_ARG. KCACHE_OK once kcached confirmed it. Never retried. */
KCACHE_API int kcache_set(struct kcache *kc, const void *key, size_t klen, const void *val,
                          size_t len, int64_t ttl_s);
/* Deletes n keys; KCACHE_OK with *removed (may be NULL) = how many existed.
 * n = 0 is KCACHE_OK with *removed = 0 without a round trip. Never retried. */
KCACHE_API int kcache_del(struct kcache *kc, size_t n, const void *const *keys, const size_t *klens,
                          int64_t *removed);
/* vals must have n entries; on KCACHE_OK each is filled (data NULL on miss;
 * a hit is malloc()ed and NUL-terminated like kcache_get()'s), release them
 * with kcache_values_free(). On any error vals is left untouched. n = 0 is
 * KCACHE_OK without a round trip. */
KCACHE_API int kcache_mget(struct kcache *kc, size_t n, const void *const *keys,
                           const size_t *klens, struct kcache_value *vals);
/* Stores n key/value pairs with one ttl (0: the default, < 0: KCACHE_E_ARG).
 * n = 0 is KCACHE_OK without a round trip. Never retried. */
KCACHE_API int kcache_mset(struct kcache *kc, size_t n, const void *const *keys,
                           const size_t *klens, const void *const *vals, const size_t *vlens,
                           int64_t ttl_s);
/* KCACHE_OK with *count (may be NULL) = how many of the n keys exist (a key
 * named twice counts twice). n = 0 is KCACHE_OK with *count = 0. */
KCACHE_API int kcache_exists(struct kcache *kc, size_t n, const void *const *keys,
                             const size_t *klens, int64_t *count);
/* KCACHE_OK with *ttl_s: seconds left, -1 no expiry, -2 missing. */
KCACHE_API int kcache_ttl(struct kcache *kc, const void *key, size_t klen, int64_t *ttl_s);
/* KCACHE_OK with *existed (may be NULL): 1 if the key existed (and now
 * expires), 0 if not. kcached validates seconds. Never retried. */
KCACHE_API int kcache_expire(struct kcache *kc, const void *key, size_t klen, int64_t seconds,
                             int *existed);

/* Frees the data of n values (not the array) and sets each to NULL/0. vals
 * may be NULL when n is 0. */
KCACHE_API void kcache_values_free(struct kcache_value *vals, size_t n);

#ifdef __cplusplus
}
#endif
#endif
