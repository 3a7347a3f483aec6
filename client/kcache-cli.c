/* SPDX-License-Identifier: MIT */
/*
 * kcache: the command-line client of kcached, a thin shell over libkcache.
 *
 * The commands are one table (name, arguments, help, arity, options,
 * handler) that drives dispatch, argument checks and the usage text. Exit
 * status is the scripting contract: 0 ok, 1 miss (get/hget of a missing key,
 * hgetall of an empty hash, expire of a missing key), 2 error or usage. Errors
 * go to stderr as `kcache: COMMAND: CODE: detail`, values to stdout unchanged.
 * `stats` prints JSON, converted here from kcached's msgpack by a small
 * bounded walker (the CLI does not link msgpack-c itself).
 *
 * `admin` is the one command that does not use libkcache: it sends one line
 * to kcached's admin socket (line protocol, daemon/admin.h) and prints the
 * answer, without the "." line that ends a multi-line one. Its exit status
 * is 0, or 2 for an answer starting "error:"; `admin health` is a probe:
 * 0 ok, 1 degraded, 2 down, 3 could not ask.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kcache-version.h"
#include "kcache.h"

enum { EXIT_OK = 0, EXIT_MISS = 1, EXIT_ERR = 2 };

/* The output of a get-or-set COMMAND is held in memory: bound it. */
#define CLI_LOADER_MAX (64u << 20)
/* kcached's default [admin] socket, where `admin` asks without -a or $KCACHE_ADMIN_SOCKET. */
#define CLI_ADMIN_DEFAULT_SOCKET "/run/kcache/kcached-admin.sock"
/* Nesting of the stats JSON printer; kcached's replies are framed at 32. */
#define CLI_JSON_MAX_DEPTH 64

/* What a command accepts besides its positional arguments. */
enum {
        CLI_O_NS = 1u << 0,     /* the global --ns */
        CLI_O_SCHEMA = 1u << 1, /* the global --schema */
        CLI_O_TTL = 1u << 2,    /* --ttl N, --ttl-ms N */
        CLI_O_STALE = 1u << 3,  /* --stale-ttl N, --stale-ttl-ms N */
        CLI_O_TAG = 1u << 4,    /* --tag T, repeatable */
        CLI_O_LEASE = 1u << 5,  /* --lease-ms N, --wait-ms N */
        CLI_O_EXEC = 1u << 6,   /* "-- COMMAND [ARGS...]" ends the arguments */
        CLI_O_ADMIN = 1u << 7,  /* the admin socket, not libkcache: the handler gets no handle */
};
#define CLI_O_CMD (CLI_O_TTL | CLI_O_STALE | CLI_O_TAG | CLI_O_LEASE | CLI_O_EXEC)

/* Everything parsed besides a command's positional arguments. */
struct cli_ctx {
        struct kcache_call_opts o; /* ns and schema from the global options, the rest per command */
        const char **tags;         /* --tag values, in argv */
        char **exec_argv;          /* get-or-set: COMMAND [ARGS...], NULL-terminated, in argv */
        int timeout_ms;            /* -t for admin (libkcache has its copy); 0: the default */
};

struct cli_cmd {
        const char *name;
        const char *args;
        const char *help;
        int min_args;
        int max_args;   /* -1: no limit */
        int pairs_from; /* > -1: the arguments from this one on come in pairs */
        unsigned opts;  /* CLI_O_* */
        int (*run)(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv,
                   const struct cli_ctx *x);
};

#define CLI_HANDLER(name)                                                                          \
        static int name(struct kcache *, const struct cli_cmd *, int, char **,                     \
                        const struct cli_ctx *)
CLI_HANDLER(cli_ping);
CLI_HANDLER(cli_hello);
CLI_HANDLER(cli_get);
CLI_HANDLER(cli_set);
CLI_HANDLER(cli_del);
CLI_HANDLER(cli_mget);
CLI_HANDLER(cli_mset);
CLI_HANDLER(cli_exists);
CLI_HANDLER(cli_ttl);
CLI_HANDLER(cli_expire);
CLI_HANDLER(cli_hget);
CLI_HANDLER(cli_hset);
CLI_HANDLER(cli_hdel);
CLI_HANDLER(cli_hgetall);
CLI_HANDLER(cli_invalidate);
CLI_HANDLER(cli_stats);
CLI_HANDLER(cli_get_or_set);
CLI_HANDLER(cli_admin);

#define CLI_WRITE_OPTS (CLI_O_NS | CLI_O_SCHEMA | CLI_O_TTL | CLI_O_STALE | CLI_O_TAG)

static const struct cli_cmd cli_cmds[] = {
        {"ping", "", "check that kcached answers; prints \"pong\"", 0, 0, -1, 0, cli_ping},
        {"hello", "", "print server, version, protocol and limits, one \"key: value\" a line", 0, 0,
         -1, 0, cli_hello},
        {"stats", "", "print cache counters (totals, per namespace) as JSON", 0, 0, -1, 0,
         cli_stats},
        {"get", "KEY", "print the value as stored (no newline added); exit 1 on a miss", 1, 1, -1,
         CLI_O_NS | CLI_O_SCHEMA, cli_get},
        {"set", "KEY VALUE [TTL-OPTS] [--tag T]...", "store VALUE (\"-\": read it from stdin)", 2,
         2, -1, CLI_WRITE_OPTS, cli_set},
        {"del", "KEY...", "delete keys; print how many existed", 1, -1, -1, CLI_O_NS, cli_del},
        {"mget", "KEY...",
         "print one line per key: the value, or an empty line on a miss (values\n"
         "                        holding newlines are ambiguous here: use get)",
         1, -1, -1, CLI_O_NS | CLI_O_SCHEMA, cli_mget},
        {"mset", "KEY VALUE [KEY VALUE...] [TTL-OPTS] [--tag T]...",
         "store several values with one ttl", 2, -1, 0, CLI_WRITE_OPTS, cli_mset},
        {"exists", "KEY...", "print how many of the keys exist", 1, -1, -1, CLI_O_NS, cli_exists},
        {"ttl", "KEY", "print the seconds left (-1: no expiry, -2: missing key)", 1, 1, -1,
         CLI_O_NS, cli_ttl},
        {"expire", "KEY SECONDS",
         "set a ttl; print 1 and exit 0 if the key existed, else 0, exit 1", 2, 2, -1, CLI_O_NS,
         cli_expire},
        {"hget", "KEY FIELD", "print a field's value; exit 1 on a miss", 2, 2, -1,
         CLI_O_NS | CLI_O_SCHEMA, cli_hget},
        {"hset", "KEY FIELD VALUE [FIELD VALUE...] [--ttl N | --ttl-ms N]",
         "store fields of a hash", 3, -1, 1, CLI_O_NS | CLI_O_SCHEMA | CLI_O_TTL, cli_hset},
        {"hdel", "KEY FIELD...", "delete fields; print how many existed", 2, -1, -1, CLI_O_NS,
         cli_hdel},
        {"hgetall", "KEY", "print \"FIELD<TAB>VALUE\" lines; exit 1 if there is none", 1, 1, -1,
         CLI_O_NS | CLI_O_SCHEMA, cli_hgetall},
        {"invalidate", "--keys K... | --pattern GLOB | --tags T... | --namespace NS",
         "delete keys, keys matching a glob or keys under\n"
         "                        tags and print how many; or flush a namespace and\n"
         "                        print its new generation. --ns applies to --keys\n"
         "                        and --pattern",
         2, -1, -1, CLI_O_NS, cli_invalidate},
        {"get-or-set", "KEY [OPTS] -- COMMAND [ARGS...]",
         "print the value; on a miss run COMMAND holding\n"
         "                        the key's lease (concurrent callers wait for it),\n"
         "                        store its stdout if it exits 0 and print it, else\n"
         "                        exit 2. OPTS: TTL-OPTS, --tag T, --lease-ms N,\n"
         "                        --wait-ms N",
         1, 1, -1, CLI_WRITE_OPTS | CLI_O_LEASE | CLI_O_EXEC, cli_get_or_set},
        {"admin", "[-a ADMIN_SOCKET] COMMAND [ARGS...]",
         "send one command to kcached's admin socket and\n"
         "                        print the answer (`kcache admin help` lists them;\n"
         "                        JSON indented on a terminal). -a, --admin-socket:\n"
         "                        default $KCACHE_ADMIN_SOCKET, else\n"
         "                        " CLI_ADMIN_DEFAULT_SOCKET,
         1, -1, -1, CLI_O_ADMIN, cli_admin},
};

