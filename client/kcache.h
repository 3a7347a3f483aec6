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
 * hello, stats, get, mget, exists, ttl, hget, hgetall) that fail because the
 * connection broke are retried once on a new connection within the same
 * deadline; writes (get_or_set, fill and release included) are never retried.
 * One call has a longer deadline: kcache_get_or_set_begin() (see there).
 *
 * Return codes: KCACHE_OK (0), KCACHE_MISS (1, get and hget only), KCACHE_LEASE
 * (2, get_or_set_begin only), or a KCACHE_E_* (negative). kcache_strerror()
 * gives a one-line detail for the handle's last error, valid until the next
 * call on that handle.
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
 * Output arguments are written only on KCACHE_OK (and KCACHE_MISS for get and
 * hget, KCACHE_LEASE for get_or_set_begin).
 *
 * Connection details. A connection that kcached closed while it was idle (a
 * restart) is found when the next request cannot be sent at all; since not a
 * byte of it went out, that request goes again on a new connection whatever
 * the method: nothing can be applied twice. More than 16 abandoned replies
 * outstanding make the next call reconnect, so nothing grows without bound. Replies are framed with
 * hard limits (256 MiB, 4M objects, nesting 32): a reply above them is KCACHE_E_PROTOCOL.
 *
 * Memory: values returned by the library are malloc()ed and owned by the
 * caller; release them with free() (or kcache_values_free() for arrays,
 * kcache_hash_free() for kcache_hgetall()'s result).
 *
 * Options. The functions named *_ex, the hash, lease and invalidation calls
 * take a struct kcache_call_opts (NULL: no options). Each call sends only the
 * options that are set AND that its method accepts (the options column of
 * proto/PROTOCOL.md); the others are ignored, so one struct can serve a get and
 * a set of the same namespace. The functions without _ex are the same calls
 * without options and put exactly the same bytes on the wire as before.
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
        KCACHE_MISS = 1,              /* get, hget: the key does not exist */
        KCACHE_LEASE = 2,             /* get_or_set_begin: the caller holds a lease */
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
        KCACHE_E_LEASE_INVALID = -14, /* kcached: LEASE_INVALID (409), fill refused */
        KCACHE_E_LOADER = -15,        /* kcache_get_or_set(): the loader failed */
};

struct kcache;

struct kcache_options {
        int timeout_ms;          /* deadline of every call, connecting included; <= 0: default */
        const char *socket_path; /* NULL: $KCACHE_SOCKET, else KCACHE_DEFAULT_SOCKET; copied */
};

/*
 * Per-call options (see "Options" above). Zero-initialise it, then set what is
 * wanted: a NULL pointer or a 0 number means "not set". Pointers are borrowed
 * for the duration of the call only. Negative numbers, ttl_s with ttl_ms,
 * stale_ttl_s with stale_ttl_ms, a NULL pointer with a non-zero length and a
 * NULL tag are KCACHE_E_ARG (nothing sent); kcached checks the rest (ranges,
 * lengths) and answers KCACHE_E_BAD_REQUEST or KCACHE_E_TOO_LARGE.
 */
