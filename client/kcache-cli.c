/* SPDX-License-Identifier: MIT */
/*
 * kcache: the command-line client of kcached, a thin shell over libkcache.
 *
 * The commands are one table (name, arguments, help, arity, handler) that
 * drives dispatch, argument checks and the usage text. Exit status is the
 * scripting contract: 0 ok, 1 miss (get of a missing key, expire of a missing
 * key), 2 error or usage. Errors go to stderr as
 * `kcache: COMMAND: CODE: detail`, values to stdout unchanged.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kcache-version.h"
#include "kcache.h"

enum { EXIT_OK = 0, EXIT_MISS = 1, EXIT_ERR = 2 };

struct cli_cmd {
        const char *name;
        const char *args;
        const char *help;
        int min_args;
        int max_args;  /* -1: no limit */
        bool has_ttl;  /* accepts --ttl N among its arguments */
        bool is_pairs; /* arguments come in KEY VALUE pairs */
        int (*run)(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv,
                   int64_t ttl_s);
};

static int cli_ping(struct kcache *, const struct cli_cmd *, int, char **, int64_t);
static int cli_hello(struct kcache *, const struct cli_cmd *, int, char **, int64_t);
static int cli_get(struct kcache *, const struct cli_cmd *, int, char **, int64_t);
static int cli_set(struct kcache *, const struct cli_cmd *, int, char **, int64_t);
static int cli_del(struct kcache *, const struct cli_cmd *, int, char **, int64_t);
static int cli_mget(struct kcache *, const struct cli_cmd *, int, char **, int64_t);
static int cli_mset(struct kcache *, const struct cli_cmd *, int, char **, int64_t);
static int cli_exists(struct kcache *, const struct cli_cmd *, int, char **, int64_t);
static int cli_ttl(struct kcache *, const struct cli_cmd *, int, char **, int64_t);
static int cli_expire(struct kcache *, const struct cli_cmd *, int, char **, int64_t);

static const struct cli_cmd cli_cmds[] = {
        {"ping", "", "check that kcached answers; prints \"pong\"", 0, 0, false, false, cli_ping},
        {"hello", "", "print server, version, protocol and limits, one \"key: value\" a line", 0, 0,
         false, false, cli_hello},
        {"get", "KEY", "print the value as stored (no newline added); exit 1 on a miss", 1, 1,
         false, false, cli_get},
        {"set", "KEY VALUE [--ttl N]", "store VALUE (\"-\": read it from stdin)", 2, 2, true, false,
         cli_set},
        {"del", "KEY...", "delete keys; print how many existed", 1, -1, false, false, cli_del},
        {"mget", "KEY...",
         "print one line per key: the value, or an empty line on a miss (values\n"
         "                        holding newlines are ambiguous here: use get)",
         1, -1, false, false, cli_mget},
        {"mset", "KEY VALUE [KEY VALUE...] [--ttl N]", "store several values with one ttl", 2, -1,
         true, true, cli_mset},
        {"exists", "KEY...", "print how many of the keys exist", 1, -1, false, false, cli_exists},
        {"ttl", "KEY", "print the seconds left (-1: no expiry, -2: missing key)", 1, 1, false,
         false, cli_ttl},
        {"expire", "KEY SECONDS",
         "set a ttl; print 1 and exit 0 if the key existed, else 0, exit 1", 2, 2, false, false,
         cli_expire},
};

static void
cli_usage(FILE *f)
{
        fprintf(f,
                "usage: kcache [-s SOCKET] [-t TIMEOUT_MS] COMMAND [ARGS]\n"
                "       kcache --version | --help\n"
                "\n"
                "options:\n"
                "  -s, --socket PATH     kcached's socket (default: $KCACHE_SOCKET, else %s)\n"
                "  -t, --timeout MS      deadline of the call, connecting included (default %d)\n"
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
                   "--ttl N (seconds; 0: kcached's default) may appear anywhere after set/mset;\n"
                   "\"--\" ends it, for keys or values that start with \"-\".\n"
                   "exit status: 0 ok, 1 miss (get, expire), 2 error or usage.\n");
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
cli_ping(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv, int64_t ttl_s)
{
        int rc = kcache_ping(kc);

        if (rc != KCACHE_OK)
                return cli_fail(kc, cmd, rc);
        puts("pong");
        return EXIT_OK;
}

static int
cli_hello(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv, int64_t ttl_s)
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
cli_get(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv, int64_t ttl_s)
{
        void *val;
        size_t len;
        int rc = kcache_get(kc, argv[0], strlen(argv[0]), &val, &len);

        if (rc == KCACHE_MISS)
                return EXIT_MISS;
        if (rc != KCACHE_OK)
                return cli_fail(kc, cmd, rc);
        fwrite(val, 1, len, stdout);
        free(val);
        return EXIT_OK;
}

static int
cli_set(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv, int64_t ttl_s)
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
        rc = kcache_set(kc, argv[0], strlen(argv[0]), val, len, ttl_s);
        free(owned);
        return rc == KCACHE_OK ? EXIT_OK : cli_fail(kc, cmd, rc);
}

/* del and exists: a key list in, a count out. */
static int
cli_count(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv, bool is_del)
{
        size_t *klens = calloc((size_t)argc, sizeof(*klens));
        int64_t count = 0;
        int rc;

        if (klens == NULL) {
                fprintf(stderr, "kcache: %s: out of memory\n", cmd->name);
                return EXIT_ERR;
        }
        cli_key_lists(argc, argv, klens);
        if (is_del)
                rc = kcache_del(kc, (size_t)argc, (const void *const *)argv, klens, &count);
        else
                rc = kcache_exists(kc, (size_t)argc, (const void *const *)argv, klens, &count);
        free(klens);
        if (rc != KCACHE_OK)
                return cli_fail(kc, cmd, rc);
        printf("%lld\n", (long long)count);
        return EXIT_OK;
}