static void
cli_usage(FILE *f)
{
        fprintf(f,
                "usage: kcache [-s SOCKET] [-t TIMEOUT_MS] [--ns NS] [--schema TAG]\n"
                "              COMMAND [ARGS]\n"
                "       kcache --version | --help\n"
                "\n"
                "options:\n"
                "  -s, --socket PATH     kcached's socket (default: $KCACHE_SOCKET, else %s)\n"
                "  -t, --timeout MS      deadline of the call, connecting included (default %d)\n"
                "      --ns NS           work in namespace NS (get, set, del, mget, mset,\n"
                "                        exists, ttl, expire, h*, invalidate --keys or\n"
                "                        --pattern, get-or-set)\n"
                "      --schema TAG      schema tag: written with values; a read of a value with\n"
                "                        another tag is a miss (get, set, mget, mset, hget, hset,\n"
                "                        hgetall, get-or-set)\n"
                "  -V, --version         print the version and exit\n"
                "  -h, --help            print this help and exit\n"
                "\n"
                "commands:\n",
                KCACHE_DEFAULT_SOCKET, KCACHE_DEFAULT_TIMEOUT_MS);
        for (size_t i = 0; i < sizeof(cli_cmds) / sizeof(cli_cmds[0]); i++) {
                const struct cli_cmd *c = &cli_cmds[i];
                int w = fprintf(f, "  %s%s%s", c->name, c->args[0] ? " " : "", c->args);

                /* the help text starts at column 24, on the next line if need be */
                if (w >= 23)
                        fprintf(f, "\n%24s", "");
                else
                        fprintf(f, "%*s", 24 - w, "");
                fprintf(f, "%s\n", c->help);
        }
        fprintf(f, "\n"
                   "TTL-OPTS: --ttl N (seconds; 0: kcached's default) or --ttl-ms N, and\n"
                   "--stale-ttl N or --stale-ttl-ms N (how long past its ttl get-or-set may\n"
                   "still serve the value while one caller refreshes it). Command options may\n"
                   "appear anywhere after the command; \"--\" ends them, for keys or values that\n"
                   "start with \"-\".\n"
                   "exit status: 0 ok, 1 miss (get, hget, hgetall, expire), 2 error or usage\n"
                   "(admin: an answer starting \"error:\"). admin health [live|ready]: 0 ok,\n"
                   "1 degraded, 2 down, 3 could not ask (no socket, no answer within the\n"
                   "timeout, or a bad argument).\n");
}