struct kcache_call_opts {
        const char *ns;     /* namespace ("ns"); "" is sent as is */
        const void *schema; /* schema tag bytes ("schema", at most 255); sent when non-NULL */
        size_t schema_len;
        int64_t ttl_s;           /* expiry in seconds ("ttl"); 0: kcached's default_ttl */
        int64_t ttl_ms;          /* expiry in milliseconds ("ttl_ms", at most 2^31-1) */
        int64_t stale_ttl_s;     /* stale window after the ttl, seconds ("stale_ttl") */
        int64_t stale_ttl_ms;    /* the same in milliseconds ("stale_ttl_ms") */
        const char *const *tags; /* n_tags tags ("tags"), for kcache_invalidate_tags() */
        size_t n_tags;
        const char *consistency; /* reads: "primary" for read-your-writes ("consistency") */
        const void *field;       /* get_or_set, fill, release: a hash field ("field"); */
        size_t field_len;        /*   sent when non-NULL */
        int64_t lease_ms;        /* get_or_set: lease length ("lease_ms"); 0: lease_ttl_ms */
        int64_t wait_ms;         /* get_or_set: longest wait for another loader ("wait_ms") */
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

/* --- the calls above, with options --------------------------------------- */

/* kcache_get() with options: ns, schema (a value stored with another schema
 * tag is a miss), consistency. */
KCACHE_API int kcache_get_ex(struct kcache *kc, const void *key, size_t klen,
                             const struct kcache_call_opts *o, void **val, size_t *len);
/* kcache_set() with options: ttl_s or ttl_ms, stale_ttl_s or stale_ttl_ms, ns,
 * schema, tags. Never retried. */
KCACHE_API int kcache_set_ex(struct kcache *kc, const void *key, size_t klen, const void *val,
                             size_t len, const struct kcache_call_opts *o);
/* kcache_del() with options: ns. */
KCACHE_API int kcache_del_ex(struct kcache *kc, size_t n, const void *const *keys,
                             const size_t *klens, const struct kcache_call_opts *o,
                             int64_t *removed);
/* kcache_mget() with options: ns, schema, consistency. */
KCACHE_API int kcache_mget_ex(struct kcache *kc, size_t n, const void *const *keys,
                              const size_t *klens, const struct kcache_call_opts *o,
                              struct kcache_value *vals);
/* kcache_mset() with options: the ttls, ns, schema, tags (every key is
 * recorded under every tag). */
KCACHE_API int kcache_mset_ex(struct kcache *kc, size_t n, const void *const *keys,
                              const size_t *klens, const void *const *vals, const size_t *vlens,
                              const struct kcache_call_opts *o);
/* kcache_exists() with options: ns, consistency. */
KCACHE_API int kcache_exists_ex(struct kcache *kc, size_t n, const void *const *keys,
                                const size_t *klens, const struct kcache_call_opts *o,
                                int64_t *count);
/* kcache_ttl() with options: ns, consistency. *ttl_s is in seconds. */
KCACHE_API int kcache_ttl_ex(struct kcache *kc, const void *key, size_t klen,
                             const struct kcache_call_opts *o, int64_t *ttl_s);
/* kcache_expire() with options: ns. */
KCACHE_API int kcache_expire_ex(struct kcache *kc, const void *key, size_t klen, int64_t seconds,
                                const struct kcache_call_opts *o, int *existed);

/* --- hashes (one Redis hash per key; every field an envelope) ------------- */

/* Hit: KCACHE_OK with *val (malloc()ed, NUL-terminated, not counted in *len).
 * Miss (no key, no field, another schema tag): KCACHE_MISS with *val = NULL,
 * *len = 0. Options: ns, schema, consistency. */
KCACHE_API int kcache_hget(struct kcache *kc, const void *key, size_t klen, const void *field,
                           size_t flen, const struct kcache_call_opts *o, void **val, size_t *len);
/* Stores n fields of one hash at once. Options: ns, schema, ttl_s or ttl_ms
 * (the expiry of the whole hash). n = 0 is KCACHE_OK without a round trip.
 * Never retried. */
KCACHE_API int kcache_hset(struct kcache *kc, const void *key, size_t klen, size_t n,
                           const void *const *fields, const size_t *flens, const void *const *vals,
                           const size_t *vlens, const struct kcache_call_opts *o);
/* Deletes n fields; KCACHE_OK with *removed (may be NULL) = how many existed.
 * Options: ns. n = 0 is KCACHE_OK with *removed = 0 without a round trip.
 * Never retried. */
KCACHE_API int kcache_hdel(struct kcache *kc, const void *key, size_t klen, size_t n,
                           const void *const *fields, const size_t *flens,
                           const struct kcache_call_opts *o, int64_t *removed);
/* KCACHE_OK with *n fields: (*fields)[i] is the name and (*values)[i] the
 * value of field i, each malloc()ed and NUL-terminated like kcache_get()'s; in
 * kcached's order. A missing key is KCACHE_OK with *n = 0 and both arrays
 * NULL. Fields stored with another schema tag, or corrupt, are left out.
 * Release the result with kcache_hash_free(). Options: ns, schema, consistency. */
KCACHE_API int kcache_hgetall(struct kcache *kc, const void *key, size_t klen,
                              const struct kcache_call_opts *o, struct kcache_value **fields,
                              struct kcache_value **values, size_t *n);
/* Frees what kcache_hgetall() returned: the data and both arrays. NULL arrays
 * are accepted. */
KCACHE_API void kcache_hash_free(struct kcache_value *fields, struct kcache_value *values,
                                 size_t n);

/* --- invalidation (writes, never retried) -------------------------------- */

/* Deletes n keys (and revokes their leases); KCACHE_OK with *deleted (may be
 * NULL) = how many existed. Options: ns. n = 0 is KCACHE_OK without a round
 * trip. */
KCACHE_API int kcache_invalidate_keys(struct kcache *kc, size_t n, const void *const *keys,
                                      const size_t *klens, const struct kcache_call_opts *o,
                                      int64_t *deleted);
/* Deletes every key matching the Redis glob pattern (within o->ns when set),
 * and revokes every lease granted before; KCACHE_OK with *deleted (may be
 * NULL). kcached SCANs step by step: on a big keyspace give the handle a
 * deadline to match. */
KCACHE_API int kcache_invalidate_pattern(struct kcache *kc, const char *pattern,
                                         const struct kcache_call_opts *o, int64_t *deleted);
/* Deletes every key recorded under any of the n tags (set/mset/fill with
 * tags); KCACHE_OK with *deleted (may be NULL). n = 0 is KCACHE_OK without a
 * round trip. */
KCACHE_API int kcache_invalidate_tags(struct kcache *kc, size_t n, const char *const *tags,
                                      int64_t *deleted);
/* Flushes a namespace in O(1) by moving it to a new generation (old keys
 * expire by their ttl); KCACHE_OK with *generation (may be NULL), the new one. */
KCACHE_API int kcache_invalidate_namespace(struct kcache *kc, const char *ns, int64_t *generation);

/* --- get_or_set: one loader per key, the others wait ---------------------- */

/* kcached's default lease_ttl_ms: how long get_or_set waits when wait_ms is
 * not set, for the deadline below. */
#define KCACHE_GET_OR_SET_WAIT_MS 5000

/*
 * Asks for key's value, or for the right to load it. Options: ns, schema,
 * field, lease_ms, wait_ms. Outcomes:
 *   KCACHE_OK     a value: *val (malloc()ed, NUL-terminated, not counted in
 *                 *len), *token = NULL, *is_stale = 1 if the value is past
 *                 its ttl (served from its stale window), else 0
 *   KCACHE_LEASE  the caller holds the lease: *token (a malloc()ed string)
 *                 must be passed to kcache_fill() or kcache_release() soon,
 *                 within lease_ms; then free() it. *is_stale = 1 with *val a
 *                 stale value the caller may use meanwhile, else *is_stale = 0
 *                 and *val = NULL, *len = 0
 * Another caller's lease on the key makes kcached wait (up to wait_ms) for
 * its fill, and answer with the filled value, or with the lease if the holder
 * gave it up. Because of that wait, the deadline of this call is the larger
 * of the handle's timeout and wait_ms + 1000 ms (wait_ms not set: assumed
 * KCACHE_GET_OR_SET_WAIT_MS; if kcached's lease_ttl_ms is configured higher,
 * set wait_ms). When that deadline passes the connection is closed rather
 * than kept for the late reply, so that a lease kcached grants meanwhile goes
 * at once to the next waiter instead of blocking the key until it expires.
 * The lease also ends when the connection does: fill and release go on the
 * same handle. is_stale may be NULL. Never retried.
 */
KCACHE_API int kcache_get_or_set_begin(struct kcache *kc, const void *key, size_t klen,
                                       const struct kcache_call_opts *o, void **val, size_t *len,
                                       char **token, int *is_stale);
/*
 * Stores the value loaded under the lease token and wakes the waiters.
 * Options: ns, schema, ttl_s or ttl_ms, stale_ttl_s or stale_ttl_ms, field,
 * tags (pass the same ns/field as to the begin). KCACHE_OK, or
 * KCACHE_E_LEASE_INVALID when the lease expired, was released, or was revoked
 * by a write or invalidation of the key since it was granted: nothing was
 * written. Never retried.
 */
KCACHE_API int kcache_fill(struct kcache *kc, const void *key, size_t klen, const char *token,
                           const void *val, size_t len, const struct kcache_call_opts *o);
/* Gives the lease up (the loader failed): one waiter gets it. Options: ns,
 * field. KCACHE_OK with *was_held (may be NULL) = 1 if the lease was still
 * ours, 0 if it had already ended. Never retried. */
KCACHE_API int kcache_release(struct kcache *kc, const void *key, size_t klen, const char *token,
                              const struct kcache_call_opts *o, int *was_held);

/*
 * Loads a value on a cache miss: returns 0 with *val (malloc()ed; NULL is
 * allowed when *len is 0) and *len, ownership passing to the library; any
 * other return is a failure (write nothing then). It runs while the caller
 * holds the lease, so it should finish within lease_ms. It may use kc.
 */
typedef int (*kcache_loader_fn)(void *priv, const void *key, size_t klen, void **val, size_t *len);

/*
 * kcache_get_or_set_begin(), and on a lease: calls loader(loader_priv, key,
 * klen, ...), kcache_fill()s its value and returns it; if the loader fails,
 * kcache_release()s the lease and returns KCACHE_E_LOADER (the detail holds
 * the loader's return value). A stale value that came with the lease is
 * dropped: the loader's value is returned. KCACHE_OK with *val (malloc()ed,
 * NUL-terminated, not counted in *len) whether it was cached, waited for or
 * loaded; once the loader succeeded the result is KCACHE_OK even if the fill
 * fails (LEASE_INVALID after a concurrent write, TIMEOUT, ...): the value is
 * then simply not cached. Errors of the begin are returned as they are (the
 * loader is not called). Deadlines: the begin's as in
 * kcache_get_or_set_begin(), fill and release the handle's.
 */
KCACHE_API int kcache_get_or_set(struct kcache *kc, const void *key, size_t klen,
                                 const struct kcache_call_opts *o, kcache_loader_fn loader,
                                 void *loader_priv, void **val, size_t *len);

/* --- anything else ------------------------------------------------------- */

/*
 * Sends method with params_msgpack (n bytes holding exactly one msgpack array:
 * the positional parameters and the options map, packed by the caller) and
 * returns the packed result: KCACHE_OK with *result_msgpack (malloc()ed, *rn
 * bytes, one msgpack object). For methods this library has no function for
 * (stats) or does not know yet. Retried like a named call when the method is
 * one this library knows as a read; an unknown method is never retried.
 * KCACHE_E_ARG when method is NULL or empty or the params are not one whole
 * msgpack array. The deadline is the handle's, for every method.
 */
KCACHE_API int kcache_call_raw(struct kcache *kc, const char *method, const void *params_msgpack,
                               size_t n, void **result_msgpack, size_t *rn);

#ifdef __cplusplus
}
#endif
#endif