static int
cli_del(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv, int64_t ttl_s)
{
        return cli_count(kc, cmd, argc, argv, true);
}

static int
cli_exists(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv, int64_t ttl_s)
{
        return cli_count(kc, cmd, argc, argv, false);
}

static int
cli_mget(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv, int64_t ttl_s)
{
        size_t *klens = calloc((size_t)argc, sizeof(*klens));
        struct kcache_value *vals = calloc((size_t)argc, sizeof(*vals));
        int rc = KCACHE_E_NOMEM;

        if (klens != NULL && vals != NULL) {
                cli_key_lists(argc, argv, klens);
                rc = kcache_mget(kc, (size_t)argc, (const void *const *)argv, klens, vals);
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

static int
cli_mset(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv, int64_t ttl_s)
{
        size_t n = (size_t)argc / 2;
        const void **keys = calloc(n, sizeof(*keys));
        const void **vals = calloc(n, sizeof(*vals));
        size_t *klens = calloc(n, sizeof(*klens));
        size_t *vlens = calloc(n, sizeof(*vlens));
        int rc = KCACHE_E_NOMEM;

        if (keys != NULL && vals != NULL && klens != NULL && vlens != NULL) {
                for (size_t i = 0; i < n; i++) {
                        keys[i] = argv[2 * i];
                        klens[i] = strlen(argv[2 * i]);
                        vals[i] = argv[2 * i + 1];
                        vlens[i] = strlen(argv[2 * i + 1]);
                }
                rc = kcache_mset(kc, n, keys, klens, vals, vlens, ttl_s);
        }
        free(keys);
        free(vals);
        free(klens);
        free(vlens);
        return rc == KCACHE_OK ? EXIT_OK : cli_fail(kc, cmd, rc);
}

static int
cli_ttl(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv, int64_t ttl_s)
{
        int64_t left;
        int rc = kcache_ttl(kc, argv[0], strlen(argv[0]), &left);

        if (rc != KCACHE_OK)
                return cli_fail(kc, cmd, rc);
        printf("%lld\n", (long long)left);
        return EXIT_OK;
}

static int
cli_expire(struct kcache *kc, const struct cli_cmd *cmd, int argc, char **argv, int64_t ttl_s)
{
        long long seconds;
        int existed, rc;

        if (!cli_parse_int(argv[1], LLONG_MIN, LLONG_MAX, &seconds))
                return cli_usage_error("expire: SECONDS is not an integer: %s", argv[1]);
        rc = kcache_expire(kc, argv[0], strlen(argv[0]), seconds, &existed);
        if (rc != KCACHE_OK)
                return cli_fail(kc, cmd, rc);
        printf("%d\n", existed);
        return existed ? EXIT_OK : EXIT_MISS;
}

/*
 * Takes --ttl N / --ttl=N out of a command's arguments (in place); "--" ends
 * option parsing. Returns the number of positional arguments left, or -1
 * after printing a usage error.
 */
static int
cli_take_ttl(const struct cli_cmd *cmd, int argc, char **argv, int64_t *ttl_s)
{
        bool is_done = false;
        int n = 0;

        for (int i = 0; i < argc; i++) {
                const char *num = NULL;
                long long v;

                if (!is_done && cmd->has_ttl && strcmp(argv[i], "--") == 0) {
                        is_done = true;
                        continue;
                }
                if (!is_done && cmd->has_ttl && strcmp(argv[i], "--ttl") == 0) {
                        if (i + 1 == argc) {
                                cli_usage_error("%s: --ttl needs a value", cmd->name);
                                return -1;
                        }
                        num = argv[++i];
                } else if (!is_done && cmd->has_ttl && strncmp(argv[i], "--ttl=", 6) == 0) {
                        num = argv[i] + 6;
                }
                if (num == NULL) {
                        argv[n++] = argv[i];
                        continue;
                }
                if (!cli_parse_int(num, 0, INT64_MAX, &v)) {
                        cli_usage_error("--ttl: not a number of seconds: %s", num);
                        return -1;
                }
                *ttl_s = v;
        }
        return n;
}

int
main(int argc, char **argv)
{
        static const struct option longopts[] = {
                {"socket", required_argument, NULL, 's'},
                {"timeout", required_argument, NULL, 't'},
                {"version", no_argument, NULL, 'V'},
                {"help", no_argument, NULL, 'h'},
                {NULL, 0, NULL, 0},
        };
        struct kcache_options opts = {0};
        const struct cli_cmd *cmd = NULL;
        struct kcache *kc;
        int64_t ttl_s = 0;
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
        argc -= optind + 1;
        argv += optind + 1;
        n = cli_take_ttl(cmd, argc, argv, &ttl_s);
        if (n < 0)
                return EXIT_ERR;
        if (n < cmd->min_args || (cmd->max_args >= 0 && n > cmd->max_args) ||
            (cmd->is_pairs && n % 2 != 0))
                return cli_usage_error("%s: wrong number of arguments", cmd->name);

        rc = kcache_new(&kc, &opts);
        if (rc != KCACHE_OK) {
                fprintf(stderr,
                        "kcache: %s: %s: cannot create a handle (socket path empty or "
                        "too long?)\n",
                        cmd->name, kcache_code_name(rc));
                return EXIT_ERR;
        }
        rc = cmd->run(kc, cmd, n, argv, ttl_s);
        kcache_free(kc);
        if (fflush(stdout) != 0 || ferror(stdout)) {
                fprintf(stderr, "kcache: %s: writing output: %s\n", cmd->name, strerror(errno));
                return EXIT_ERR;
        }
        return rc;
}