__attribute__((format(printf, 1, 2))) static int
cli_usage_error(const char *fmt, ...)
{
        va_list ap;

        fputs("kcache: ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputs("\n", stderr);
        cli_usage(stderr);
        return EXIT_ERR;
}

static int
cli_fail(struct kcache *kc, const struct cli_cmd *cmd, int rc)
{
        const char *detail = kcache_strerror(kc);

        if (detail[0] != '\0')
                fprintf(stderr, "kcache: %s: %s: %s\n", cmd->name, kcache_code_name(rc), detail);
        else
                fprintf(stderr, "kcache: %s: %s\n", cmd->name, kcache_code_name(rc));
        return EXIT_ERR;
}

/* A whole decimal integer in [min, max]. */
static bool
cli_parse_int(const char *s, long long min, long long max, long long *out)
{
        char *end;
        long long v;

        errno = 0;
        v = strtoll(s, &end, 10);
        if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
                return false;
        *out = v;
        return true;
}

/* Reads all of stdin into a malloc()ed buffer. 0, or an errno value. */
static int
cli_read_stdin(char **out, size_t *out_len)
{
        size_t len = 0, cap = 65536;
        char *p = malloc(cap);

        if (p == NULL)
                return ENOMEM;
        for (;;) {
                size_t n;

                if (len == cap) {
                        char *q = cap > SIZE_MAX / 2 ? NULL : realloc(p, cap * 2);

                        if (q == NULL) {
                                free(p);
                                return ENOMEM;
                        }
                        p = q;
                        cap *= 2;
                }
                n = fread(p + len, 1, cap - len, stdin);
                len += n;
                if (n == 0) {
                        if (ferror(stdin)) {
                                int e = errno != 0 ? errno : EIO;

                                free(p);
                                return e;
                        }
                        break;
                }
        }
        *out = p;
        *out_len = len;
        return 0;
}

static void
cli_key_lists(int argc, char **argv, size_t *klens)
{
        for (int i = 0; i < argc; i++)
                klens[i] = strlen(argv[i]);
}

static int
cli_nomem(const struct cli_cmd *cmd)
{
        fprintf(stderr, "kcache: %s: out of memory\n", cmd->name);
        return EXIT_ERR;
}

static int
cli_ping(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv,
         const struct cli_ctx *x)
{
        int rc = kcache_ping(kc);

        if (rc != KCACHE_OK)
                return cli_fail(kc, cmd, rc);
        puts("pong");
        return EXIT_OK;
}

static int
cli_hello(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv,
          const struct cli_ctx *x)
{
        struct kcache_server_info info;
        const char *name;
        int64_t value;
        int rc = kcache_hello(kc, &info);

        if (rc != KCACHE_OK)
                return cli_fail(kc, cmd, rc);
        printf("server: %s\nversion: %s\nprotocol: %d\n", info.server, info.version, info.protocol);
        for (size_t i = 0; kcache_server_limit(kc, i, &name, &value) == KCACHE_OK; i++)
                printf("%s: %lld\n", name, (long long)value);
        return EXIT_OK;
}

static int
cli_get(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv,
        const struct cli_ctx *x)
{
        void *val;
        size_t len;
        int rc = kcache_get_ex(kc, argv[0], strlen(argv[0]), &x->o, &val, &len);

        if (rc == KCACHE_MISS)
                return EXIT_MISS;
        if (rc != KCACHE_OK)
                return cli_fail(kc, cmd, rc);
        fwrite(val, 1, len, stdout);
        free(val);
        return EXIT_OK;
}

static int
cli_set(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv,
        const struct cli_ctx *x)
{
        char *val = argv[1], *owned = NULL;
        size_t len = strlen(val);
        int rc;

        if (strcmp(val, "-") == 0) {
                int e = cli_read_stdin(&owned, &len);

                if (e != 0) {
                        fprintf(stderr, "kcache: set: reading stdin: %s\n", strerror(e));
                        return EXIT_ERR;
                }
                val = owned;
        }
        rc = kcache_set_ex(kc, argv[0], strlen(argv[0]), val, len, &x->o);
        free(owned);
        return rc == KCACHE_OK ? EXIT_OK : cli_fail(kc, cmd, rc);
}

/* del and exists: a key list in, a count out. */
static int
cli_count(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv,
          const struct cli_ctx *x, bool is_del)
{
        size_t *klens = calloc((size_t)argc, sizeof(*klens));
        int64_t count = 0;
        int rc;

        if (klens == NULL)
                return cli_nomem(cmd);
        cli_key_lists(argc, argv, klens);
        if (is_del)
                rc = kcache_del_ex(kc, (size_t)argc, (const void *const *)argv, klens, &x->o,
                                   &count);
        else
                rc = kcache_exists_ex(kc, (size_t)argc, (const void *const *)argv, klens, &x->o,
                                      &count);
        free(klens);
        if (rc != KCACHE_OK)
                return cli_fail(kc, cmd, rc);
        printf("%lld\n", (long long)count);
        return EXIT_OK;
}

static int
cli_del(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv,
        const struct cli_ctx *x)
{
        return cli_count(kc, cmd, argc, argv, x, true);
}

static int
cli_exists(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv,
           const struct cli_ctx *x)
{
        return cli_count(kc, cmd, argc, argv, x, false);
}

static int
cli_mget(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv,
         const struct cli_ctx *x)
{
        size_t *klens = calloc((size_t)argc, sizeof(*klens));
        struct kcache_value *vals = calloc((size_t)argc, sizeof(*vals));
        int rc = KCACHE_E_NOMEM;

        if (klens != NULL && vals != NULL) {
                cli_key_lists(argc, argv, klens);
                rc = kcache_mget_ex(kc, (size_t)argc, (const void *const *)argv, klens, &x->o,
                                    vals);
        }
        if (rc == KCACHE_OK) {
                for (int i = 0; i < argc; i++) {
                        if (vals[i].data != NULL)
                                fwrite(vals[i].data, 1, vals[i].len, stdout);
                        putchar('\n');
                }
                kcache_values_free(vals, (size_t)argc);
        }
        free(klens);
        free(vals);
        return rc == KCACHE_OK ? EXIT_OK : cli_fail(kc, cmd, rc);
}

/* Splits argv[0..2n) into n name/value pairs. false when out of memory. */
static bool
cli_pairs(size_t n, char **argv, const void ***names, size_t **nlens, const void ***vals,
          size_t **vlens)
{
        *names = calloc(n, sizeof(**names));
        *vals = calloc(n, sizeof(**vals));
        *nlens = calloc(n, sizeof(**nlens));
        *vlens = calloc(n, sizeof(**vlens));
        if (*names == NULL || *vals == NULL || *nlens == NULL || *vlens == NULL)
                return false;
        for (size_t i = 0; i < n; i++) {
                (*names)[i] = argv[2 * i];
                (*nlens)[i] = strlen(argv[2 * i]);
                (*vals)[i] = argv[2 * i + 1];
                (*vlens)[i] = strlen(argv[2 * i + 1]);
        }
        return true;
}

/* mset and hset (argv after the key). */
static int
cli_store_pairs(struct kcache *kc, const struct cli_cmd *cmd, const char *hkey, int argc,
                char **argv, const struct cli_ctx *x)
{
        size_t n = (size_t)argc / 2;
        const void **names = NULL, **vals = NULL;
        size_t *nlens = NULL, *vlens = NULL;
        int rc = KCACHE_E_NOMEM;

        if (cli_pairs(n, argv, &names, &nlens, &vals, &vlens)) {
                if (hkey == NULL)
                        rc = kcache_mset_ex(kc, n, names, nlens, vals, vlens, &x->o);
                else
                        rc = kcache_hset(kc, hkey, strlen(hkey), n, names, nlens, vals, vlens,
                                         &x->o);
        }
        free(names);
        free(vals);
        free(nlens);
        free(vlens);
        return rc == KCACHE_OK ? EXIT_OK : cli_fail(kc, cmd, rc);
}

static int
cli_mset(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv,
         const struct cli_ctx *x)
{
        return cli_store_pairs(kc, cmd, NULL, argc, argv, x);
}

static int
cli_hset(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv,
         const struct cli_ctx *x)
{
        return cli_store_pairs(kc, cmd, argv[0], argc - 1, argv + 1, x);
}

static int
cli_ttl(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv,
        const struct cli_ctx *x)
{
        int64_t left;
        int rc = kcache_ttl_ex(kc, argv[0], strlen(argv[0]), &x->o, &left);

        if (rc != KCACHE_OK)
                return cli_fail(kc, cmd, rc);
        printf("%lld\n", (long long)left);
        return EXIT_OK;
}

static int
cli_expire(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv,
           const struct cli_ctx *x)
{
        long long seconds;
        int existed, rc;

        if (!cli_parse_int(argv[1], LLONG_MIN, LLONG_MAX, &seconds))
                return cli_usage_error("expire: SECONDS is not an integer: %s", argv[1]);
        rc = kcache_expire_ex(kc, argv[0], strlen(argv[0]), seconds, &x->o, &existed);
        if (rc != KCACHE_OK)
                return cli_fail(kc, cmd, rc);
        printf("%d\n", existed);
        return existed ? EXIT_OK : EXIT_MISS;
}

static int
cli_hget(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv,
         const struct cli_ctx *x)
{
        void *val;
        size_t len;
        int rc = kcache_hget(kc, argv[0], strlen(argv[0]), argv[1], strlen(argv[1]), &x->o, &val,
                             &len);

        if (rc == KCACHE_MISS)
                return EXIT_MISS;
        if (rc != KCACHE_OK)
                return cli_fail(kc, cmd, rc);
        fwrite(val, 1, len, stdout);
        free(val);
        return EXIT_OK;
}

static int
cli_hdel(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv,
         const struct cli_ctx *x)
{
        size_t *flens = calloc((size_t)argc - 1, sizeof(*flens));
        int64_t count = 0;
        int rc;

        if (flens == NULL)
                return cli_nomem(cmd);
        cli_key_lists(argc - 1, argv + 1, flens);
        rc = kcache_hdel(kc, argv[0], strlen(argv[0]), (size_t)argc - 1,
                         (const void *const *)(argv + 1), flens, &x->o, &count);
        free(flens);
        if (rc != KCACHE_OK)
                return cli_fail(kc, cmd, rc);
        printf("%lld\n", (long long)count);
        return EXIT_OK;
}

static int
cli_hgetall(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv,
            const struct cli_ctx *x)
{
        struct kcache_value *fields, *values;
        size_t n;
        int rc = kcache_hgetall(kc, argv[0], strlen(argv[0]), &x->o, &fields, &values, &n);

        if (rc != KCACHE_OK)
                return cli_fail(kc, cmd, rc);
        for (size_t i = 0; i < n; i++) {
                fwrite(fields[i].data, 1, fields[i].len, stdout);
                putchar('\t');
                fwrite(values[i].data, 1, values[i].len, stdout);
                putchar('\n');
        }
        kcache_hash_free(fields, values, n);
        return n > 0 ? EXIT_OK : EXIT_MISS;
}

static int
cli_invalidate(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv,
               const struct cli_ctx *x)
{
        const char *sel = argv[0];
        const bool has_ns = x->o.ns != NULL;
        int64_t n = 0;
        int rc;

        argc--;
        argv++;
        if (strcmp(sel, "--keys") == 0) {
                size_t *klens = calloc((size_t)argc, sizeof(*klens));

                if (klens == NULL)
                        return cli_nomem(cmd);
                cli_key_lists(argc, argv, klens);
                rc = kcache_invalidate_keys(kc, (size_t)argc, (const void *const *)argv, klens,
                                            &x->o, &n);
                free(klens);
        } else if (strcmp(sel, "--pattern") == 0 && argc == 1) {
                rc = kcache_invalidate_pattern(kc, argv[0], &x->o, &n);
        } else if (strcmp(sel, "--tags") == 0 && !has_ns) {
                rc = kcache_invalidate_tags(kc, (size_t)argc, (const char *const *)argv, &n);
        } else if (strcmp(sel, "--namespace") == 0 && argc == 1 && !has_ns) {
                rc = kcache_invalidate_namespace(kc, argv[0], &n);
        } else {
                return cli_usage_error("invalidate: give --keys K..., --pattern GLOB, --tags "
                                       "T... or --namespace NS (--ns only with --keys and "
                                       "--pattern)");
        }
        if (rc != KCACHE_OK)
                return cli_fail(kc, cmd, rc);
        printf("%lld\n", (long long)n);
        return EXIT_OK;
}

/* --- stats: msgpack to JSON ------------------------------------------------ */

/* A cursor over msgpack bytes from kcached, read without trusting them. */
struct cli_mp {
        const unsigned char *p;
        size_t n;
        size_t off;
};

static bool
cli_mp_take(struct cli_mp *m, size_t k, const unsigned char **out)
{
        if (m->n - m->off < k)
                return false;
        *out = m->p + m->off;
        m->off += k;
        return true;
}

/* A big-endian unsigned integer of k bytes. */
static bool
cli_mp_uint(struct cli_mp *m, size_t k, uint64_t *v)
{
        const unsigned char *q;

        if (!cli_mp_take(m, k, &q))
                return false;
        *v = 0;
        for (size_t i = 0; i < k; i++)
                *v = *v << 8 | q[i];
        return true;
}

/* Length of the valid UTF-8 sequence at p (at most n bytes), 0 if none. */
static size_t
cli_utf8_len(const unsigned char *p, size_t n)
{
        unsigned char c = p[0];
        size_t len;
        unsigned char lo = 0x80, hi = 0xbf;

        if (c >= 0xc2 && c <= 0xdf)
                len = 2;
        else if (c >= 0xe0 && c <= 0xef)
                len = 3;
        else if (c >= 0xf0 && c <= 0xf4)
                len = 4;
        else
                return 0;
        if (c == 0xe0)
                lo = 0xa0;
        else if (c == 0xed)
                hi = 0x9f;
        else if (c == 0xf0)
                lo = 0x90;
        else if (c == 0xf4)
                hi = 0x8f;
        if (n < len || p[1] < lo || p[1] > hi)
                return 0;
        for (size_t i = 2; i < len; i++)
                if (p[i] < 0x80 || p[i] > 0xbf)
                        return 0;
        return len;
}

/* A JSON string of arbitrary bytes: UTF-8 passes, anything else is \u00XX. */
static void
cli_json_string(FILE *f, const unsigned char *p, size_t n)
{
        putc('"', f);
        for (size_t i = 0; i < n;) {
                unsigned char c = p[i];
                size_t k;

                if (c == '"' || c == '\\') {
                        fprintf(f, "\\%c", c);
                } else if (c == '\n') {
                        fputs("\\n", f);
                } else if (c == '\t') {
                        fputs("\\t", f);
                } else if (c == '\r') {
                        fputs("\\r", f);
                } else if (c >= 0x20 && c < 0x7f) {
                        putc(c, f);
                } else if (c >= 0x80 && (k = cli_utf8_len(p + i, n - i)) > 0) {
                        fwrite(p + i, 1, k, f);
                        i += k;
                        continue;
                } else {
                        fprintf(f, "\\u%04x", c);
                }
                i++;
        }
        putc('"', f);
}

static bool cli_json_value(FILE *f, struct cli_mp *m, int depth);

static void
cli_json_indent(FILE *f, int depth)
{
        putc('\n', f);
        for (int i = 0; i < depth; i++)
                fputs("  ", f);
}

/* A map key: JSON wants a string, so anything else is printed as its JSON
 * text inside one. */
static bool
cli_json_key(FILE *f, struct cli_mp *m, int depth)
{
        unsigned char c;
        char *text = NULL;
        size_t len = 0;
        FILE *mf;
        bool ok;

        if (m->off >= m->n)
                return false;
        c = m->p[m->off];
        if ((c >= 0xa0 && c <= 0xbf) || (c >= 0xd9 && c <= 0xdb) || (c >= 0xc4 && c <= 0xc6))
                return cli_json_value(f, m, depth);
        mf = open_memstream(&text, &len);
        if (mf == NULL)
                return false;
        ok = cli_json_value(mf, m, depth);
        if (fclose(mf) != 0)
                ok = false;
        if (ok)
                cli_json_string(f, (const unsigned char *)text, len);
        free(text);
        return ok;
}

static bool
cli_json_container(FILE *f, struct cli_mp *m, int depth, uint64_t n, bool is_map)
{
        if (depth >= CLI_JSON_MAX_DEPTH)
                return false;
        /* every element takes at least one byte: a count beyond that lies */
        if (n > m->n - m->off)
                return false;
        putc(is_map ? '{' : '[', f);
        for (uint64_t i = 0; i < n; i++) {
                if (i > 0)
                        putc(',', f);
                cli_json_indent(f, depth + 1);
                if (is_map) {
                        if (!cli_json_key(f, m, depth + 1))
                                return false;
                        fputs(": ", f);
                }
                if (!cli_json_value(f, m, depth + 1))
                        return false;
        }
        if (n > 0)
                cli_json_indent(f, depth);
        putc(is_map ? '}' : ']', f);
        return true;
}

static bool
cli_json_bytes(FILE *f, struct cli_mp *m, uint64_t n)
{
        const unsigned char *q;

        if (!cli_mp_take(m, n, &q))
                return false;
        cli_json_string(f, q, n);
        return true;
}

static void
cli_json_double(FILE *f, double d)
{
        if (isfinite(d))
                fprintf(f, "%.17g", d);
        else
                fputs("null", f);
}

/* Prints one msgpack object as JSON; false on bytes that are not msgpack. */
static bool
cli_json_value(FILE *f, struct cli_mp *m, int depth)
{
        const unsigned char *q;
        unsigned char c;
        uint64_t v;

        if (!cli_mp_take(m, 1, &q))
                return false;
        c = *q;
        if (c <= 0x7f) {
                fprintf(f, "%u", c);
                return true;
        }
        if (c >= 0xe0) {
                fprintf(f, "%d", (int)c - 256);
                return true;
        }
        if (c >= 0x80 && c <= 0x8f)
                return cli_json_container(f, m, depth, c & 0x0f, true);
        if (c >= 0x90 && c <= 0x9f)
                return cli_json_container(f, m, depth, c & 0x0f, false);
        if (c >= 0xa0 && c <= 0xbf)
                return cli_json_bytes(f, m, c & 0x1f);
        switch (c) {
        case 0xc0:
                fputs("null", f);
                return true;
        case 0xc2:
                fputs("false", f);
                return true;
        case 0xc3:
                fputs("true", f);
                return true;
        case 0xc4: /* bin 8, 16, 32 */
        case 0xd9: /* str 8, 16, 32 */
                return cli_mp_uint(m, 1, &v) && cli_json_bytes(f, m, v);
        case 0xc5:
        case 0xda:
                return cli_mp_uint(m, 2, &v) && cli_json_bytes(f, m, v);
        case 0xc6:
        case 0xdb:
                return cli_mp_uint(m, 4, &v) && cli_json_bytes(f, m, v);
        case 0xc7: /* ext 8, 16, 32: no JSON form */
        case 0xc8:
        case 0xc9:
                if (!cli_mp_uint(m, (size_t)1 << (c - 0xc7), &v) || !cli_mp_take(m, 1, &q) ||
                    !cli_mp_take(m, v, &q))
                        return false;
                fputs("null", f);
                return true;
        case 0xca: {
                float fl;
                uint32_t bits;

                if (!cli_mp_uint(m, 4, &v))
                        return false;
                bits = (uint32_t)v;
                memcpy(&fl, &bits, sizeof(fl));
                cli_json_double(f, fl);
                return true;
        }
        case 0xcb: {
                double d;

                if (!cli_mp_uint(m, 8, &v))
                        return false;
                memcpy(&d, &v, sizeof(d));
                cli_json_double(f, d);
                return true;
        }
        case 0xcc:
        case 0xcd:
        case 0xce:
        case 0xcf:
                if (!cli_mp_uint(m, (size_t)1 << (c - 0xcc), &v))
                        return false;
                fprintf(f, "%llu", (unsigned long long)v);
                return true;
        case 0xd0:
        case 0xd1:
        case 0xd2:
        case 0xd3: {
                size_t k = (size_t)1 << (c - 0xd0);
                int64_t s;

                if (!cli_mp_uint(m, k, &v))
                        return false;
                /* sign-extend from k bytes */
                if (k < 8 && (v >> (8 * k - 1)) != 0)
                        v |= ~(uint64_t)0 << (8 * k);
                memcpy(&s, &v, sizeof(s));
                fprintf(f, "%lld", (long long)s);
                return true;
        }
        case 0xd4: /* fixext 1, 2, 4, 8, 16 */
        case 0xd5:
        case 0xd6:
        case 0xd7:
        case 0xd8:
                if (!cli_mp_take(m, 1 + ((size_t)1 << (c - 0xd4)), &q))
                        return false;
                fputs("null", f);
                return true;
        case 0xdc:
        case 0xde:
                return cli_mp_uint(m, 2, &v) && cli_json_container(f, m, depth, v, c == 0xde);
        case 0xdd:
        case 0xdf:
                return cli_mp_uint(m, 4, &v) && cli_json_container(f, m, depth, v, c == 0xdf);
        default: /* 0xc1 is never used */
                return false;
        }
}

static int
cli_stats(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv,
          const struct cli_ctx *x)
{
        static const unsigned char no_params[] = {0x90}; /* [] */
        struct cli_mp m = {0};
        void *res;
        size_t n;
        int rc = kcache_call_raw(kc, "stats", no_params, sizeof(no_params), &res, &n);

        if (rc != KCACHE_OK)
                return cli_fail(kc, cmd, rc);
        m.p = res;
        m.n = n;
        if (!cli_json_value(stdout, &m, 0) || m.off != m.n) {
                free(res);
                putchar('\n');
                fprintf(stderr, "kcache: stats: kcached's answer is not valid msgpack\n");
                return EXIT_ERR;
        }
        free(res);
        putchar('\n');
        return EXIT_OK;
}

/* --- get-or-set -------------------------------------------------------------- */

/*
 * Runs argv with its stdout into a malloc()ed buffer (at most CLI_LOADER_MAX
 * bytes); stdin and stderr are ours. true when it ran and exited 0; else
 * false with why set.
 */
static bool
cli_run_loader(char **argv, char **out, size_t *out_len, char *why, size_t why_len)
{
        posix_spawn_file_actions_t fa;
        size_t len = 0, cap = 65536;
        char *buf = malloc(cap);
        bool is_too_big = false;
        int pfd[2], e, status;
        pid_t pid;

        if (buf == NULL) {
                snprintf(why, why_len, "out of memory");
                return false;
        }
        if (pipe2(pfd, O_CLOEXEC) == -1) {
                snprintf(why, why_len, "pipe: %s", strerror(errno));
                free(buf);
                return false;
        }
        e = posix_spawn_file_actions_init(&fa);
        if (e == 0)
                e = posix_spawn_file_actions_adddup2(&fa, pfd[1], STDOUT_FILENO);
        if (e == 0)
                e = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        close(pfd[1]);
        if (e != 0) {
                snprintf(why, why_len, "cannot run %s: %s", argv[0], strerror(e));
                close(pfd[0]);
                free(buf);
                return false;
        }
        for (;;) {
                ssize_t n;

                if (len == cap) {
                        char *q;

                        if (cap >= CLI_LOADER_MAX) {
                                /* stop it rather than wait for an endless writer */
                                is_too_big = true;
                                kill(pid, SIGKILL);
                                break;
                        }
                        q = realloc(buf, cap * 2);
                        if (q == NULL) {
                                is_too_big = true;
                                kill(pid, SIGKILL);
                                break;
                        }
                        buf = q;
                        cap *= 2;
                }
                n = read(pfd[0], buf + len, cap - len);
                if (n == -1 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break;
                len += (size_t)n;
        }
        close(pfd[0]);
        while (waitpid(pid, &status, 0) == -1) {
                if (errno != EINTR) {
                        snprintf(why, why_len, "waitpid: %s", strerror(errno));
                        free(buf);
                        return false;
                }
        }
        if (is_too_big) {
                snprintf(why, why_len, "%s wrote more than %u MiB (or memory ran out)", argv[0],
                         CLI_LOADER_MAX >> 20);
        } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
                *out = buf;
                *out_len = len;
                return true;
        } else if (WIFEXITED(status)) {
                snprintf(why, why_len, "%s exited with status %d", argv[0], WEXITSTATUS(status));
        } else if (WIFSIGNALED(status)) {
                snprintf(why, why_len, "%s was killed by signal %d (%s)", argv[0], WTERMSIG(status),
                         strsignal(WTERMSIG(status)));
        } else {
                snprintf(why, why_len, "%s ended with wait status %d", argv[0], status);
        }
        free(buf);
        return false;
}

static int
cli_get_or_set(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv,
               const struct cli_ctx *x)
{
        const char *key = argv[0];
        const size_t klen = strlen(key);
        char why[256], *token = NULL, *out = NULL;
        void *val = NULL;
        size_t len = 0, out_len = 0;
        int rc, is_stale;

        rc = kcache_get_or_set_begin(kc, key, klen, &x->o, &val, &len, &token, &is_stale);
        if (rc == KCACHE_OK) {
                fwrite(val, 1, len, stdout);
                free(val);
                return EXIT_OK;
        }
        if (rc != KCACHE_LEASE)
                return cli_fail(kc, cmd, rc);
        free(val);      /* a stale value: we are the one refreshing it */
        fflush(stdout); /* nothing buffered may reach COMMAND's copy of stdout */
        if (!cli_run_loader(x->exec_argv, &out, &out_len, why, sizeof(why))) {
                /* let a waiting caller load it instead of waiting for lease_ms */
                rc = kcache_release(kc, key, klen, token, &x->o, NULL);
                free(token);
                if (rc != KCACHE_OK)
                        fprintf(stderr, "kcache: %s: %s; release: %s: %s\n", cmd->name, why,
                                kcache_code_name(rc), kcache_strerror(kc));
                else
                        fprintf(stderr, "kcache: %s: %s; lease released\n", cmd->name, why);
                return EXIT_ERR;
        }
        rc = kcache_fill(kc, key, klen, token, out, out_len, &x->o);
        free(token);
        if (rc != KCACHE_OK)
                fprintf(stderr, "kcache: %s: warning: the value was not cached: %s: %s\n",
                        cmd->name, kcache_code_name(rc), kcache_strerror(kc));
        fwrite(out, 1, out_len, stdout);
        free(out);
        return EXIT_OK;
}

/* --- admin ------------------------------------------------------------------ */

/* An answer is held in memory: kcached itself drops a peer past 4 MiB unread. */
#define CLI_ADMIN_ANSWER_MAX (64u << 20)
/* AF_UNIX connect() with a full backlog has nothing to poll for: retry after this long. */
#define CLI_ADMIN_BACKLOG_WAIT_MS 10

/* `admin health`: the probe contract (an exec probe reads the status, not the text). */
enum { CLI_HEALTH_OK = 0, CLI_HEALTH_DEGRADED = 1, CLI_HEALTH_DOWN = 2, CLI_HEALTH_UNKNOWN = 3 };

/*
 * The commands whose answer is several lines and then a line holding only
 * "." (daemon/admin.h); every other answer is one line. An error is always
 * one line, whatever the command.
 */
static const char *const cli_admin_blocks[] = {"config", "metrics"};

/* Whether a[0..n) starts with the text prefix. */
static bool
cli_starts(const char *a, size_t n, const char *prefix)
{
        size_t len = strlen(prefix);

        return n >= len && memcmp(a, prefix, len) == 0;
}

static int64_t
cli_now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Milliseconds before the deadline, rounded up so that poll() never returns early; 0 once past. */
static int
cli_left_ms(int64_t deadline_ns)
{
        int64_t left = deadline_ns - cli_now_ns();

        if (left <= 0)
                return 0;
        left = (left + 999999) / 1000000;
        return left > INT_MAX ? INT_MAX : (int)left;
}

/* Waits for events on fd until the deadline: 1 ready, 0 timed out, or -errno. */
static int
cli_admin_wait(int fd, short events, int64_t deadline_ns)
{
        struct pollfd pfd = {.fd = fd, .events = events};

        for (;;) {
                int ms = cli_left_ms(deadline_ns), r;

                if (ms == 0)
                        return 0;
                r = poll(&pfd, 1, ms);
                if (r > 0)
                        return 1;
                if (r == -1 && errno != EINTR)
                        return -errno;
        }
}

/* A non-blocking socket connected to path within the deadline, or -1 with why. */
static int
cli_admin_connect(const char *path, int64_t deadline_ns, char *why, size_t why_len)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        size_t len = strlen(path);
        int fd, e, r;
        socklen_t elen = sizeof(e);

        if (len == 0 || len >= sizeof(sa.sun_path)) {
                snprintf(why, why_len, "%s: path empty or longer than %zu bytes", path,
                         sizeof(sa.sun_path) - 1);
                return -1;
        }
        memcpy(sa.sun_path, path, len + 1);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd == -1) {
                snprintf(why, why_len, "socket: %s", strerror(errno));
                return -1;
        }
        while (connect(fd, (const struct sockaddr *)&sa, sizeof(sa)) == -1) {
                e = errno;
                if (e == EINTR)
                        continue;
                if (e == EAGAIN) {
                        int ms = cli_left_ms(deadline_ns);

                        if (ms == 0)
                                goto timeout;
                        poll(NULL, 0,
                             ms < CLI_ADMIN_BACKLOG_WAIT_MS ? ms : CLI_ADMIN_BACKLOG_WAIT_MS);
                        continue;
                }
                if (e != EINPROGRESS)
                        goto fail;
                r = cli_admin_wait(fd, POLLOUT, deadline_ns);
                if (r == 0)
                        goto timeout;
                if (r < 0) {
                        e = -r;
                        goto fail;
                }
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &elen) == -1)
                        e = errno;
                if (e != 0)
                        goto fail;
                break;
        }
        return fd;

