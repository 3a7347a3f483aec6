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

#define KCACHE_DEFAULT_SOCKET "/run/kcache/kcached.sock"
#define KCACHE_DEFAULT_TIMEOUT_MS 1000

enum kcache_code {
        KCACHE_OK = 0,
        KCACHE_MISS = 1,              /* get: the key does not exist */
        KCACHE_E_ARG = -1,            /* bad argument from the caller */
        KCACHE_E_NOMEM = -2,          /* out of memory */
        KCACHE_E_CONNECT = -3,        /* kcached is not reachable */
        KCACHE_E_IO = -4,             /* the connection broke during the call */
        KCACHE_E_PROTOCOL = -5,       /* kcached sent something this library does not understand */
        KCACHE_E_TIMEOUT = -6,        /* the deadline passed (here, or kcached's TIMEOUT: 504) */
        KCACHE_E_BAD_REQUEST = -7,    /* kcached: BAD_REQUEST (400) */
        KCACHE_E_NO_METHOD = -8,      /* kcached: NO_METHOD (501) */
        KCACHE_E_TOO_LARGE = -9,      /* kcached: TOO_LARGE (413) */
        KCACHE_E_UNAVAILABLE = -10,   /* kcached: UNAVAILABLE, no Redis reachable (503) */
        KCACHE_E_BACKEND = -11,       /* kcached: BACKEND, Redis answered an error (502) */
        KCACHE_E_INTERNAL = -12,      /* kcached: INTERNAL (500) */
        KCACHE_E_SERVER = -13,        /* kcached: an error code newer than this library */
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
 * the next hello or kcache_free(). */
struct kcache_server_info {
        const char *server;
        const char *version;
        int protocol;
        int64_t max_request_bytes;
        int64_t max_batch_keys;
};

/* Creates a handle; does not connect. opts may be NULL. KCACHE_OK or
 * KCACHE_E_NOMEM/KCACHE_E_ARG. *out is written only on success. */
int kcache_new(struct kcache **out, const struct kcache_options *opts);
/* Closes and frees; NULL is accepted. */
void kcache_free(struct kcache *kc);

/* Changes the deadline of later calls. */
void kcache_set_timeout(struct kcache *kc, int timeout_ms);

/* Detail of the handle's last error ("" after success). */
const char *kcache_strerror(const struct kcache *kc);
/* Stable name of a code: "OK", "MISS", "TIMEOUT", "UNAVAILABLE", ... */
const char *kcache_code_name(int code);

int kcache_ping(struct kcache *kc);
int kcache_hello(struct kcache *kc, struct kcache_server_info *info);

/* Hit: KCACHE_OK with *val (malloc()ed, NUL-terminated for convenience, not
 * counted in *len) and *len. Miss: KCACHE_MISS with *val = NULL. */
int kcache_get(struct kcache *kc, const void *key, size_t klen, void **val, size_t *len);
/* ttl_s = 0: the daemon's default_ttl. */
int kcache_set(struct kcache *kc, const void *key, size_t klen, const void *val, size_t len,
               int64_t ttl_s);
int kcache_del(struct kcache *kc, size_t n, const void *const *keys, const size_t *klens,
               int64_t *removed);
/* vals must have n entries; on KCACHE_OK each is filled (data NULL on miss). */
int kcache_mget(struct kcache *kc, size_t n, const void *const *keys, const size_t *klens,
                struct kcache_value *vals);
int kcache_mset(struct kcache *kc, size_t n, const void *const *keys, const size_t *klens,
                const void *const *vals, const size_t *vlens, int64_t ttl_s);
int kcache_exists(struct kcache *kc, size_t n, const void *const *keys, const size_t *klens,
                  int64_t *count);
/* *ttl_s: seconds left, -1 no expiry, -2 missing. */
int kcache_ttl(struct kcache *kc, const void *key, size_t klen, int64_t *ttl_s);
/* *existed: 1 if the key existed (and now expires), 0 if not. */
int kcache_expire(struct kcache *kc, const void *key, size_t klen, int64_t seconds, int *existed);

/* Frees the data of n values (not the array). */
void kcache_values_free(struct kcache_value *vals, size_t n);

#ifdef __cplusplus
}
#endif
#endif
