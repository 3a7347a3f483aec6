/* SPDX-License-Identifier: MIT */
/*
 * getorset: libkcache's kcache_get_or_set() with a loader.
 *
 * For each KEY, prints "KEY = VALUE": the cached value if there is one,
 * else the loader's, which kcached then stores (ttl 60 s, namespace
 * "examples"). While one process loads a key, every other caller of the same
 * key waits for that value instead of loading it too (a lease). The loader
 * reports each run on stderr ("loading KEY"), so running the program twice
 * shows the second run answered from the cache.
 *
 *   cc -I client examples/c/getorset.c -L build/client -lkcache -o getorset
 *   ./getorset -s /run/kcache/kcached.sock user:42 user:43
 *
 * Exit status: 0 ok, 1 usage, 2 a kcache error (printed with its code).
 */
/* getopt() and getpid() are POSIX; -std=c11 alone hides them. */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kcache.h"

/* What the loader needs besides the key: here, how many times it ran. */
struct loader_ctx {
        int n_loads;
};

/*
 * The expensive computation a cache saves: here it only formats a string.
 * It hands a malloc()ed buffer to the library (which frees it) and returns 0;
 * any other return makes kcache_get_or_set() release the lease and fail with
 * KCACHE_E_LOADER, so that a waiter gets the lease and tries itself.
 */
static int
load_value(void *priv, const void *key, size_t klen, void **val, size_t *len)
{
        struct loader_ctx *ctx = priv;
        int n;
        char *buf;

        ctx->n_loads++;
        fprintf(stderr, "loading %.*s\n", (int)klen, (const char *)key);
        n = snprintf(NULL, 0, "value of %.*s, computed by pid %ld", (int)klen, (const char *)key,
                     (long)getpid());
        if (n < 0)
                return -1;
        buf = malloc((size_t)n + 1);
        if (buf == NULL)
                return -1;
        snprintf(buf, (size_t)n + 1, "value of %.*s, computed by pid %ld", (int)klen,
                 (const char *)key, (long)getpid());
        *val = buf;
        *len = (size_t)n;
        return 0;
}

static void
usage(FILE *f)
{
        fprintf(f,
                "usage: getorset [-s SOCKET] [-t TIMEOUT_MS] KEY...\n"
                "  -s SOCKET      kcached's socket (default: $KCACHE_SOCKET, else %s)\n"
                "  -t TIMEOUT_MS  deadline of each call (default %d)\n",
                KCACHE_DEFAULT_SOCKET, KCACHE_DEFAULT_TIMEOUT_MS);
}

int
main(int argc, char **argv)
{
        struct kcache_options o = {0};
        struct kcache_call_opts co = {0};
        struct loader_ctx ctx = {0};
        struct kcache *kc;
        int opt, rc, status = 0;

        while ((opt = getopt(argc, argv, "s:t:h")) != -1) {
                switch (opt) {
                case 's':
                        o.socket_path = optarg;
                        break;
                case 't':
                        o.timeout_ms = atoi(optarg);
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 1;
                }
        }
        if (optind >= argc) {
                usage(stderr);
                return 1;
        }
        rc = kcache_new(&kc, &o);
        if (rc != KCACHE_OK) {
                fprintf(stderr, "getorset: kcache_new: %s\n", kcache_code_name(rc));
                return 2;
        }
        co.ns = "examples";
        co.ttl_s = 60;
        for (int i = optind; i < argc; i++) {
                void *val;
                size_t len;

                rc = kcache_get_or_set(kc, argv[i], strlen(argv[i]), &co, load_value, &ctx, &val,
                                       &len);
                if (rc != KCACHE_OK) {
                        fprintf(stderr, "getorset: %s: %s: %s\n", argv[i], kcache_code_name(rc),
                                kcache_strerror(kc));
                        status = 2;
                        continue;
                }
                printf("%s = %.*s\n", argv[i], (int)len, (const char *)val);
                free(val);
        }
        fprintf(stderr, "loader ran %d time(s)\n", ctx.n_loads);
        kcache_free(kc);
        return status;
}