fail:
        snprintf(why, why_len, "connect to %s: %s", path, strerror(e));
        close(fd);
        return -1;
timeout:
        snprintf(why, why_len, "connect to %s: timed out", path);
        close(fd);
        return -1;
}

/*
 * Where the answer in a[0..n) ends (one past its last byte, the "." line
 * excluded), with *body_end set to the end of what to print; 0 while it is
 * incomplete. A block ends at a line ".", anything else at its first newline.
 */
static size_t
cli_admin_complete(const char *a, size_t n, bool is_block, size_t *body_end)
{
        const char *nl = memchr(a, '\n', n);

        if (nl == NULL)
                return 0;
        if (!is_block || cli_starts(a, n, "error:")) {
                *body_end = (size_t)(nl - a) + 1;
                return *body_end;
        }
        if (n >= 2 && a[0] == '.' && a[1] == '\n') {
                *body_end = 0;
                return 2;
        }
        for (size_t i = 0; i + 2 < n; i++) {
                if (a[i] == '\n' && a[i + 1] == '.' && a[i + 2] == '\n') {
                        *body_end = i + 1;
                        return i + 3;
                }
        }
        return 0;
}

/*
 * Sends line (with its "\n") to the admin socket at path and reads the
 * answer; connect, send and read all within timeout_ms, and never a
 * SIGPIPE. 0 with *out (malloc()ed) and *out_len the answer to print (the
 * framing "." line removed), or -1 with why.
 */
static int
cli_admin_ask(const char *path, const char *line, bool is_block, int timeout_ms, char **out,
              size_t *out_len, char *why, size_t why_len)
{
        const int64_t deadline_ns = cli_now_ns() + (int64_t)timeout_ms * 1000000;
        size_t sent = 0, len = 0, cap = 4096, body_end = 0;
        const size_t line_len = strlen(line);
        char *a = NULL;
        int fd, r;

        fd = cli_admin_connect(path, deadline_ns, why, why_len);
        if (fd == -1)
                return -1;
        while (sent < line_len) {
                ssize_t n = send(fd, line + sent, line_len - sent, MSG_NOSIGNAL);

                if (n >= 0) {
                        sent += (size_t)n;
                        continue;
                }
                if (errno == EINTR)
                        continue;
                if (errno != EAGAIN) {
                        snprintf(why, why_len, "%s: send: %s", path, strerror(errno));
                        goto fail;
                }
                r = cli_admin_wait(fd, POLLOUT, deadline_ns);
                if (r <= 0)
                        goto wait_failed;
        }
        a = malloc(cap);
        if (a == NULL) {
                snprintf(why, why_len, "out of memory");
                goto fail;
        }
        while (cli_admin_complete(a, len, is_block, &body_end) == 0) {
                ssize_t n;

                if (len == cap) {
                        char *q = cap >= CLI_ADMIN_ANSWER_MAX ? NULL : realloc(a, cap * 2);

                        if (q == NULL) {
                                snprintf(why, why_len, "%s: answer longer than %u MiB", path,
                                         CLI_ADMIN_ANSWER_MAX >> 20);
                                goto fail;
                        }
                        a = q;
                        cap *= 2;
                }
                n = recv(fd, a + len, cap - len, 0);
                if (n > 0) {
                        len += (size_t)n;
                        continue;
                }
                if (n == 0) {
                        /* Nothing at all: the peer credentials were refused, or `quit`. */
                        if (len == 0 && strcmp(line, "quit\n") == 0)
                                break;
                        snprintf(why, why_len,
                                 len == 0 ? "%s: kcached closed the connection without an answer "
                                            "(see its log: peer credentials refused?)"
                                          : "%s: kcached closed the connection in the middle of "
                                            "the answer",
                                 path);
                        goto fail;
                }
                if (errno == EINTR)
                        continue;
                if (errno != EAGAIN) {
                        snprintf(why, why_len, "%s: recv: %s", path, strerror(errno));
                        goto fail;
                }
                r = cli_admin_wait(fd, POLLIN, deadline_ns);
                if (r <= 0)
                        goto wait_failed;
        }
        close(fd);
        *out = a;
        *out_len = body_end;
        return 0;

wait_failed:
        if (r == 0)
                snprintf(why, why_len, "%s: no answer within %d ms", path, timeout_ms);
        else
                snprintf(why, why_len, "%s: poll: %s", path, strerror(-r));
fail:
        free(a);
        close(fd);
        return -1;
}

/*
 * Re-indents one JSON text by 2 spaces a level, for a terminal. Not a
 * parser: it only tracks strings (and their escapes) and brackets, so that
 * anything kcached sends, valid or not, comes out with every byte of its
 * strings and scalars unchanged.
 */
static void
cli_json_pretty(FILE *f, const char *s, size_t n)
{
        bool is_str = false, is_esc = false;
        int depth = 0;

        for (size_t i = 0; i < n; i++) {
                char c = s[i];

                if (is_str) {
                        putc(c, f);
                        if (is_esc)
                                is_esc = false;
                        else if (c == '\\')
                                is_esc = true;
                        else if (c == '"')
                                is_str = false;
                        continue;
                }
                switch (c) {
                case '"':
                        is_str = true;
                        putc(c, f);
                        break;
                case '{':
                case '[': {
                        size_t j = i + 1;

                        while (j < n && strchr(" \t\r\n", s[j]) != NULL)
                                j++;
                        putc(c, f);
                        if (j < n && s[j] == (c == '{' ? '}' : ']')) {
                                putc(s[j], f); /* {} and [] stay on their line */
                                i = j;
                                break;
                        }
                        cli_json_indent(f, ++depth);
                        break;
                }
                case '}':
                case ']':
                        if (depth > 0)
                                depth--;
                        cli_json_indent(f, depth);
                        putc(c, f);
                        break;
                case ',':
                        putc(c, f);
                        cli_json_indent(f, depth);
                        break;
                case ':':
                        fputs(": ", f);
                        break;
                case ' ':
                case '\t':
                case '\r':
                case '\n':
                        break;
                default:
                        putc(c, f);
                        break;
                }
        }
        putc('\n', f);
}

/* Takes -a PATH, -aPATH, --admin-socket[=]PATH and "--" off argv; the rest's index, or -1. */
static int
cli_admin_opts(int argc, char **argv, const char **path)
{
        static const char long_name[] = "--admin-socket";
        const size_t long_len = sizeof(long_name) - 1;
        int i = 0;

        while (i < argc && argv[i][0] == '-') {
                const char *arg = argv[i];

                if (strcmp(arg, "--") == 0)
                        return i + 1;
                if (strncmp(arg, "-a", 2) == 0 && arg[2] != '\0') {
                        *path = arg + 2;
                } else if (strncmp(arg, long_name, long_len) == 0 && arg[long_len] == '=') {
                        *path = arg + long_len + 1;
                } else if (strcmp(arg, "-a") == 0 || strcmp(arg, long_name) == 0) {
                        if (i + 1 == argc) {
                                cli_usage_error("admin: %s needs a value", arg);
                                return -1;
                        }
                        *path = argv[++i];
                } else {
                        cli_usage_error("admin: unknown option %s", arg);
                        return -1;
                }
                i++;
        }
        return i;
}

/* "health", "health live" or "health ready": what a probe may ask. */
static bool
cli_admin_health_args(int argc, char **argv)
{
        return argc == 1 ||
               (argc == 2 && (strcmp(argv[1], "live") == 0 || strcmp(argv[1], "ready") == 0));
}

static int
cli_admin(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv,
          const struct cli_ctx *x)
{
        const char *path = getenv("KCACHE_ADMIN_SOCKET");
        char why[512], *line = NULL, *answer = NULL;
        size_t len = 0, answer_len = 0;
        bool is_health, is_block = false;
        int first, rc;

        if (path == NULL || path[0] == '\0')
                path = CLI_ADMIN_DEFAULT_SOCKET;
        first = cli_admin_opts(argc, argv, &path);
        if (first < 0)
                return EXIT_ERR;
        argc -= first;
        argv += first;
        if (argc == 0)
                return cli_usage_error("admin: no command given");
        is_health = strcmp(argv[0], "health") == 0;
        if (is_health && !cli_admin_health_args(argc, argv)) {
                /* Status 2 would read as "down" to a probe: a typo must not restart kcached. */
                cli_usage_error("admin: usage: health [live|ready]");
                return CLI_HEALTH_UNKNOWN;
        }
        for (size_t i = 0; i < sizeof(cli_admin_blocks) / sizeof(cli_admin_blocks[0]); i++)
                if (strcmp(argv[0], cli_admin_blocks[i]) == 0)
                        is_block = true;
        /* One line: the words joined by spaces, as typed at the socket. */
        for (int i = 0; i < argc; i++) {
                if (argv[i][0] == '\0' || strpbrk(argv[i], " \t\r\n") != NULL)
                        return cli_usage_error("admin: an argument cannot be empty or hold "
                                               "spaces or line breaks: \"%s\"",
                                               argv[i]);
                len += strlen(argv[i]) + 1;
        }
        line = malloc(len + 1);
        if (line == NULL)
                return is_health ? CLI_HEALTH_UNKNOWN : cli_nomem(cmd);
        len = 0;
        for (int i = 0; i < argc; i++) {
                size_t n = strlen(argv[i]);

                memcpy(line + len, argv[i], n);
                len += n;
                line[len++] = i + 1 < argc ? ' ' : '\n';
        }
        line[len] = '\0';

        rc = cli_admin_ask(path, line, is_block,
                           x->timeout_ms > 0 ? x->timeout_ms : KCACHE_DEFAULT_TIMEOUT_MS, &answer,
                           &answer_len, why, sizeof(why));
        free(line);
        if (rc != 0) {
                fprintf(stderr, "kcache: admin: %s\n", why);
                return is_health ? CLI_HEALTH_UNKNOWN : EXIT_ERR;
        }
        if (cli_starts(answer, answer_len, "error:")) {
                fprintf(stderr, "kcache: admin: %.*s", (int)answer_len, answer);
                free(answer);
                return is_health ? CLI_HEALTH_UNKNOWN : EXIT_ERR;
        }
        if (answer_len > 0 && (answer[0] == '{' || answer[0] == '[') && isatty(STDOUT_FILENO))
                cli_json_pretty(stdout, answer, answer_len);
        else
                fwrite(answer, 1, answer_len, stdout);
        if (is_health) {
                if (answer_len == 3 && cli_starts(answer, answer_len, "ok\n"))
                        rc = CLI_HEALTH_OK;
                else if (cli_starts(answer, answer_len, "degraded:"))
                        rc = CLI_HEALTH_DEGRADED;
                else if (cli_starts(answer, answer_len, "down:"))
                        rc = CLI_HEALTH_DOWN;
                else
                        rc = CLI_HEALTH_UNKNOWN;
                /* main() would say 2 (down) for a failed write: a probe must see 3 */
                if (fflush(stdout) != 0 || ferror(stdout)) {
                        fprintf(stderr, "kcache: admin: writing output: %s\n", strerror(errno));
                        rc = CLI_HEALTH_UNKNOWN;
                }
        }
        free(answer);
        return rc;
}

/* --- argument parsing ----------------------------------------------------- */

enum cli_opt_id { CLI_TTL, CLI_TTL_MS, CLI_STALE, CLI_STALE_MS, CLI_TAG, CLI_LEASE, CLI_WAIT };

/* The options of commands, by the CLI_O_* group that enables them. */
static const struct {
        const char *name;
        unsigned group;
        enum cli_opt_id id;
} cli_cmd_opts[] = {
        {"ttl", CLI_O_TTL, CLI_TTL},           {"ttl-ms", CLI_O_TTL, CLI_TTL_MS},
        {"stale-ttl", CLI_O_STALE, CLI_STALE}, {"stale-ttl-ms", CLI_O_STALE, CLI_STALE_MS},
        {"tag", CLI_O_TAG, CLI_TAG},           {"lease-ms", CLI_O_LEASE, CLI_LEASE},
        {"wait-ms", CLI_O_LEASE, CLI_WAIT},
};

/* Sets option id from its value; false after printing a usage error. */
static bool
cli_set_opt(struct cli_ctx *x, size_t *n_tags, enum cli_opt_id id, const char *name,
            const char *val)
{
        long long v;
        int64_t *dst = NULL;

        switch (id) {
        case CLI_TAG:
                x->tags[(*n_tags)++] = val;
                return true;
        case CLI_TTL:
                dst = &x->o.ttl_s;
                break;
        case CLI_TTL_MS:
                dst = &x->o.ttl_ms;
                break;
        case CLI_STALE:
                dst = &x->o.stale_ttl_s;
                break;
        case CLI_STALE_MS:
                dst = &x->o.stale_ttl_ms;
                break;
        case CLI_LEASE:
                dst = &x->o.lease_ms;
                break;
        case CLI_WAIT:
                dst = &x->o.wait_ms;
                break;
        }
        if (dst == NULL || !cli_parse_int(val, 0, INT64_MAX, &v)) {
                cli_usage_error("--%s: not a non-negative number: %s", name, val);
                return false;
        }
        *dst = v;
        return true;
}

/*
 * Takes the command's options (--name N or --name=N) out of its arguments,
 * in place; "--" ends them (for CLI_O_EXEC, what follows is COMMAND). Returns
 * the number of positional arguments left, or -1 after printing a usage error.
 */
static int
cli_take_opts(const struct cli_cmd *cmd, int argc, char **argv, struct cli_ctx *x)
{
        const bool has_opts = (cmd->opts & CLI_O_CMD) != 0;
        size_t n_tags = 0;
        int n = 0;

        for (int i = 0; i < argc; i++) {
                const char *arg = argv[i], *val = NULL;
                size_t k, nlen = 0;

                if (!has_opts || strncmp(arg, "--", 2) != 0) {
                        argv[n++] = argv[i];
                        continue;
                }
                if (arg[2] == '\0') {
                        if (cmd->opts & CLI_O_EXEC) {
                                x->exec_argv = argv + i + 1;
                                break;
                        }
                        while (++i < argc)
                                argv[n++] = argv[i];
                        break;
                }
                for (k = 0; k < sizeof(cli_cmd_opts) / sizeof(cli_cmd_opts[0]); k++) {
                        nlen = strlen(cli_cmd_opts[k].name);
                        if ((cmd->opts & cli_cmd_opts[k].group) &&
                            strncmp(arg + 2, cli_cmd_opts[k].name, nlen) == 0 &&
                            (arg[2 + nlen] == '\0' || arg[2 + nlen] == '='))
                                break;
                }
                if (k == sizeof(cli_cmd_opts) / sizeof(cli_cmd_opts[0])) {
                        argv[n++] = argv[i]; /* not an option of this command: an argument */
                        continue;
                }
                if (arg[2 + nlen] == '=') {
                        val = arg + 3 + nlen;
                } else if (i + 1 < argc) {
                        val = argv[++i];
                } else {
                        cli_usage_error("%s: %s needs a value", cmd->name, arg);
                        return -1;
                }
                if (!cli_set_opt(x, &n_tags, cli_cmd_opts[k].id, cli_cmd_opts[k].name, val))
                        return -1;
        }
        if ((cmd->opts & CLI_O_EXEC) && (x->exec_argv == NULL || x->exec_argv[0] == NULL)) {
                cli_usage_error("%s: \"-- COMMAND [ARGS...]\" is required", cmd->name);
                return -1;
        }
        if ((x->o.ttl_s > 0 && x->o.ttl_ms > 0) ||
            (x->o.stale_ttl_s > 0 && x->o.stale_ttl_ms > 0)) {
                cli_usage_error("%s: give a ttl in seconds or in milliseconds, not both",
                                cmd->name);
                return -1;
        }
        x->o.tags = x->tags;
        x->o.n_tags = n_tags;
        return n;
}

int
main(int argc, char **argv)
{
        enum { OPT_NS = 256, OPT_SCHEMA };
        static const struct option longopts[] = {
                {"socket", required_argument, NULL, 's'},
                {"timeout", required_argument, NULL, 't'},
                {"ns", required_argument, NULL, OPT_NS},
                {"schema", required_argument, NULL, OPT_SCHEMA},
                {"version", no_argument, NULL, 'V'},
                {"help", no_argument, NULL, 'h'},
                {NULL, 0, NULL, 0},
        };
        struct kcache_options opts = {0};
        struct cli_ctx x = {.tags = NULL};
        const struct cli_cmd *cmd = NULL;
        struct kcache *kc = NULL;
        int c, n, rc;

        /* "+": stop at the command, so that its arguments may start with '-' */
        while ((c = getopt_long(argc, argv, "+s:t:Vh", longopts, NULL)) != -1) {
                long long v;

                switch (c) {
                case 's':
                        opts.socket_path = optarg;
                        break;
                case 't':
                        if (!cli_parse_int(optarg, 1, INT_MAX, &v))
                                return cli_usage_error("--timeout: not a positive number of "
                                                       "milliseconds: %s",
                                                       optarg);
                        opts.timeout_ms = (int)v;
                        x.timeout_ms = (int)v;
                        break;
                case OPT_NS:
                        x.o.ns = optarg;
                        break;
                case OPT_SCHEMA:
                        x.o.schema = optarg;
                        x.o.schema_len = strlen(optarg);
                        break;
                case 'V':
                        printf("kcache %s\n", KCACHE_VERSION);
                        return EXIT_OK;
                case 'h':
                        cli_usage(stdout);
                        return EXIT_OK;
                default:
                        cli_usage(stderr);
                        return EXIT_ERR;
                }
        }
        if (optind == argc)
                return cli_usage_error("%s", "no command given");
        for (size_t i = 0; i < sizeof(cli_cmds) / sizeof(cli_cmds[0]); i++)
                if (strcmp(argv[optind], cli_cmds[i].name) == 0)
                        cmd = &cli_cmds[i];
        if (cmd == NULL)
                return cli_usage_error("unknown command: %s", argv[optind]);
        if (x.o.ns != NULL && !(cmd->opts & CLI_O_NS))
                return cli_usage_error("--ns does not apply to %s", cmd->name);
        if (x.o.schema != NULL && !(cmd->opts & CLI_O_SCHEMA))
                return cli_usage_error("--schema does not apply to %s", cmd->name);
        argc -= optind + 1;
        argv += optind + 1;
        /* every tag is an argument: argc bounds their number */
        x.tags = calloc((size_t)argc + 1, sizeof(*x.tags));
        if (x.tags == NULL)
                return cli_nomem(cmd);
        n = cli_take_opts(cmd, argc, argv, &x);
        if (n < 0 || n < cmd->min_args || (cmd->max_args >= 0 && n > cmd->max_args) ||
            (cmd->pairs_from >= 0 && (n - cmd->pairs_from) % 2 != 0)) {
                free(x.tags);
                return n < 0 ? EXIT_ERR
                             : cli_usage_error("%s: wrong number of arguments", cmd->name);
        }

        /* admin speaks to another socket: no handle, and -s does not apply */
        if (!(cmd->opts & CLI_O_ADMIN)) {
                rc = kcache_new(&kc, &opts);
                if (rc != KCACHE_OK) {
                        fprintf(stderr,
                                "kcache: %s: %s: cannot create a handle (socket path empty or "
                                "too long?)\n",
                                cmd->name, kcache_code_name(rc));
                        free(x.tags);
                        return EXIT_ERR;
                }
        }
        rc = cmd->run(kc, cmd, n, argv, &x);
        kcache_free(kc);
        free(x.tags);
        if (fflush(stdout) != 0 || ferror(stdout)) {
                fprintf(stderr, "kcache: %s: writing output: %s\n", cmd->name, strerror(errno));
                return EXIT_ERR;
        }
        return rc;
}
