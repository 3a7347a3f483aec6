/* SPDX-License-Identifier: MIT */
/*
 * test-config: unit tests for config.c. Writes INI files into a mkdtemp()
 * directory, loads them and checks values, sources and the exact
 * "FILE:LINE: ..." of every error class; checks environment overrides, the
 * dump round trip, and that conf/kcached.ini is config_write_example()'s
 * output byte for byte, and packaging/man/kcached.ini.5 man_write()'s.
 *
 *   test-config                   run the tests (meson runs it from daemon/)
 *   test-config --write-example   print conf/kcached.ini's content
 *   test-config --write-man       print packaging/man/kcached.ini.5 (mdoc)
 *
 * Exit 0 when every check passed.
 */
#include <errno.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/config.h"

#define EXAMPLE_PATH "../conf/kcached.ini"

/*
 * Key indexes, as in config.c's table (sources[] is indexed like it):
 * 0 socket .. 6 drain_timeout_ms, 7 primary, 8 replicas, 9 password,
 * 10 password_file, 11 db, 12 connect_timeout_ms, 13 command_timeout_ms,
 * 14 pool_size, 15 replica_pool_size, 16 read_from,
 * 17 replica_attempt_timeout_ms, 18 max_inflight_per_node, 19 reconnect_max_ms,
 * 20 max_replica_lag_ms, [health] 21 interval_ms, 22 timeout_ms,
 * 23 failure_threshold, 24 recovery_threshold, 25 fail_open, [sentinel] 26 addresses,
 * 27 master_name, 28 password, [admin] 29 socket, 30 socket_mode,
 * 31 socket_group, 32 allowed_uids, 33 allowed_gids, 34 listen,
 * 35 key_prefix, 36 default_ttl, 37 max_ttl, 38 max_key_bytes, 39 max_value_bytes,
 * 40 compression, 41 compression_level, 42 compression_threshold,
 * 43 compress_inline_max, 44 lease_ttl_ms, 45 max_wait_ms,
 * 46 max_tracked_namespaces, 47 ns_check_ms, [log] 48 level, 49 target.
 */
/*
 * Keys added later sit among these: IX() maps an index of the list above to
 * the table's, and IS_LATER() names the added ones ([server] limits and
 * access, [redis] username and reply limits), which the full file leaves unset.
 */
#define IX(k)                                                                                      \
        ((k) < 7 ? (k) : (k) < 9 ? (k) + 7 : (k) < 14 ? (k) + 8 : (k) < 48 ? (k) + 10 : (k) + 13)
#define IS_LATER(i)                                                                                \
        (((i) >= 7 && (i) <= 13) || (i) == 16 || (i) == 22 || (i) == 23 || ((i) >= 58 && (i) <= 60))
#define N_KEYS      63
#define I_PASSWORD_FILE IX(10)
#define I_REPLICA_ATT IX(17)
#define I_INTERVAL IX(21)
#define I_FAIL_OPEN IX(25)
#define I_ADDRESSES IX(26)
#define I_ADMIN_SOCKET IX(29)
#define I_ALLOWED_UIDS IX(32)
#define I_LISTEN IX(34)
#define I_KEY_PREFIX IX(35)
#define I_COMPRESSION IX(40)
#define I_NS_CHECK IX(47)
#define I_LEVEL IX(48)
#define I_TARGET IX(49)

static int n_passed, n_failed;
static char tmpdir[256];

/* Paths are tmpdir plus a short name; messages hold two paths at most. */
#define PATH_BUF 512
#define MSG_BUF  2048
static int n_files;

static const char *const redis_env[] = {"REDIS_HOST", "REDIS_PORT", "REDIS_REPLICAS_HOST_PORT",
                                        "REDIS_TIMEOUT", "REDIS_PASSWORD"};

static void __attribute__((format(printf, 3, 4))) check_at(int line, bool ok, const char *fmt, ...)
{
        va_list ap;

        if (ok) {
                n_passed++;
                return;
        }
        n_failed++;
        printf("FAIL test-config.c:%d: ", line);
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        printf("\n");
}

#define CHECK(ok, ...) check_at(__LINE__, (ok), __VA_ARGS__)

static void
clear_env(void)
{
        for (size_t i = 0; i < sizeof(redis_env) / sizeof(redis_env[0]); i++)
                unsetenv(redis_env[i]);
}

/* Writes len bytes to a new file in tmpdir; its path goes to path. */
static void
write_bytes(char *path, size_t pathlen, const char *content, size_t len)
{
        FILE *f;

        snprintf(path, pathlen, "%s/t%03d.ini", tmpdir, ++n_files);
        f = fopen(path, "we");
        if (f == NULL) {
                perror(path);
                exit(2);
        }
        fwrite(content, 1, len, f);
        if (fclose(f) != 0) {
                perror(path);
                exit(2);
        }
}

static void
write_file(char *path, size_t pathlen, const char *content)
{
        write_bytes(path, pathlen, content, strlen(content));
}

/* Loads content; on success c must be deinit'ed by the caller. */
static int
load_text(const char *content, struct config *c, char *path, size_t pathlen, char *err,
          size_t errlen)
{
        write_file(path, pathlen, content);
        return config_load(c, path, err, errlen);
}

/* The [cache] keys of the cache semantics (max_key_bytes .. ns_check_ms). */
static bool
cache_equal(const struct config *a, const struct config *b)
{
        return a->max_key_bytes == b->max_key_bytes && a->max_value_bytes == b->max_value_bytes &&
               a->compression == b->compression && a->compression_level == b->compression_level &&
               a->compression_threshold == b->compression_threshold &&
               a->compress_inline_max == b->compress_inline_max &&
               a->lease_ttl_ms == b->lease_ttl_ms && a->max_wait_ms == b->max_wait_ms &&
               a->max_tracked_namespaces == b->max_tracked_namespaces &&
               a->ns_check_ms == b->ns_check_ms;
}

/* The keys of the admin socket issue: [health] fail_open, [admin] access, [log] target. */
static bool
admin_equal(const struct config *a, const struct config *b)
{
        if (a->fail_open != b->fail_open || a->log_target != b->log_target ||
            strcmp(a->admin_socket_group, b->admin_socket_group) != 0 ||
            strcmp(a->admin_allowed_uids, b->admin_allowed_uids) != 0 ||
            strcmp(a->admin_allowed_gids, b->admin_allowed_gids) != 0 ||
            strcmp(a->admin_listen, b->admin_listen) != 0 || a->has_admin_gid != b->has_admin_gid ||
            a->admin_gid != b->admin_gid || a->n_admin_uids != b->n_admin_uids ||
            a->n_admin_gids != b->n_admin_gids || a->has_admin_listen != b->has_admin_listen)
                return false;
        for (int i = 0; i < a->n_admin_uids; i++) {
                if (a->admin_uids[i] != b->admin_uids[i])
                        return false;
        }
        for (int i = 0; i < a->n_admin_gids; i++) {
                if (a->admin_gids[i] != b->admin_gids[i])
                        return false;
        }
        return strcmp(a->admin_listen_addr.host, b->admin_listen_addr.host) == 0 &&
               a->admin_listen_addr.port == b->admin_listen_addr.port;
}

static bool
is_default(const struct config *c)
{
        struct config d;
        bool same;

        if (config_init(&d) != 0)
                return false;
        same = strcmp(c->socket, d.socket) == 0 && c->socket_mode == d.socket_mode &&
               c->max_clients == d.max_clients && c->max_request_bytes == d.max_request_bytes &&
               c->max_nesting == d.max_nesting && c->max_batch_keys == d.max_batch_keys &&
               c->drain_timeout_ms == d.drain_timeout_ms && strcmp(c->primary, d.primary) == 0 &&
               strcmp(c->replicas, d.replicas) == 0 && strcmp(c->password, d.password) == 0 &&
               strcmp(c->password_file, d.password_file) == 0 && c->db == d.db &&
               c->connect_timeout_ms == d.connect_timeout_ms &&
               c->command_timeout_ms == d.command_timeout_ms &&
               strcmp(c->key_prefix, d.key_prefix) == 0 && c->default_ttl == d.default_ttl &&
               c->max_ttl == d.max_ttl && c->log_level == d.log_level &&
               c->pool_size == d.pool_size && c->replica_pool_size == d.replica_pool_size &&
               c->read_from == d.read_from &&
               c->replica_attempt_timeout_ms == d.replica_attempt_timeout_ms &&
               c->max_inflight_per_node == d.max_inflight_per_node &&
               c->reconnect_max_ms == d.reconnect_max_ms &&
               c->max_replica_lag_ms == d.max_replica_lag_ms &&
               c->health_interval_ms == d.health_interval_ms &&
               c->health_timeout_ms == d.health_timeout_ms &&
               c->failure_threshold == d.failure_threshold &&
               c->recovery_threshold == d.recovery_threshold &&
               strcmp(c->sentinel_addresses, d.sentinel_addresses) == 0 &&
               strcmp(c->sentinel_master_name, d.sentinel_master_name) == 0 &&
               strcmp(c->sentinel_password, d.sentinel_password) == 0 &&
               c->n_sentinels == d.n_sentinels && strcmp(c->admin_socket, d.admin_socket) == 0 &&
               c->admin_socket_mode == d.admin_socket_mode && cache_equal(c, &d) &&
               admin_equal(c, &d);
        config_deinit(&d);
        return same;
}

static bool
addr_equal(const struct config_addr *a, const struct config_addr *b)
{
        if (a->is_unix != b->is_unix)
                return false;
        if (a->is_unix)
                return strcmp(a->path, b->path) == 0;
        return strcmp(a->host, b->host) == 0 && a->port == b->port;
}

/* Every setting and derived address; the password only if with_password. */
static bool
config_equal(const struct config *a, const struct config *b, bool with_password)
{
        if (strcmp(a->socket, b->socket) != 0 || a->socket_mode != b->socket_mode ||
            a->max_clients != b->max_clients || a->max_request_bytes != b->max_request_bytes ||
            a->max_nesting != b->max_nesting || a->max_batch_keys != b->max_batch_keys ||
            a->drain_timeout_ms != b->drain_timeout_ms || strcmp(a->primary, b->primary) != 0 ||
            strcmp(a->replicas, b->replicas) != 0 ||
            strcmp(a->password_file, b->password_file) != 0 || a->db != b->db ||
            a->connect_timeout_ms != b->connect_timeout_ms ||
            a->command_timeout_ms != b->command_timeout_ms ||
            strcmp(a->key_prefix, b->key_prefix) != 0 || a->default_ttl != b->default_ttl ||
            a->max_ttl != b->max_ttl || a->log_level != b->log_level)
                return false;
        if (a->pool_size != b->pool_size || a->replica_pool_size != b->replica_pool_size ||
            a->read_from != b->read_from ||
            a->replica_attempt_timeout_ms != b->replica_attempt_timeout_ms ||
            a->max_inflight_per_node != b->max_inflight_per_node ||
            a->reconnect_max_ms != b->reconnect_max_ms ||
            a->max_replica_lag_ms != b->max_replica_lag_ms ||
            a->health_interval_ms != b->health_interval_ms ||
            a->health_timeout_ms != b->health_timeout_ms ||
            a->failure_threshold != b->failure_threshold ||
            a->recovery_threshold != b->recovery_threshold ||
            strcmp(a->sentinel_addresses, b->sentinel_addresses) != 0 ||
            strcmp(a->sentinel_master_name, b->sentinel_master_name) != 0 ||
            strcmp(a->admin_socket, b->admin_socket) != 0 ||
            a->admin_socket_mode != b->admin_socket_mode || !cache_equal(a, b) ||
            !admin_equal(a, b))
                return false;
        if (with_password && (strcmp(a->password, b->password) != 0 ||
                              strcmp(a->sentinel_password, b->sentinel_password) != 0))
                return false;
        if (a->n_sentinels != b->n_sentinels)
                return false;
        for (int i = 0; i < a->n_sentinels; i++) {
                if (!addr_equal(&a->sentinel_addrs[i], &b->sentinel_addrs[i]))
                        return false;
        }
        if (!addr_equal(&a->primary_addr, &b->primary_addr) || a->n_replicas != b->n_replicas)
                return false;
        for (int i = 0; i < a->n_replicas; i++) {
                if (!addr_equal(&a->replica_addrs[i], &b->replica_addrs[i]))
                        return false;
        }
        return true;
}

/* Loads content and checks the error is exactly "PATH" + at + why (at: ":N: " or ": "). */
static void
expect_error_at(int line, const char *content, int err_line, const char *why)
{
        char path[PATH_BUF], err[MSG_BUF], want[MSG_BUF];
        struct config c;
        int r;

        r = load_text(content, &c, path, sizeof(path), err, sizeof(err));
        if (err_line > 0)
                snprintf(want, sizeof(want), "%s:%d: %s", path, err_line, why);
        else
                snprintf(want, sizeof(want), "%s: %s", path, why);
        check_at(line, r == -1, "load should fail with \"%s\"", want);
        check_at(line, r != -1 || strcmp(err, want) == 0, "error\n  got:  %s\n  want: %s", err,
                 want);
        check_at(line, is_default(&c), "a failed load must leave the defaults");
        config_deinit(&c);
}

#define EXPECT_ERROR(content, err_line, why) expect_error_at(__LINE__, content, err_line, why)

/* Loads content with the environment as it is; the error must be exactly want. */
static void
expect_env_error_at(int line, const char *content, const char *want)
{
        char path[PATH_BUF], err[MSG_BUF];
        struct config c;
        int r;

        r = load_text(content, &c, path, sizeof(path), err, sizeof(err));
        check_at(line, r == -1, "load should fail with \"%s\"", want);
        check_at(line, r != -1 || strcmp(err, want) == 0, "error\n  got:  %s\n  want: %s", err,
                 want);
        config_deinit(&c);
}

#define EXPECT_ENV_ERROR(content, want) expect_env_error_at(__LINE__, content, want)

static bool
load_ok_at(int line, const char *content, struct config *c, char *path, size_t pathlen)
{
        char err[MSG_BUF];
        int r;

        r = load_text(content, c, path, pathlen, err, sizeof(err));
        check_at(line, r == 0, "load should succeed, got: %s", err);
        return r == 0;
}

#define LOAD_OK(content, c, path) load_ok_at(__LINE__, content, c, path, sizeof(path))

static char *
repeat(char ch, size_t n)
{
        char *s = malloc(n + 1);

        if (s == NULL)
                exit(2);
        memset(s, ch, n);
        s[n] = '\0';
        return s;
}

static void
test_defaults(void)
{
        struct config c;
        char err[256], a[300];

        CHECK(config_init(&c) == 0, "config_init");
        CHECK(strcmp(c.socket, "/run/kcache/kcached.sock") == 0, "socket %s", c.socket);
        CHECK(c.socket_mode == 0660, "socket_mode %o", c.socket_mode);
        CHECK(c.max_clients == 1024, "max_clients");
        CHECK(c.max_request_bytes == 8388608, "max_request_bytes");
        CHECK(c.max_request_bytes >= 4 * 1024 * 1024, "max_request_bytes must default to >= 4 MiB");
        CHECK(c.max_nesting == 16, "max_nesting");
        CHECK(c.max_batch_keys == 10000, "max_batch_keys");
        CHECK(c.drain_timeout_ms == 5000, "drain_timeout_ms");
        CHECK(strcmp(c.primary, "127.0.0.1:6379") == 0, "primary");
        CHECK(!c.primary_addr.is_unix && strcmp(c.primary_addr.host, "127.0.0.1") == 0 &&
                      c.primary_addr.port == 6379,
              "primary_addr");
        CHECK(strcmp(c.replicas, "") == 0 && c.n_replicas == 0, "replicas");
        CHECK(strcmp(c.password, "") == 0 && strcmp(c.password_file, "") == 0, "password");
        CHECK(c.db == 0, "db");
        CHECK(c.connect_timeout_ms == 1000 && c.command_timeout_ms == 1000, "timeouts");
        CHECK(strcmp(c.key_prefix, "kc:") == 0, "key_prefix");
        CHECK(c.default_ttl == 3600 && c.max_ttl == 2592000, "ttls");
        CHECK(c.log_level == LOG_INFO, "log level");
        CHECK(c.pool_size == 4 && c.replica_pool_size == 2, "pool sizes %d %d", c.pool_size,
              c.replica_pool_size);
        CHECK(c.read_from == READ_FROM_REPLICA, "read_from %d", c.read_from);
        CHECK(c.replica_attempt_timeout_ms == 0, "replica_attempt_timeout_ms");
        CHECK(c.max_inflight_per_node == 10000, "max_inflight_per_node");
        CHECK(c.reconnect_max_ms == 1000, "reconnect_max_ms");
        CHECK(c.max_replica_lag_ms == 1000, "max_replica_lag_ms");
        CHECK(c.health_interval_ms == 500 && c.health_timeout_ms == 250, "health periods");
        CHECK(c.failure_threshold == 3 && c.recovery_threshold == 2, "health thresholds");
        CHECK(strcmp(c.sentinel_addresses, "") == 0 && c.n_sentinels == 0, "no sentinel");
        CHECK(strcmp(c.sentinel_master_name, "") == 0 && strcmp(c.sentinel_password, "") == 0,
              "sentinel master_name and password");
        CHECK(strcmp(c.admin_socket, "/run/kcache/kcached-admin.sock") == 0, "admin socket %s",
              c.admin_socket);
        CHECK(c.admin_socket_mode == 0600, "admin socket_mode %o", c.admin_socket_mode);
        CHECK(c.max_key_bytes == 1024, "max_key_bytes %lld", (long long)c.max_key_bytes);
        CHECK(c.max_value_bytes == 16777216, "max_value_bytes %lld", (long long)c.max_value_bytes);
        CHECK(c.compression == COMPRESSION_ZLIB, "compression %d", c.compression);
        CHECK(c.compression_level == 1, "compression_level %d", c.compression_level);
        CHECK(c.compression_threshold == 1024, "compression_threshold %lld",
              (long long)c.compression_threshold);
        CHECK(c.compress_inline_max == 1048576, "compress_inline_max %lld",
              (long long)c.compress_inline_max);
        CHECK(c.lease_ttl_ms == 5000 && c.max_wait_ms == 30000, "lease_ttl_ms %d max_wait_ms %d",
              c.lease_ttl_ms, c.max_wait_ms);
        CHECK(c.max_tracked_namespaces == 256, "max_tracked_namespaces %d",
              c.max_tracked_namespaces);
        CHECK(c.ns_check_ms == 1000, "ns_check_ms %d", c.ns_check_ms);
        CHECK(!c.fail_open, "fail_open");
        CHECK(strcmp(c.admin_socket_group, "") == 0 && !c.has_admin_gid, "socket_group");
        CHECK(strcmp(c.admin_allowed_uids, "") == 0 && c.n_admin_uids == 0, "allowed_uids");
        CHECK(strcmp(c.admin_allowed_gids, "") == 0 && c.n_admin_gids == 0, "allowed_gids");
        CHECK(strcmp(c.admin_listen, "") == 0 && !c.has_admin_listen, "listen");
        CHECK(c.log_target == LOG_TARGET_STDERR, "log target %d", c.log_target);
        CHECK(c.path == NULL, "path");
        for (int i = 0; i < 64; i++)
                CHECK(c.sources[i] == CONFIG_SRC_DEFAULT, "sources[%d]", i);
        CHECK(strcmp(config_addr_str(&c.primary_addr, a, sizeof(a)), "127.0.0.1:6379") == 0,
              "addr_str %s", a);
        config_deinit(&c);

        CHECK(config_load(&c, NULL, err, sizeof(err)) == 0, "load NULL: %s", err);
        CHECK(is_default(&c) && c.path == NULL, "load NULL gives the defaults");
        config_deinit(&c);

        CHECK(strcmp(log_level_name(LOG_DEBUG), "debug") == 0 &&
                      strcmp(log_level_name(LOG_INFO), "info") == 0 &&
                      strcmp(log_level_name(LOG_WARN), "warn") == 0 &&
                      strcmp(log_level_name(LOG_ERROR), "error") == 0 &&
                      strcmp(log_level_name(7), "unknown") == 0 &&
                      strcmp(log_level_name(-1), "unknown") == 0,
              "log_level_name");
        CHECK(strcmp(config_read_from_name(READ_FROM_REPLICA), "replica") == 0 &&
                      strcmp(config_read_from_name(READ_FROM_PRIMARY), "primary") == 0 &&
                      strcmp(config_read_from_name(READ_FROM_ANY), "any") == 0 &&
                      strcmp(config_read_from_name(3), "unknown") == 0 &&
                      strcmp(config_read_from_name(-1), "unknown") == 0,
              "config_read_from_name");
        CHECK(strcmp(config_compression_name(COMPRESSION_ZLIB), "zlib") == 0 &&
                      strcmp(config_compression_name(COMPRESSION_OFF), "off") == 0 &&
                      strcmp(config_compression_name(2), "unknown") == 0 &&
                      strcmp(config_compression_name(-1), "unknown") == 0,
              "config_compression_name");
        CHECK(strcmp(config_log_target_name(LOG_TARGET_STDERR), "stderr") == 0 &&
                      strcmp(config_log_target_name(LOG_TARGET_SYSLOG), "syslog") == 0 &&
                      strcmp(config_log_target_name(2), "unknown") == 0,
              "config_log_target_name");
}

static const char full_file[] =
        "; a full configuration\n"                                       /* 1 */
        "[server]\n"                                                     /* 2 */
        "socket = /tmp/kc test.sock\n"                                   /* 3 */
        "socket_mode = 0600\n"                                           /* 4 */
        "max_clients = 77\n"                                             /* 5 */
        "max_request_bytes = 1073741824\n"                               /* 6 */
        "max_nesting = 32\n"                                             /* 7 */
        "max_batch_keys = 1\n"                                           /* 8 */
        "drain_timeout_ms = 0\n"                                         /* 9 */
        "\n"                                                             /* 10 */
        "[redis]\n"                                                      /* 11 */
        "primary = redis-1.example_net:7000\n"                           /* 12 */
        "replicas = 10.0.0.2:7001 ,[::1]:7002,\tunix:/run/redis.sock \n" /* 13 */
        "password = hunter2\n"                                           /* 14 */
        "db = 15\n"                                                      /* 15 */
        "connect_timeout_ms = 250\n"                                     /* 16 */
        "command_timeout_ms = 600000\n"                                  /* 17 */
        "pool_size = 64\n"                                               /* 18 */
        "replica_pool_size = 1\n"                                        /* 19 */
        "read_from = any\n"                                              /* 20 */
        "replica_attempt_timeout_ms = 2500\n"                            /* 21 */
        "max_inflight_per_node = 1000000\n"                              /* 22 */
        "reconnect_max_ms = 10\n"                                        /* 23 */
        "max_replica_lag_ms = 1\n"                                       /* 24 */
        "# hash comment\n"                                               /* 25 */
        "[health]\n"                                                     /* 26 */
        "interval_ms = 60000\n"                                          /* 27 */
        "timeout_ms = 1\n"                                               /* 28 */
        "failure_threshold = 100\n"                                      /* 29 */
        "recovery_threshold = 1\n"                                       /* 30 */
        "fail_open = yes\n"                                              /* 31 */
        "[sentinel]\n"                                                   /* 32 */
        "master_name = mymaster\n"                                       /* 33 */
        "password = sentinel-secret\n"                                   /* 34 */
        "[admin]\n"                                                      /* 35 */
        "socket = /tmp/kc admin.sock\n"                                  /* 36 */
        "socket_mode = 0660\n"                                           /* 37 */
        "socket_group = root\n"                                          /* 38 */
        "allowed_uids = nobody, 1000 ,root\n"                            /* 39 */
        "allowed_gids = 0,nogroup\n"                                     /* 40 */
        "listen = 127.0.0.1:9121\n"                                      /* 41 */
        "[cache]\n"                                                      /* 42 */
        "key_prefix = app:v2:\n"                                         /* 43 */
        "default_ttl = 60\n"                                             /* 44 */
        "max_ttl = 2147483647\n"                                         /* 45 */
        "max_key_bytes = 65536\n"                                        /* 46 */
        "max_value_bytes = 1073741824\n"                                 /* 47 */
        "compression = off\n"                                            /* 48 */
        "compression_level = 9\n"                                        /* 49 */
        "compression_threshold = 0\n"                                    /* 50 */
        "compress_inline_max = 1073741824\n"                             /* 51 */
        "lease_ttl_ms = 10\n"                                            /* 52 */
        "max_wait_ms = 600000\n"                                         /* 53 */
        "max_tracked_namespaces = 100000\n"                              /* 54 */
        "ns_check_ms = 10\n"                                             /* 55 */
        "[log]\n"                                                        /* 56 */
        "level = debug\n"                                                /* 57 */
        "target = syslog\n";                                             /* 58 */

static void
test_full_file(void)
{
        struct config c;
        char path[PATH_BUF], a[300];

        if (!LOAD_OK(full_file, &c, path))
                return;
        CHECK(strcmp(c.socket, "/tmp/kc test.sock") == 0, "socket '%s'", c.socket);
        CHECK(c.socket_mode == 0600, "socket_mode");
        CHECK(c.max_clients == 77, "max_clients");
        CHECK(c.max_request_bytes == 1073741824, "max_request_bytes");
        CHECK(c.max_nesting == 32 && c.max_batch_keys == 1 && c.drain_timeout_ms == 0, "server");
        CHECK(strcmp(c.primary, "redis-1.example_net:7000") == 0, "primary");
        CHECK(strcmp(c.primary_addr.host, "redis-1.example_net") == 0 &&
                      c.primary_addr.port == 7000,
              "primary_addr");
        CHECK(strcmp(c.replicas, "10.0.0.2:7001 ,[::1]:7002,\tunix:/run/redis.sock") == 0,
              "replicas as written: '%s'", c.replicas);
        CHECK(c.n_replicas == 3, "n_replicas %d", c.n_replicas);
        if (c.n_replicas == 3) {
                CHECK(strcmp(config_addr_str(&c.replica_addrs[0], a, sizeof(a)), "10.0.0.2:7001") ==
                              0,
                      "replica 0 %s", a);
                CHECK(strcmp(c.replica_addrs[1].host, "::1") == 0 &&
                              strcmp(config_addr_str(&c.replica_addrs[1], a, sizeof(a)),
                                     "[::1]:7002") == 0,
                      "replica 1 %s", a);
                CHECK(c.replica_addrs[2].is_unix &&
                              strcmp(c.replica_addrs[2].path, "/run/redis.sock") == 0 &&
                              strcmp(config_addr_str(&c.replica_addrs[2], a, sizeof(a)),
                                     "unix:/run/redis.sock") == 0,
                      "replica 2 %s", a);
        }
        CHECK(strcmp(c.password, "hunter2") == 0, "password");
        CHECK(c.db == 15 && c.connect_timeout_ms == 250 && c.command_timeout_ms == 600000,
              "redis ints");
        CHECK(strcmp(c.key_prefix, "app:v2:") == 0, "key_prefix");
        CHECK(c.default_ttl == 60 && c.max_ttl == 2147483647, "ttls");
        CHECK(c.log_level == LOG_DEBUG, "level");
        CHECK(c.pool_size == 64 && c.replica_pool_size == 1, "pool sizes");
        CHECK(c.read_from == READ_FROM_ANY, "read_from");
        CHECK(c.replica_attempt_timeout_ms == 2500 && c.max_inflight_per_node == 1000000 &&
                      c.reconnect_max_ms == 10 && c.max_replica_lag_ms == 1,
              "redis backend ints");
        CHECK(c.health_interval_ms == 60000 && c.health_timeout_ms == 1 &&
                      c.failure_threshold == 100 && c.recovery_threshold == 1,
              "health");
        CHECK(strcmp(c.sentinel_master_name, "mymaster") == 0 &&
                      strcmp(c.sentinel_password, "sentinel-secret") == 0 && c.n_sentinels == 0,
              "sentinel without addresses");
        CHECK(strcmp(c.admin_socket, "/tmp/kc admin.sock") == 0 && c.admin_socket_mode == 0660,
              "admin");
        CHECK(c.socket_mode == 0600, "[server] socket_mode is not [admin]'s");
        CHECK(c.fail_open, "fail_open");
        CHECK(strcmp(c.admin_socket_group, "root") == 0 && c.has_admin_gid && c.admin_gid == 0,
              "socket_group");
        CHECK(strcmp(c.admin_allowed_uids, "nobody, 1000 ,root") == 0 && c.n_admin_uids == 3 &&
                      c.admin_uids[0] == 65534 && c.admin_uids[1] == 1000 && c.admin_uids[2] == 0,
              "allowed_uids: %d", c.n_admin_uids);
        CHECK(c.n_admin_gids == 2 && c.admin_gids[0] == 0 && c.admin_gids[1] == 65534,
              "allowed_gids: %d", c.n_admin_gids);
        CHECK(c.has_admin_listen && strcmp(c.admin_listen_addr.host, "127.0.0.1") == 0 &&
                      c.admin_listen_addr.port == 9121,
              "listen");
        CHECK(c.log_target == LOG_TARGET_SYSLOG, "target");
        CHECK(c.max_key_bytes == 65536 && c.max_value_bytes == 1073741824, "cache sizes");
        CHECK(c.compression == COMPRESSION_OFF && c.compression_level == 9 &&
                      c.compression_threshold == 0 && c.compress_inline_max == 1073741824,
              "compression keys");
        CHECK(c.lease_ttl_ms == 10 && c.max_wait_ms == 600000 &&
                      c.max_tracked_namespaces == 100000 && c.ns_check_ms == 10,
              "lease and namespace keys");
        CHECK(c.path != NULL && strcmp(c.path, path) == 0, "path");
        for (int i = 0; i < N_KEYS; i++) {
                /* password_file and [sentinel] addresses are the keys the file leaves alone. */
                bool is_unset = i == I_PASSWORD_FILE || i == I_ADDRESSES || IS_LATER(i);
                CHECK(c.sources[i] == (is_unset ? CONFIG_SRC_DEFAULT : CONFIG_SRC_FILE),
                      "sources[%d] = %d", i, c.sources[i]);
        }
#ifdef CONFIG_HAVE_ORIGINS
        CHECK(c.lines[I_REPLICA_ATT] == 21 && c.lines[I_INTERVAL] == 27 &&
                      c.lines[I_ADMIN_SOCKET] == 36 && c.lines[I_KEY_PREFIX] == 43,
              "lines of the new keys");
        CHECK(c.lines[I_FAIL_OPEN] == 31 && c.lines[I_ALLOWED_UIDS] == 39 &&
                      c.lines[I_LISTEN] == 41 && c.lines[I_TARGET] == 58,
              "lines of the admin keys: %d %d %d %d", c.lines[I_FAIL_OPEN], c.lines[I_ALLOWED_UIDS],
              c.lines[I_LISTEN], c.lines[I_TARGET]);
        CHECK(c.lines[I_COMPRESSION] == 48 && c.lines[I_NS_CHECK] == 55 && c.lines[I_LEVEL] == 57,
              "lines of the [cache] keys: %d %d %d", c.lines[I_COMPRESSION], c.lines[I_NS_CHECK],
              c.lines[I_LEVEL]);
#endif
        config_deinit(&c);
}

static void
test_syntax_errors(void)
{
        char *s, *line;
        size_t n;

        EXPECT_ERROR("[server]\nmax_clients = 1\n[servers]\nmax_clients = 2\n", 3,
                     "[servers]: unknown section");
        /* An unknown section with no keys: the handler would never see it. */
        EXPECT_ERROR("[server]\n\n[bogus] ; nothing here\n", 3, "[bogus]: unknown section");
        EXPECT_ERROR("[ server ]\n", 1, "[ server ]: unknown section");
        EXPECT_ERROR("[server]\nmax_client = 5\n", 2, "[server] max_client: unknown key");
        EXPECT_ERROR("[log]\nLevel = info\n", 2, "[log] Level: unknown key");
        EXPECT_ERROR("[redis]\ndb = 1\n\n; again\ndb = 2\n", 5,
                     "[redis] db: duplicate key (first set at line 2)");
        /* The same key in a repeated section is still a duplicate. */
        EXPECT_ERROR("[log]\nlevel = warn\n[server]\n[log]\nlevel = warn\n", 5,
                     "[log] level: duplicate key (first set at line 2)");
        EXPECT_ERROR("; top\nmax_clients = 5\n[server]\n", 2,
                     "max_clients: key outside any [section]");
        EXPECT_ERROR("[server]\nmax_clients\n", 2,
                     "syntax error: expected [section], key = value or a comment");
        EXPECT_ERROR("[server\nmax_clients = 5\n", 1,
                     "syntax error: expected [section], key = value or a comment");
        /* libinih would append "  6" to max_clients' value. */
        EXPECT_ERROR("[server]\nmax_clients = 5\n  6\n", 3,
                     "line starts with whitespace: libinih would append it to the previous "
                     "key's value");
        EXPECT_ERROR("[server]\nmax_clients = 5\n\t[redis]\n", 3,
                     "line starts with whitespace: libinih would append it to the previous "
                     "key's value");
        {
                static const char nul[] = "[server]\nmax_clients = 5\0 6\n";
                char path[PATH_BUF], err[MSG_BUF], want[MSG_BUF];
                struct config c;
                write_bytes(path, sizeof(path), nul, sizeof(nul) - 1);
                snprintf(want, sizeof(want), "%s:2: line contains a NUL byte", path);
                CHECK(config_load(&c, path, err, sizeof(err)) == -1 && strcmp(err, want) == 0,
                      "NUL byte: %s", err);
                config_deinit(&c);
        }
        {
                char path[PATH_BUF], err[MSG_BUF], want[MSG_BUF];
                struct config c;
                snprintf(path, sizeof(path), "%s/does-not-exist.ini", tmpdir);
                CHECK(config_load(&c, path, err, sizeof(err)) == -1, "missing file");
                snprintf(want, sizeof(want), "%s: cannot open: No such file or directory", path);
                CHECK(strcmp(err, want) == 0, "missing file: %s", err);
                CHECK(is_default(&c), "missing file leaves defaults");
                config_deinit(&c);
        }

        /* Lines of 199 bytes (newline included) or more are refused; 198 pass. */
        n = strlen("key_prefix = ");
        s = repeat('x', 199 - n - 1);
        if (asprintf(&line, "[cache]\nkey_prefix = %s\n[log]\n", s) < 0)
                exit(2);
        EXPECT_ERROR(line, 2, "line is 199 bytes long, at most 198 are allowed");
        free(line);
        free(s);
        s = repeat('x', 198 - n - 1);
        if (asprintf(&line, "[cache]\nkey_prefix = %s\n[log]\n", s) < 0)
                exit(2);
        {
                struct config c;
                char path[PATH_BUF];
                if (LOAD_OK(line, &c, path)) {
                        CHECK(strlen(c.key_prefix) == 198 - n - 1 && strcmp(c.key_prefix, s) == 0,
                              "198-byte line kept whole");
                        config_deinit(&c);
                }
        }
        free(line);
        free(s);
        /* The last line, without a newline: 199 bytes refused, 198 accepted. */
        s = repeat(';', 199);
        if (asprintf(&line, "[log]\n%s", s) < 0)
                exit(2);
        EXPECT_ERROR(line, 2, "line is 199 bytes long, at most 198 are allowed");
        free(line);
        free(s);
        s = repeat(';', 198);
        {
                struct config c;
                char path[PATH_BUF];
                if (LOAD_OK(s, &c, path))
                        config_deinit(&c);
        }
        free(s);
        s = repeat('#', 5000);
        if (asprintf(&line, "[log]\n\n%s\n", s) < 0)
                exit(2);
        EXPECT_ERROR(line, 3, "line is 5001 bytes long, at most 198 are allowed");
        free(line);
        free(s);

        /*
         * The libinih hazard: cut at 199 bytes, the tail of this list would be
         * read as a line of its own, and the first replicas silently kept.
         */
        {
                char list[400] = "";
                for (int i = 0; i < 16; i++) {
                        char item[32];
                        snprintf(item, sizeof(item), "%s10.1.1.%d:6379", i > 0 ? ", " : "", i);
                        strcat(list, item);
                }
                if (asprintf(&line, "[redis]\nreplicas = %s\n", list) < 0)
                        exit(2);
                CHECK(strlen(list) + 12 > 199, "the replicas line must be long");
                char why[64];
                snprintf(why, sizeof(why), "line is %zu bytes long, at most 198 are allowed",
                         strlen(list) + 12);
                EXPECT_ERROR(line, 2, why);
                free(line);
        }
}

static void
test_value_errors(void)
{
        EXPECT_ERROR("[server]\nmax_clients = 0\n", 2,
                     "[server] max_clients: 0 is out of range 1..1000000");
        EXPECT_ERROR("[server]\nmax_clients = -5\n", 2,
                     "[server] max_clients: -5 is out of range 1..1000000");
        EXPECT_ERROR("[server]\nmax_request_bytes = 1023\n", 2,
                     "[server] max_request_bytes: 1023 is out of range 1024..1073741824");
        EXPECT_ERROR("[redis]\ndb = 16\n", 2, "[redis] db: 16 is out of range 0..15");
        EXPECT_ERROR("[cache]\nmax_ttl = 2147483648\n", 2,
                     "[cache] max_ttl: 2147483648 is out of range 1..2147483647");
        EXPECT_ERROR("[cache]\nmax_ttl = 99999999999999999999\n", 2,
                     "[cache] max_ttl: 99999999999999999999 is out of range 1..2147483647");
        EXPECT_ERROR("[server]\nmax_clients = 12abc\n", 2,
                     "[server] max_clients: '12abc' is not a decimal integer");
        EXPECT_ERROR("[server]\nmax_clients = +5\n", 2,
                     "[server] max_clients: '+5' is not a decimal integer");
        EXPECT_ERROR("[server]\nmax_clients = 0x10\n", 2,
                     "[server] max_clients: '0x10' is not a decimal integer");
        EXPECT_ERROR("[server]\nmax_clients = 1 000\n", 2,
                     "[server] max_clients: '1 000' is not a decimal integer");
        EXPECT_ERROR("[server]\nmax_clients = 1.5\n", 2,
                     "[server] max_clients: '1.5' is not a decimal integer");
        EXPECT_ERROR("[server]\nmax_clients = -\n", 2,
                     "[server] max_clients: '-' is not a decimal integer");
        EXPECT_ERROR("[server]\nmax_clients =\n", 2,
                     "[server] max_clients: empty value (expected a decimal integer)");
        EXPECT_ERROR("[server]\nmax_clients = ; a comment only\n", 2,
                     "[server] max_clients: empty value (expected a decimal integer)");
        EXPECT_ERROR("[server]\nsocket_mode = 0680\n", 2,
                     "[server] socket_mode: '0680' is not an octal number");
        EXPECT_ERROR("[server]\nsocket_mode = 01000\n", 2,
                     "[server] socket_mode: 01000 is out of range 0..0777");
        EXPECT_ERROR("[server]\nsocket_mode = rw-rw----\n", 2,
                     "[server] socket_mode: 'rw-rw----' is not an octal number");
        EXPECT_ERROR("[server]\nsocket_mode =\n", 2,
                     "[server] socket_mode: empty value (expected an octal mode)");
        EXPECT_ERROR("[server]\nsocket =\n", 2, "[server] socket: empty value (expected a path)");
        EXPECT_ERROR("[log]\nlevel = verbose\n", 2,
                     "[log] level: 'verbose' is not one of debug, info, warn, error");
        EXPECT_ERROR("[log]\nlevel = INFO\n", 2,
                     "[log] level: 'INFO' is not one of debug, info, warn, error");

        /* Addresses, through the file. */
        EXPECT_ERROR("[redis]\nprimary = localhost\n", 2,
                     "[redis] primary: 'localhost' is not host:port, [v6]:port or unix:/path "
                     "(missing :port)");
        EXPECT_ERROR("[redis]\nprimary = localhost:0\n", 2,
                     "[redis] primary: 'localhost:0': '0' is not a port (1..65535)");
        EXPECT_ERROR("[redis]\nprimary = localhost:65536\n", 2,
                     "[redis] primary: 'localhost:65536': '65536' is not a port (1..65535)");
        EXPECT_ERROR("[redis]\nprimary = ::1:6379\n", 2,
                     "[redis] primary: '::1:6379': an IPv6 address needs brackets: [v6]:port");
        EXPECT_ERROR("[redis]\nprimary = unix:run/redis.sock\n", 2,
                     "[redis] primary: 'unix:run/redis.sock': unix: needs an absolute path");
        EXPECT_ERROR("[redis]\nprimary =\n", 2,
                     "[redis] primary: empty value (expected host:port, [v6]:port or "
                     "unix:/path)");
        EXPECT_ERROR("[redis]\nreplicas = a:1,,b:2\n", 2,
                     "[redis] replicas: empty item in the list");
        EXPECT_ERROR("[redis]\nreplicas = a:1,\n", 2, "[redis] replicas: empty item in the list");
        EXPECT_ERROR("[redis]\nreplicas = a:1, b\n", 2,
                     "[redis] replicas: 'b' is not host:port, [v6]:port or unix:/path (missing "
                     ":port)");
        EXPECT_ERROR("[redis]\nreplicas = a:1,b:1,c:1,d:1,e:1,f:1,g:1,h:1,i:1,j:1,k:1,l:1,m:1,"
                     "n:1,o:1,p:1,q:1\n",
                     2, "[redis] replicas: more than 16 addresses");

        /* Cross-key checks, named at the line of the key written last. */
        EXPECT_ERROR("[cache]\nmax_ttl = 100\ndefault_ttl = 200\n", 3,
                     "[cache] default_ttl: 200 is greater than max_ttl 100");
        EXPECT_ERROR("[cache]\ndefault_ttl = 200\nmax_ttl = 100\n", 3,
                     "[cache] max_ttl: 100 is less than default_ttl 200");
        EXPECT_ERROR("[cache]\nmax_ttl = 100\n", 2,
                     "[cache] max_ttl: 100 is less than default_ttl 3600");
        EXPECT_ERROR("[redis]\npassword = x\npassword_file = /etc/passwd\n", 3,
                     "[redis] password_file: cannot be used with password (line 2)");
        EXPECT_ERROR("[redis]\npassword_file = /etc/passwd\n\npassword = x\n", 4,
                     "[redis] password: cannot be used with password_file (line 2)");
}

/* The backend keys: every range end, the read_from names, [admin] and [sentinel] values. */
static void
test_backend_values(void)
{
        static const struct {
                const char *section, *key;
                long long lo, hi;
        } ranges[] = {
                {"redis", "pool_size", 1, 64},
                {"redis", "replica_pool_size", 1, 64},
                {"redis", "replica_attempt_timeout_ms", 0, 600000},
                {"redis", "max_inflight_per_node", 1, 1000000},
                {"redis", "reconnect_max_ms", 10, 60000},
                {"redis", "max_replica_lag_ms", 1, 600000},
                {"health", "interval_ms", 10, 60000},
                {"health", "timeout_ms", 1, 60000},
                {"health", "failure_threshold", 1, 100},
                {"health", "recovery_threshold", 1, 100},
        };
        struct config c;
        char path[PATH_BUF], ini[MSG_BUF], why[MSG_BUF], a[300];
        char *s, *line;

        for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++) {
                const char *sec = ranges[i].section, *key = ranges[i].key;
                /* command_timeout_ms at its top, so replica_attempt_timeout_ms may be too. */
                static const char head[] = "[redis]\ncommand_timeout_ms = 600000\n";
                long long bad[] = {ranges[i].lo - 1, ranges[i].hi + 1};
                long long good[] = {ranges[i].lo, ranges[i].hi};
                for (int j = 0; j < 2; j++) {
                        snprintf(ini, sizeof(ini), "%s[%s]\n%s = %lld\n", head, sec, key, bad[j]);
                        snprintf(why, sizeof(why), "[%s] %s: %lld is out of range %lld..%lld", sec,
                                 key, bad[j], ranges[i].lo, ranges[i].hi);
                        EXPECT_ERROR(ini, 4, why);
                        snprintf(ini, sizeof(ini), "%s[%s]\n%s = %lld\n", head, sec, key, good[j]);
                        if (LOAD_OK(ini, &c, path))
                                config_deinit(&c);
                }
                snprintf(ini, sizeof(ini), "[%s]\n%s = 5ms\n", sec, key);
                snprintf(why, sizeof(why), "[%s] %s: '5ms' is not a decimal integer", sec, key);
                EXPECT_ERROR(ini, 2, why);
        }

        /* read_from: exactly one of the three names. */
        static const struct {
                const char *name;
                int value;
        } modes[] = {
                {"replica", READ_FROM_REPLICA},
                {"primary", READ_FROM_PRIMARY},
                {"any", READ_FROM_ANY},
        };
        for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
                snprintf(ini, sizeof(ini), "[redis]\nread_from = %s ; comment\n", modes[i].name);
                if (LOAD_OK(ini, &c, path)) {
                        CHECK(c.read_from == modes[i].value, "read_from = %s", modes[i].name);
                        config_deinit(&c);
                }
        }
        EXPECT_ERROR("[redis]\nread_from = master\n", 2,
                     "[redis] read_from: 'master' is not one of replica, primary, any");
        EXPECT_ERROR("[redis]\n\nread_from = Replica\n", 3,
                     "[redis] read_from: 'Replica' is not one of replica, primary, any");
        EXPECT_ERROR("[redis]\nread_from = replicas\n", 2,
                     "[redis] read_from: 'replicas' is not one of replica, primary, any");
        EXPECT_ERROR("[redis]\nread_from =\n", 2,
                     "[redis] read_from: '' is not one of replica, primary, any");
        EXPECT_ERROR("[health]\nread_from = any\n", 2, "[health] read_from: unknown key");
        /* The INI names of [health] keys carry no prefix. */
        EXPECT_ERROR("[health]\nhealth_interval_ms = 100\n", 2,
                     "[health] health_interval_ms: unknown key");
        EXPECT_ERROR("[redis]\ninterval_ms = 100\n", 2, "[redis] interval_ms: unknown key");
        EXPECT_ERROR("[admin]\nadmin_socket = /tmp/a\n", 2, "[admin] admin_socket: unknown key");
        EXPECT_ERROR("[sentinel]\nsentinel_addresses = a:1\n", 2,
                     "[sentinel] sentinel_addresses: unknown key");

        /* [admin] socket: empty disables it; otherwise it must fit sun_path. */
        if (LOAD_OK("[admin]\nsocket =\nsocket_mode = 0\n", &c, path)) {
                CHECK(strcmp(c.admin_socket, "") == 0 && c.admin_socket_mode == 0,
                      "empty admin socket: '%s' %o", c.admin_socket, c.admin_socket_mode);
                CHECK(c.socket_mode == 0660, "[server] socket_mode untouched");
                config_deinit(&c);
        }
        s = repeat('a', 107 - 5);
        snprintf(ini, sizeof(ini), "[admin]\nsocket = /tmp/%s\n", s);
        if (LOAD_OK(ini, &c, path)) {
                CHECK(strlen(c.admin_socket) == 107, "107-byte admin socket");
                config_deinit(&c);
        }
        free(s);
        s = repeat('a', 108 - 5);
        if (asprintf(&line, "[admin]\nsocket = /tmp/%s\n", s) < 0)
                exit(2);
        EXPECT_ERROR(line, 2, "[admin] socket: path longer than 107 bytes");
        free(line);
        free(s);
        EXPECT_ERROR("[admin]\nsocket_mode = 01000\n", 2,
                     "[admin] socket_mode: 01000 is out of range 0..0777");
        EXPECT_ERROR("[admin]\nsocket_mode = 0x1ff\n", 2,
                     "[admin] socket_mode: '0x1ff' is not an octal number");
        EXPECT_ERROR("[admin]\nsocket_mode =\n", 2,
                     "[admin] socket_mode: empty value (expected an octal mode)");

        /* [sentinel] addresses: host:port and [v6]:port, never unix:. */
        if (LOAD_OK("[sentinel]\n"
                    "addresses = s1.example:26379, [::1]:26380 ,10.0.0.3:26381\n"
                    "master_name = my-master\n",
                    &c, path)) {
                CHECK(c.n_sentinels == 3, "n_sentinels %d", c.n_sentinels);
                if (c.n_sentinels == 3) {
                        CHECK(strcmp(config_addr_str(&c.sentinel_addrs[0], a, sizeof(a)),
                                     "s1.example:26379") == 0,
                              "sentinel 0 %s", a);
                        CHECK(strcmp(c.sentinel_addrs[1].host, "::1") == 0 &&
                                      c.sentinel_addrs[1].port == 26380 &&
                                      !c.sentinel_addrs[1].is_unix,
                              "sentinel 1");
                        CHECK(strcmp(config_addr_str(&c.sentinel_addrs[2], a, sizeof(a)),
                                     "10.0.0.3:26381") == 0,
                              "sentinel 2 %s", a);
                }
                CHECK(strcmp(c.sentinel_addresses,
                             "s1.example:26379, [::1]:26380 ,10.0.0.3:26381") == 0,
                      "addresses as written: '%s'", c.sentinel_addresses);
                CHECK(strcmp(c.sentinel_master_name, "my-master") == 0, "master_name");
                CHECK(c.sources[IX(7)] == CONFIG_SRC_DEFAULT && c.sources[IX(8)] == CONFIG_SRC_DEFAULT &&
                              c.n_replicas == 0,
                      "primary and replicas stay defaults");
                config_deinit(&c);
        }
        {
                char list[200] = "";
                for (int i = 0; i < 16; i++) {
                        char item[16];
                        snprintf(item, sizeof(item), "%ss%d:%d", i > 0 ? "," : "", i, 26379 + i);
                        strcat(list, item);
                }
                snprintf(ini, sizeof(ini), "[sentinel]\naddresses = %s\nmaster_name = m\n", list);
                if (LOAD_OK(ini, &c, path)) {
                        CHECK(c.n_sentinels == 16 && c.sentinel_addrs[15].port == 26394 &&
                                      strcmp(c.sentinel_addrs[15].host, "s15") == 0,
                              "16 sentinels");
                        config_deinit(&c);
                }
                snprintf(ini, sizeof(ini), "[sentinel]\naddresses = %s,s16:1\nmaster_name = m\n",
                         list);
                EXPECT_ERROR(ini, 2, "[sentinel] addresses: more than 16 addresses");
        }
        /* A blank list is no Sentinel: master_name is not required, primary may be set. */
        if (LOAD_OK("[sentinel]\naddresses =   \n[redis]\nprimary = 10.0.0.1:7000\n", &c, path)) {
                CHECK(c.n_sentinels == 0, "blank addresses");
                config_deinit(&c);
        }
        EXPECT_ERROR("[sentinel]\naddresses = unix:/run/sentinel.sock\n", 2,
                     "[sentinel] addresses: 'unix:/run/sentinel.sock': expected host:port or "
                     "[v6]:port, not unix:");
        EXPECT_ERROR("[sentinel]\naddresses = s1:26379, unix:/s\n", 2,
                     "[sentinel] addresses: 'unix:/s': expected host:port or [v6]:port, not "
                     "unix:");
        EXPECT_ERROR("[sentinel]\naddresses = s1:26379,,s2:26379\n", 2,
                     "[sentinel] addresses: empty item in the list");
        EXPECT_ERROR("[sentinel]\naddresses = s1\n", 2,
                     "[sentinel] addresses: 's1' is not host:port, [v6]:port or unix:/path "
                     "(missing :port)");
        EXPECT_ERROR("[sentinel]\naddresses = s1:0\n", 2,
                     "[sentinel] addresses: 's1:0': '0' is not a port (1..65535)");
        EXPECT_ERROR("[sentinel]\naddresses = ::1:26379\n", 2,
                     "[sentinel] addresses: '::1:26379': an IPv6 address needs brackets: "
                     "[v6]:port");
}

/* The [cache] keys of the cache semantics: every range end, one past each, the compression names.
 */
static void
test_cache_values(void)
{
        static const struct {
                const char *key;
                long long lo, hi;
        } ranges[] = {
                {"max_key_bytes", 1, 65536},
                {"max_value_bytes", 1, 1073741824},
                {"compression_level", 1, 9},
                {"compression_threshold", 0, 1073741824},
                {"compress_inline_max", 0, 1073741824},
                {"lease_ttl_ms", 10, 600000},
                {"max_wait_ms", 10, 600000},
                {"max_tracked_namespaces", 1, 100000},
                {"ns_check_ms", 10, 600000},
        };
        struct config c;
        char path[PATH_BUF], ini[MSG_BUF], why[MSG_BUF];

        for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++) {
                const char *key = ranges[i].key;
                long long bad[] = {ranges[i].lo - 1, ranges[i].hi + 1};
                long long good[] = {ranges[i].lo, ranges[i].hi};
                for (int j = 0; j < 2; j++) {
                        snprintf(ini, sizeof(ini), "[cache]\n%s = %lld\n", key, bad[j]);
                        snprintf(why, sizeof(why), "[cache] %s: %lld is out of range %lld..%lld",
                                 key, bad[j], ranges[i].lo, ranges[i].hi);
                        EXPECT_ERROR(ini, 2, why);
                        snprintf(ini, sizeof(ini), "[cache]\n%s = %lld\n", key, good[j]);
                        if (LOAD_OK(ini, &c, path)) {
                                char *dump = NULL;
                                size_t len = 0;
                                FILE *f = open_memstream(&dump, &len);
                                if (f == NULL)
                                        exit(2);
                                config_dump(&c, f);
                                if (fclose(f) != 0 || dump == NULL)
                                        exit(2);
                                snprintf(why, sizeof(why), "\n%s = %lld ; %s:2\n", key, good[j],
                                         path);
                                CHECK(strstr(dump, why) != NULL, "%s = %lld not in the dump:\n%s",
                                      key, good[j], dump);
                                free(dump);
                                config_deinit(&c);
                        }
                }
                snprintf(ini, sizeof(ini), "[cache]\n%s = 1k\n", key);
                snprintf(why, sizeof(why), "[cache] %s: '1k' is not a decimal integer", key);
                EXPECT_ERROR(ini, 2, why);
                snprintf(ini, sizeof(ini), "[server]\n%s = 100\n", key);
                snprintf(why, sizeof(why), "[server] %s: unknown key", key);
                EXPECT_ERROR(ini, 2, why);
        }
        /* The fields each range lands in, at both ends (int64_t fields at their tops). */
        if (LOAD_OK("[cache]\nmax_key_bytes = 65536\nmax_value_bytes = 1\n"
                    "compression_threshold = 1073741824\ncompress_inline_max = 0\n"
                    "lease_ttl_ms = 600000\nmax_wait_ms = 10\nmax_tracked_namespaces = 1\n"
                    "ns_check_ms = 600000\ncompression_level = 9\n",
                    &c, path)) {
                CHECK(c.max_key_bytes == 65536 && c.max_value_bytes == 1 &&
                              c.compression_threshold == 1073741824 && c.compress_inline_max == 0,
                      "[cache] sizes");
                CHECK(c.lease_ttl_ms == 600000 && c.max_wait_ms == 10 &&
                              c.max_tracked_namespaces == 1 && c.ns_check_ms == 600000 &&
                              c.compression_level == 9,
                      "[cache] ints");
                CHECK(c.compression == COMPRESSION_ZLIB, "compression untouched");
                config_deinit(&c);
        }
        /* No cross-key checks: a value may be larger than a request, the threshold above the
         * inline limit (nothing is compressed then), the lease longer than the wait cap. */
        if (LOAD_OK("[server]\nmax_request_bytes = 1024\n[cache]\nmax_value_bytes = 1073741824\n"
                    "compression_threshold = 1000\ncompress_inline_max = 10\n"
                    "lease_ttl_ms = 600000\nmax_wait_ms = 10\n",
                    &c, path)) {
                CHECK(c.max_request_bytes == 1024 && c.max_value_bytes == 1073741824 &&
                              c.compression_threshold == 1000 && c.compress_inline_max == 10 &&
                              c.lease_ttl_ms == 600000 && c.max_wait_ms == 10,
                      "no [cache] cross-key checks");
                config_deinit(&c);
        }

        /* compression: exactly zlib or off. */
        static const struct {
                const char *name;
                int value;
        } modes[] = {
                {"off", COMPRESSION_OFF},
                {"zlib", COMPRESSION_ZLIB},
        };
        for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
                snprintf(ini, sizeof(ini), "[cache]\ncompression = %s ; comment\n", modes[i].name);
                if (LOAD_OK(ini, &c, path)) {
                        CHECK(c.compression == modes[i].value, "compression = %s", modes[i].name);
                        CHECK(strcmp(config_compression_name(c.compression), modes[i].name) == 0,
                              "config_compression_name(%d)", c.compression);
                        config_deinit(&c);
                }
        }
        EXPECT_ERROR("[cache]\ncompression = gzip\n", 2,
                     "[cache] compression: 'gzip' is not one of zlib, off");
        EXPECT_ERROR("[cache]\ncompression = ZLIB\n", 2,
                     "[cache] compression: 'ZLIB' is not one of zlib, off");
        EXPECT_ERROR("[cache]\ncompression = none\n", 2,
                     "[cache] compression: 'none' is not one of zlib, off");
        EXPECT_ERROR("[cache]\ncompression = 0\n", 2,
                     "[cache] compression: '0' is not one of zlib, off");
        EXPECT_ERROR("[cache]\n\ncompression =\n", 3,
                     "[cache] compression: '' is not one of zlib, off");
        EXPECT_ERROR("[redis]\ncompression = off\n", 2, "[redis] compression: unknown key");
        EXPECT_ERROR("[cache]\ncompression = off\ncompression = zlib\n", 3,
                     "[cache] compression: duplicate key (first set at line 2)");
}

/* [health] fail_open, [admin] socket_group, allowed_uids, allowed_gids, listen, [log] target. */
static void
test_admin_values(void)
{
        static const struct {
                const char *text;
                bool value;
        } bools[] = {
                {"yes", true}, {"true", true},   {"1", true},
                {"no", false}, {"false", false}, {"0", false},
        };
        struct config c;
        char path[PATH_BUF], ini[MSG_BUF];

        for (size_t i = 0; i < sizeof(bools) / sizeof(bools[0]); i++) {
                snprintf(ini, sizeof(ini), "[health]\nfail_open = %s ; comment\n", bools[i].text);
                if (LOAD_OK(ini, &c, path)) {
                        CHECK(c.fail_open == bools[i].value, "fail_open = %s", bools[i].text);
                        config_deinit(&c);
                }
        }
        EXPECT_ERROR("[health]\nfail_open = on\n", 2,
                     "[health] fail_open: 'on' is not one of yes, no, true, false, 1, 0");
        EXPECT_ERROR("[health]\nfail_open = YES\n", 2,
                     "[health] fail_open: 'YES' is not one of yes, no, true, false, 1, 0");
        EXPECT_ERROR("[health]\nfail_open =\n", 2,
                     "[health] fail_open: '' is not one of yes, no, true, false, 1, 0");
        EXPECT_ERROR("[admin]\nfail_open = yes\n", 2, "[admin] fail_open: unknown key");

        /* Groups and users: names the system knows, or numbers (any id but -1). */
        if (LOAD_OK("[admin]\nsocket_group = 4242\nallowed_uids = 0\nallowed_gids =   \n", &c,
                    path)) {
                CHECK(c.has_admin_gid && c.admin_gid == 4242, "numeric socket_group");
                CHECK(c.n_admin_uids == 1 && c.admin_uids[0] == 0, "one uid");
                CHECK(c.n_admin_gids == 0, "blank gid list");
                config_deinit(&c);
        }
        if (LOAD_OK("[admin]\nsocket_group = nogroup\nallowed_uids = 4294967294\n", &c, path)) {
                CHECK(c.has_admin_gid && c.admin_gid == 65534, "socket_group by name");
                CHECK(c.n_admin_uids == 1 && c.admin_uids[0] == 4294967294u, "largest uid");
                config_deinit(&c);
        }
        EXPECT_ERROR("[admin]\nsocket_group = no-such-group-kc\n", 2,
                     "[admin] socket_group: 'no-such-group-kc': no such group");
        EXPECT_ERROR("[admin]\nsocket_group = 4294967295\n", 2,
                     "[admin] socket_group: '4294967295' is not a group id (0..4294967294)");
        EXPECT_ERROR("[admin]\nsocket_group = 12x\n", 2,
                     "[admin] socket_group: '12x' is not a group id (0..4294967294)");
        EXPECT_ERROR("[admin]\nallowed_uids = root, no-such-user-kc\n", 2,
                     "[admin] allowed_uids: 'no-such-user-kc': no such user");
        EXPECT_ERROR("[admin]\nallowed_uids = root,,0\n", 2,
                     "[admin] allowed_uids: empty item in the list");
        EXPECT_ERROR("[admin]\nallowed_uids = -1\n", 2, "[admin] allowed_uids: '-1': no such user");
        EXPECT_ERROR("[admin]\nallowed_gids = nogroup,\n", 2,
                     "[admin] allowed_gids: empty item in the list");
        EXPECT_ERROR("[admin]\nallowed_gids = no-such-group-kc\n", 2,
                     "[admin] allowed_gids: 'no-such-group-kc': no such group");
        {
                char list[200] = "";
                for (int i = 0; i < 33; i++) {
                        char item[8];
                        snprintf(item, sizeof(item), "%s%d", i > 0 ? "," : "", i);
                        strcat(list, item);
                }
                snprintf(ini, sizeof(ini), "[admin]\nallowed_gids = %s\n", list);
                EXPECT_ERROR(ini, 2, "[admin] allowed_gids: more than 32 groups");
                *strrchr(list, ',') = '\0';
                snprintf(ini, sizeof(ini), "[admin]\nallowed_gids = %s\n", list);
                if (LOAD_OK(ini, &c, path)) {
                        CHECK(c.n_admin_gids == 32 && c.admin_gids[31] == 31, "32 gids");
                        config_deinit(&c);
                }
        }

        /* listen: an IP literal and a port, or nothing. */
        if (LOAD_OK("[admin]\nlisten = [::1]:9121\n", &c, path)) {
                CHECK(c.has_admin_listen && strcmp(c.admin_listen_addr.host, "::1") == 0 &&
                              c.admin_listen_addr.port == 9121,
                      "IPv6 listen");
                config_deinit(&c);
        }
        EXPECT_ERROR("[admin]\nlisten = localhost:9121\n", 2,
                     "[admin] listen: 'localhost:9121': 'localhost' is not an IP address "
                     "(expected e.g. 127.0.0.1:9121)");
        EXPECT_ERROR("[admin]\nlisten = 127.0.0.1\n", 2,
                     "[admin] listen: '127.0.0.1' is not host:port, [v6]:port or unix:/path "
                     "(missing :port)");
        EXPECT_ERROR("[admin]\nlisten = unix:/tmp/x.sock\n", 2,
                     "[admin] listen: 'unix:/tmp/x.sock': expected IP:port or [IPv6]:port, not "
                     "unix:");
        EXPECT_ERROR("[admin]\nlisten = 127.0.0.1:0\n", 2,
                     "[admin] listen: '127.0.0.1:0': '0' is not a port (1..65535)");

        /* [log] target. */
        if (LOAD_OK("[log]\ntarget = syslog\n", &c, path)) {
                CHECK(c.log_target == LOG_TARGET_SYSLOG, "target = syslog");
                config_deinit(&c);
        }
        EXPECT_ERROR("[log]\ntarget = journald\n", 2,
                     "[log] target: 'journald' is not one of stderr, syslog");
}

/* Checks that need two keys, at the FILE:LINE (or env variable) the reader should look at. */
static void
test_backend_cross_keys(void)
{
        struct config c;
        char path[PATH_BUF], err[MSG_BUF], want[MSG_BUF];

        /* Sentinel needs a master name. */
        EXPECT_ERROR("[sentinel]\naddresses = s1:26379\n", 2,
                     "[sentinel] master_name: required when addresses is set");
        EXPECT_ERROR("[sentinel]\npassword = x\n\naddresses = s1:26379, s2:26379\n", 4,
                     "[sentinel] master_name: required when addresses is set");
        /* An empty master_name written down is blamed where it is written. */
        EXPECT_ERROR("[sentinel]\naddresses = s1:26379\n\nmaster_name =\n", 4,
                     "[sentinel] master_name: required when addresses is set");

        /* Sentinel and a static primary/replicas exclude each other, whatever the order. */
        EXPECT_ERROR("[sentinel]\nmaster_name = m\naddresses = 10.0.0.1:26379\n"
                     "[redis]\nprimary = 10.0.0.1:6379\n",
                     3,
                     "[sentinel] addresses: Sentinel and static primary/replicas are mutually "
                     "exclusive");
        EXPECT_ERROR("[redis]\nprimary = 127.0.0.1:6379\n[sentinel]\naddresses = s:1\n"
                     "master_name = m\n",
                     4,
                     "[sentinel] addresses: Sentinel and static primary/replicas are mutually "
                     "exclusive");
        /* Written down counts, even empty or equal to the default. */
        EXPECT_ERROR("[redis]\nreplicas =\n[sentinel]\naddresses = s:1\nmaster_name = m\n", 4,
                     "[sentinel] addresses: Sentinel and static primary/replicas are mutually "
                     "exclusive");
        /* Both wrong: the exclusion is reported first. */
        EXPECT_ERROR("[redis]\nreplicas = r:1\n[sentinel]\naddresses = s:1\n", 4,
                     "[sentinel] addresses: Sentinel and static primary/replicas are mutually "
                     "exclusive");

        /* The environment sets primary/replicas too; the error points at the Sentinel line. */
        {
                static const char *const vars[][2] = {
                        {"REDIS_HOST", "10.0.0.9"},
                        {"REDIS_PORT", "6380"},
                        {"REDIS_REPLICAS_HOST_PORT", "r1:6379"},
                };
                for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
                        clear_env();
                        setenv(vars[i][0], vars[i][1], 1);
                        write_file(path, sizeof(path),
                                   "[sentinel]\nmaster_name = m\n\naddresses = s1:26379\n");
                        snprintf(want, sizeof(want),
                                 "%s:4: [sentinel] addresses: Sentinel and static "
                                 "primary/replicas are mutually exclusive",
                                 path);
                        CHECK(config_load(&c, path, err, sizeof(err)) == -1 &&
                                      strcmp(err, want) == 0,
                              "env %s with Sentinel\n  got:  %s\n  want: %s", vars[i][0], err,
                              want);
                        config_deinit(&c);
                }
                /* The other variables do not conflict. */
                clear_env();
                setenv("REDIS_PASSWORD", "pw", 1);
                setenv("REDIS_TIMEOUT", "2", 1);
                if (LOAD_OK("[sentinel]\nmaster_name = m\naddresses = s1:26379\n", &c, path)) {
                        CHECK(c.n_sentinels == 1 && strcmp(c.password, "pw") == 0,
                              "Sentinel with REDIS_PASSWORD and REDIS_TIMEOUT");
                        config_deinit(&c);
                }
                clear_env();
        }

        /* A replica attempt must fit in the request deadline; 0 and equal are fine. */
        EXPECT_ERROR("[redis]\nreplica_attempt_timeout_ms = 1001\n", 2,
                     "[redis] replica_attempt_timeout_ms: 1001 is greater than "
                     "command_timeout_ms 1000");
        EXPECT_ERROR("[redis]\ncommand_timeout_ms = 200\nreplica_attempt_timeout_ms = 300\n", 3,
                     "[redis] replica_attempt_timeout_ms: 300 is greater than "
                     "command_timeout_ms 200");
        EXPECT_ERROR("[redis]\nreplica_attempt_timeout_ms = 300\ncommand_timeout_ms = 200\n", 3,
                     "[redis] command_timeout_ms: 200 is less than replica_attempt_timeout_ms "
                     "300");
        if (LOAD_OK("[redis]\ncommand_timeout_ms = 300\nreplica_attempt_timeout_ms = 300\n", &c,
                    path)) {
                CHECK(c.replica_attempt_timeout_ms == 300, "equal timeouts");
                config_deinit(&c);
        }
        if (LOAD_OK("[redis]\ncommand_timeout_ms = 1\nreplica_attempt_timeout_ms = 0\n", &c,
                    path)) {
                CHECK(c.replica_attempt_timeout_ms == 0 && c.command_timeout_ms == 1,
                      "0 means a third");
                config_deinit(&c);
        }
        /* REDIS_TIMEOUT lowers command_timeout_ms under the file's replica attempt. */
        clear_env();
        setenv("REDIS_TIMEOUT", "0.2", 1);
        write_file(path, sizeof(path), "[redis]\nreplica_attempt_timeout_ms = 300\n");
        snprintf(want, sizeof(want),
                 "%s:2: [redis] replica_attempt_timeout_ms: 300 is greater than "
                 "command_timeout_ms 200",
                 path);
        CHECK(config_load(&c, path, err, sizeof(err)) == -1 && strcmp(err, want) == 0,
              "REDIS_TIMEOUT under replica attempt\n  got:  %s\n  want: %s", err, want);
        config_deinit(&c);
        EXPECT_ENV_ERROR("[redis]\nreplica_attempt_timeout_ms = 300\ncommand_timeout_ms = 500\n",
                         "env REDIS_TIMEOUT: [redis] command_timeout_ms: 200 is less than "
                         "replica_attempt_timeout_ms 300");
        clear_env();

        /* The admin socket may not be the client socket (binding one unlinks the other). */
        EXPECT_ERROR("[admin]\nsocket = /run/kcache/kcached.sock\n", 2,
                     "[admin] socket: '/run/kcache/kcached.sock' is also the client socket");
        EXPECT_ERROR("[server]\nsocket = /run/kcache/kcached-admin.sock\n", 2,
                     "[server] socket: '/run/kcache/kcached-admin.sock' is also the admin socket");
        EXPECT_ERROR("[admin]\nsocket = /tmp/k.sock\n[server]\nsocket = /tmp/k.sock\n", 4,
                     "[server] socket: '/tmp/k.sock' is also the admin socket");
        if (LOAD_OK("[admin]\nsocket =\n[server]\nsocket = /tmp/k.sock\n", &c, path)) {
                CHECK(strcmp(c.admin_socket, "") == 0, "admin socket disabled");
                config_deinit(&c);
        }

        /* The health timeout may exceed the interval: no check between them. */
        if (LOAD_OK("[health]\ninterval_ms = 10\ntimeout_ms = 60000\n", &c, path)) {
                CHECK(c.health_interval_ms == 10 && c.health_timeout_ms == 60000,
                      "timeout_ms > interval_ms allowed");
                config_deinit(&c);
        }
}

static void
test_parse_addr(void)
{
        struct config_addr a;
        char err[MSG_BUF], s[600], out[400];
        char *long_host, *long_path;

        struct {
                const char *in, *str;
        } good[] = {
                {"127.0.0.1:6379", "127.0.0.1:6379"},
                {"redis.example.com:1", "redis.example.com:1"},
                {"my_host-2:65535", "my_host-2:65535"},
                {"[::1]:6380", "[::1]:6380"},
                {"[2001:db8::1]:7000", "[2001:db8::1]:7000"},
                {"unix:/run/redis/redis.sock", "unix:/run/redis/redis.sock"},
        };
        for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
                int r = config_parse_addr(good[i].in, &a, err, sizeof(err));
                CHECK(r == 0, "parse_addr(%s): %s", good[i].in, err);
                if (r == 0)
                        CHECK(strcmp(config_addr_str(&a, out, sizeof(out)), good[i].str) == 0,
                              "addr_str(%s) = %s", good[i].in, out);
        }
        CHECK(config_parse_addr("[::1]:6380", &a, err, sizeof(err)) == 0 && !a.is_unix &&
                      strcmp(a.host, "::1") == 0 && a.port == 6380,
              "v6 fields");
        CHECK(config_parse_addr("unix:/x", &a, err, sizeof(err)) == 0 && a.is_unix &&
                      strcmp(a.path, "/x") == 0,
              "unix fields");

        const char *bad[] = {
                "",         "host",         "host:",      ":6379",         "host:0",
                "host:-1",  "host:65536",   "host:6379x", "host:+6379",    "ho st:1",
                "h*st:1",   "hóst:1",       "[::1]",      "[::1]6379",     "[::1:6379",
                "[]:6379",  "[zz::1]:6379", "::1:6379",   "[::1]:0",       "unix:",
                "unix:rel", "unix",         "tcp://h:1",  "[127.0.0.1]:1", "host:6379 ",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                err[0] = '\0';
                CHECK(config_parse_addr(bad[i], &a, err, sizeof(err)) == -1 && err[0] != '\0',
                      "parse_addr('%s') must fail", bad[i]);
        }

        long_host = repeat('h', CONFIG_HOST_MAX - 1);
        snprintf(s, sizeof(s), "%s:1", long_host);
        CHECK(config_parse_addr(s, &a, err, sizeof(err)) == 0, "255-byte host: %s", err);
        free(long_host);
        long_host = repeat('h', CONFIG_HOST_MAX);
        snprintf(s, sizeof(s), "%s:1", long_host);
        CHECK(config_parse_addr(s, &a, err, sizeof(err)) == -1, "256-byte host must fail");
        free(long_host);

        long_path = repeat('p', CONFIG_PATH_MAX - 2);
        snprintf(s, sizeof(s), "unix:/%s", long_path);
        CHECK(config_parse_addr(s, &a, err, sizeof(err)) == 0 &&
                      strlen(a.path) == CONFIG_PATH_MAX - 1,
              "107-byte path: %s", err);
        free(long_path);
        long_path = repeat('p', CONFIG_PATH_MAX - 1);
        snprintf(s, sizeof(s), "unix:/%s", long_path);
        CHECK(config_parse_addr(s, &a, err, sizeof(err)) == -1, "108-byte path must fail");
        free(long_path);
}

static void
test_comments_and_forms(void)
{
        struct config c;
        char path[PATH_BUF];

        /* Inline comments need whitespace before ';'; '#' is only a whole-line comment. */
        if (LOAD_OK("[server] ; the listener\n"
                    "max_clients = 5 ; five\n"
                    "socket = /tmp/x.sock\t; tab before\n"
                    "[cache]\n"
                    "key_prefix = a;b # not a comment\n",
                    &c, path)) {
                CHECK(c.max_clients == 5, "inline comment stripped");
                CHECK(strcmp(c.socket, "/tmp/x.sock") == 0, "tab comment: '%s'", c.socket);
                CHECK(strcmp(c.key_prefix, "a;b # not a comment") == 0, "key_prefix '%s'",
                      c.key_prefix);
                config_deinit(&c);
        }
        if (LOAD_OK("", &c, path)) {
                CHECK(is_default(&c), "empty file gives the defaults");
                CHECK(c.path != NULL && strcmp(c.path, path) == 0, "empty file: path kept");
                config_deinit(&c);
        }
        if (LOAD_OK("; only\n# comments\n\n   \n  ; indented comment\n", &c, path)) {
                CHECK(is_default(&c), "comment-only file gives the defaults");
                config_deinit(&c);
        }
        /* CRLF line ends, a UTF-8 BOM, name: value, an indented first key. */
        if (LOAD_OK("\xEF\xBB\xBF[server]\r\n  max_clients: 9\r\nmax_nesting=3\r\n[cache]\r\n"
                    "key_prefix =\r\n",
                    &c, path)) {
                CHECK(c.max_clients == 9 && c.max_nesting == 3, "CRLF/BOM/colon");
                CHECK(strcmp(c.key_prefix, "") == 0, "empty key_prefix");
                config_deinit(&c);
        }
        /* Decimal only: leading zeros are still decimal; '-' is allowed before the range check. */
        if (LOAD_OK("[server]\nmax_clients = 0010\nsocket_mode = 755\n[redis]\ndb = -0\n", &c,
                    path)) {
                CHECK(c.max_clients == 10 && c.socket_mode == 0755 && c.db == 0, "number forms");
                config_deinit(&c);
        }
}

static void
test_env(void)
{
        static const char file[] = "[redis]\n"
                                   "primary = 10.0.0.1:7000\n"
                                   "connect_timeout_ms = 50\n"
                                   "password_file = /nonexistent/kcache-password\n";
        struct config c;
        char path[PATH_BUF], want[MSG_BUF];

        clear_env();

        /* REDIS_PASSWORD wins over (and clears) password_file, so nothing is read. */
        setenv("REDIS_HOST", "redis.example", 1);
        setenv("REDIS_PASSWORD", "from env", 1);
        setenv("REDIS_TIMEOUT", "0.5", 1);
        setenv("REDIS_PORT", "", 1); /* empty: ignored */
        if (LOAD_OK(file, &c, path)) {
                CHECK(strcmp(c.primary, "redis.example:7000") == 0, "REDIS_HOST keeps port: %s",
                      c.primary);
                CHECK(strcmp(c.primary_addr.host, "redis.example") == 0 &&
                              c.primary_addr.port == 7000,
                      "primary_addr from env");
                CHECK(c.sources[IX(7)] == CONFIG_SRC_ENV, "primary source");
                CHECK(strcmp(c.password, "from env") == 0 && strcmp(c.password_file, "") == 0,
                      "REDIS_PASSWORD");
                CHECK(c.sources[IX(9)] == CONFIG_SRC_ENV && c.sources[IX(10)] == CONFIG_SRC_ENV,
                      "password sources");
                CHECK(c.connect_timeout_ms == 500 && c.command_timeout_ms == 500,
                      "REDIS_TIMEOUT 0.5 -> %d %d", c.connect_timeout_ms, c.command_timeout_ms);
                CHECK(c.sources[IX(12)] == CONFIG_SRC_ENV && c.sources[IX(13)] == CONFIG_SRC_ENV,
                      "timeout sources");
                CHECK(c.sources[IX(0)] == CONFIG_SRC_DEFAULT && c.sources[IX(8)] == CONFIG_SRC_DEFAULT,
                      "others keep their sources");
                config_deinit(&c);
        }
        clear_env();

        setenv("REDIS_PORT", "7001", 1);
        setenv("REDIS_TIMEOUT", "2", 1);
        setenv("REDIS_REPLICAS_HOST_PORT", " r1:1 ,r2:2,[::2]:3", 1);
        if (LOAD_OK("[redis]\nprimary = 10.0.0.1:7000\nreplicas = x:1\n", &c, path)) {
                CHECK(strcmp(c.primary, "10.0.0.1:7001") == 0, "REDIS_PORT keeps host: %s",
                      c.primary);
                CHECK(c.connect_timeout_ms == 2000 && c.command_timeout_ms == 2000, "timeout 2");
                CHECK(strcmp(c.replicas, " r1:1 ,r2:2,[::2]:3") == 0 && c.n_replicas == 3 &&
                              strcmp(c.replica_addrs[2].host, "::2") == 0,
                      "REDIS_REPLICAS_HOST_PORT replaces replicas");
                CHECK(c.sources[IX(8)] == CONFIG_SRC_ENV, "replicas source");
                config_deinit(&c);
        }
        clear_env();

        setenv("REDIS_HOST", "::1", 1);
        setenv("REDIS_PORT", "6390", 1);
        if (LOAD_OK("[redis]\nprimary = unix:/run/redis.sock\n", &c, path)) {
                CHECK(strcmp(c.primary, "[::1]:6390") == 0 &&
                              strcmp(c.primary_addr.host, "::1") == 0,
                      "v6 REDIS_HOST over a unix primary: %s", c.primary);
                config_deinit(&c);
        }
        setenv("REDIS_HOST", "[::1]", 1);
        unsetenv("REDIS_PORT");
        if (LOAD_OK("", &c, path)) {
                CHECK(strcmp(c.primary, "[::1]:6379") == 0, "bracketed REDIS_HOST: %s", c.primary);
                config_deinit(&c);
        }
        clear_env();

        /* Without the environment the same file fails on the unreadable password_file. */
        {
                char err[MSG_BUF];
                struct config d;
                write_file(path, sizeof(path), file);
                snprintf(want, sizeof(want),
                         "%s:4: [redis] password_file: cannot read "
                         "'/nonexistent/kcache-password': No such file or directory",
                         path);
                CHECK(config_load(&d, path, err, sizeof(err)) == -1 && strcmp(err, want) == 0,
                      "unreadable password_file\n  got:  %s\n  want: %s", err, want);
                config_deinit(&d);
        }

        struct {
                const char *var, *value, *err;
        } bad[] = {
                {"REDIS_PORT", "x", "env REDIS_PORT: 'x' is not a port"},
                {"REDIS_PORT", "0", "env REDIS_PORT: '0' is not a port"},
                {"REDIS_PORT", "65536", "env REDIS_PORT: '65536' is not a port"},
                {"REDIS_PORT", " 80", "env REDIS_PORT: ' 80' is not a port"},
                {"REDIS_HOST", "bad host",
                 "env REDIS_HOST: 'bad host' is not a host name or IP address"},
                {"REDIS_HOST", "unix:/x",
                 "env REDIS_HOST: 'unix:/x' is not a host name or IP address"},
                {"REDIS_HOST", "[::1", "env REDIS_HOST: '[::1' is not a host name or IP address"},
                {"REDIS_TIMEOUT", "0",
                 "env REDIS_TIMEOUT: '0' is not a number of seconds in (0, 600]"},
                {"REDIS_TIMEOUT", "601",
                 "env REDIS_TIMEOUT: '601' is not a number of seconds in (0, 600]"},
                {"REDIS_TIMEOUT", "-1",
                 "env REDIS_TIMEOUT: '-1' is not a number of seconds in (0, 600]"},
                {"REDIS_TIMEOUT", "1s",
                 "env REDIS_TIMEOUT: '1s' is not a number of seconds in (0, 600]"},
                {"REDIS_TIMEOUT", ".5",
                 "env REDIS_TIMEOUT: '.5' is not a number of seconds in (0, 600]"},
                {"REDIS_TIMEOUT", "0.0000",
                 "env REDIS_TIMEOUT: '0.0000' is not a number of seconds in (0, 600]"},
                {"REDIS_REPLICAS_HOST_PORT", "a:1,b",
                 "env REDIS_REPLICAS_HOST_PORT: 'b' is not host:port, [v6]:port or unix:/path (missing :port)"},
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                clear_env();
                setenv(bad[i].var, bad[i].value, 1);
                EXPECT_ENV_ERROR("[redis]\nprimary = 10.0.0.1:7000\n", bad[i].err);
        }
        clear_env();
        setenv("REDIS_PORT", "6380", 1);
        EXPECT_ENV_ERROR("[redis]\nprimary = unix:/run/redis.sock\n",
                         "env REDIS_PORT: [redis] primary is a unix socket, set REDIS_HOST too");
        clear_env();

        /* Fractions: 600 is the top, a sub-millisecond rest rounds up. */
        setenv("REDIS_TIMEOUT", "600.000", 1);
        if (LOAD_OK("", &c, path)) {
                CHECK(c.connect_timeout_ms == 600000, "600.000 s");
                config_deinit(&c);
        }
        setenv("REDIS_TIMEOUT", "0.0001", 1);
        if (LOAD_OK("", &c, path)) {
                CHECK(c.connect_timeout_ms == 1, "0.0001 s -> %d ms", c.connect_timeout_ms);
                config_deinit(&c);
        }
        setenv("REDIS_TIMEOUT", "1.25", 1);
        if (LOAD_OK("", &c, path)) {
                CHECK(c.command_timeout_ms == 1250, "1.25 s -> %d ms", c.command_timeout_ms);
                config_deinit(&c);
        }
        clear_env();
}

static void
test_password_file(void)
{
        struct config c;
        char pw[PATH_BUF], path[PATH_BUF], ini[MSG_BUF], err[MSG_BUF], want[MSG_BUF];
        char *big;

        write_file(pw, sizeof(pw), "s3cret pass\n\n");
        snprintf(ini, sizeof(ini), "[redis]\npassword_file = %s\n", pw);
        if (LOAD_OK(ini, &c, path)) {
                CHECK(strcmp(c.password, "s3cret pass") == 0, "trailing newlines stripped: '%s'",
                      c.password);
                CHECK(strcmp(c.password_file, pw) == 0, "password_file kept");
                config_deinit(&c);
        }
        write_file(pw, sizeof(pw), "crlf\r\n");
        snprintf(ini, sizeof(ini), "[redis]\npassword_file = %s\n", pw);
        if (LOAD_OK(ini, &c, path)) {
                CHECK(strcmp(c.password, "crlf") == 0, "CRLF stripped");
                config_deinit(&c);
        }
        big = repeat('p', 1024);
        write_file(pw, sizeof(pw), big);
        snprintf(ini, sizeof(ini), "[redis]\npassword_file = %s\n", pw);
        if (LOAD_OK(ini, &c, path)) {
                CHECK(strlen(c.password) == 1024, "1 KiB password");
                config_deinit(&c);
        }
        free(big);
        big = repeat('p', 1025);
        write_file(pw, sizeof(pw), big);
        free(big);
        snprintf(ini, sizeof(ini), "[redis]\npassword_file = %s\n", pw);
        write_file(path, sizeof(path), ini);
        snprintf(want, sizeof(want), "%s:2: [redis] password_file: '%s' is longer than 1024 bytes",
                 path, pw);
        CHECK(config_load(&c, path, err, sizeof(err)) == -1 && strcmp(err, want) == 0,
              "big password file: %s", err);
        config_deinit(&c);

        write_file(pw, sizeof(pw), "\n");
        snprintf(ini, sizeof(ini), "[redis]\n\npassword_file = %s\n", pw);
        write_file(path, sizeof(path), ini);
        snprintf(want, sizeof(want),
                 "%s:3: [redis] password_file: '%s' must hold one non-empty line of text", path,
                 pw);
        CHECK(config_load(&c, path, err, sizeof(err)) == -1 && strcmp(err, want) == 0,
              "empty password file: %s", err);
        config_deinit(&c);

        /* A directory opens but cannot be read. */
        snprintf(ini, sizeof(ini), "[redis]\npassword_file = %s\n", tmpdir);
        write_file(path, sizeof(path), ini);
        snprintf(want, sizeof(want), "%s:2: [redis] password_file: cannot read '%s': %s", path,
                 tmpdir, strerror(EISDIR));
        CHECK(config_load(&c, path, err, sizeof(err)) == -1 && strcmp(err, want) == 0,
              "directory as password file: %s", err);
        config_deinit(&c);
}

static char *
dump_text(const struct config *c)
{
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);

        if (f == NULL)
                exit(2);
        config_dump(c, f);
        if (fclose(f) != 0 || text == NULL)
                exit(2);
        return text;
}

static void
test_dump(void)
{
        struct config c, d;
        char path[PATH_BUF], dpath[PATH_BUF], err[MSG_BUF], want[MSG_BUF];
        char *text, *text2;

        /* A full file plus the environment, dumped and loaded back. */
        setenv("REDIS_PORT", "7100", 1);
        setenv("REDIS_TIMEOUT", "3", 1);
        if (!LOAD_OK(full_file, &c, path)) {
                clear_env();
                return;
        }
        clear_env();
        text = dump_text(&c);
        CHECK(strstr(text, "hunter2") == NULL, "the dump must not show the password");
        CHECK(strstr(text, "\npassword = *** ; ") != NULL, "password as ***");
        CHECK(strstr(text, "\nmax_batch_keys = 1 ; ") != NULL, "key = value lines");
        CHECK(strstr(text, "\nprimary = redis-1.example_net:7100 ; env REDIS_") != NULL,
              "env source named");
        CHECK(strstr(text, "\ncommand_timeout_ms = 3000 ; env REDIS_TIMEOUT\n") != NULL,
              "REDIS_TIMEOUT named");
        CHECK(strstr(text, "\npassword_file = ; default\n") != NULL, "default source");
        CHECK(strstr(text, "\nsocket_mode = 0600 ; ") != NULL, "octal mode in the dump");
        CHECK(strstr(text, "\nlevel = debug ; ") != NULL, "level name in the dump");
        CHECK(strstr(text, "\n[server]\n") != NULL && strstr(text, "\n[log]\n") != NULL,
              "sections");
        CHECK(strstr(text, "sentinel-secret") == NULL,
              "the dump must not show [sentinel] password");
        CHECK(strstr(text, "\n[sentinel]\naddresses = ; default\nmaster_name = mymaster ; ") !=
                      NULL,
              "[sentinel] section:\n%s", text);
        CHECK(strstr(text, "\nread_from = any ; ") != NULL, "read_from name in the dump");
        CHECK(strstr(text, "\n[health]\ninterval_ms = 60000 ; ") != NULL, "[health] section");
        CHECK(strstr(text, "\nreplica_attempt_timeout_ms = 2500 ; ") != NULL,
              "replica_attempt_timeout_ms");
        CHECK(strstr(text, "\ncompression = off ; ") != NULL, "compression name in the dump");
        CHECK(strstr(text, "\nmax_value_bytes = 1073741824 ; ") != NULL &&
                      strstr(text, "\ncompression_threshold = 0 ; ") != NULL &&
                      strstr(text, "\nns_check_ms = 10 ; ") != NULL,
              "[cache] values in the dump");
#ifdef CONFIG_HAVE_ORIGINS
        snprintf(want, sizeof(want), "\ncompression = off ; %s:48\n", path);
        CHECK(strstr(text, want) != NULL, "compression FILE:LINE in the dump");
        snprintf(want, sizeof(want), "\npassword = *** ; %s:34\n", path);
        CHECK(strstr(text, want) != NULL, "[sentinel] password as ***:\n%s", text);
        snprintf(want, sizeof(want), "\n[admin]\nsocket = /tmp/kc admin.sock ; %s:36\n", path);
        CHECK(strstr(text, want) != NULL, "[admin] socket in the dump");
        snprintf(want, sizeof(want), "\nsocket_mode = 0660 ; %s:37\n", path);
        CHECK(strstr(text, want) != NULL, "[admin] socket_mode in the dump");
        snprintf(want, sizeof(want), "\nsocket_mode = 0660 ; %s:37\nsocket_group = root ; ", path);
        CHECK(strstr(text, want) != NULL, "[admin] socket_group in the dump:\n%s", text);
        snprintf(want, sizeof(want), "\nallowed_uids = nobody, 1000 ,root ; %s:39\n", path);
        CHECK(strstr(text, want) != NULL, "[admin] allowed_uids in the dump");
        snprintf(want, sizeof(want), "\nallowed_gids = 0,nogroup ; %s:40\nlisten = ", path);
        CHECK(strstr(text, want) != NULL, "[admin] allowed_gids in the dump");
        snprintf(want, sizeof(want), "\nlisten = 127.0.0.1:9121 ; %s:41\n", path);
        CHECK(strstr(text, want) != NULL, "[admin] listen in the dump");
        snprintf(want, sizeof(want), "\nfail_open = yes ; %s:31\n", path);
        CHECK(strstr(text, want) != NULL, "fail_open in the dump");
        snprintf(want, sizeof(want), "\ntarget = syslog ; %s:58\n", path);
        CHECK(strstr(text, want) != NULL, "[log] target in the dump");
#endif
#ifdef CONFIG_HAVE_ORIGINS
        snprintf(want, sizeof(want), "\nmax_clients = 77 ; %s:5\n", path);
        CHECK(strstr(text, want) != NULL, "FILE:LINE source in the dump");
        CHECK(strstr(text, "\nprimary = redis-1.example_net:7100 ; env REDIS_PORT\n") != NULL,
              "env REDIS_PORT exactly");
#else
        snprintf(want, sizeof(want), "\nmax_clients = 77 ; %s\n", path);
        CHECK(strstr(text, want) != NULL, "FILE source in the dump");
#endif

        write_file(dpath, sizeof(dpath), text);
        if (config_load(&d, dpath, err, sizeof(err)) != 0) {
                CHECK(false, "the dump must load back: %s\n%s", err, text);
        } else {
                CHECK(config_equal(&c, &d, false), "dump round trip differs:\n%s", text);
                CHECK(strcmp(d.password, "***") == 0, "password loads back as ***");
                CHECK(strcmp(d.sentinel_password, "***") == 0,
                      "[sentinel] password loads back as ***");
                for (int i = 0; i < N_KEYS; i++) {
                        CHECK(d.sources[i] == CONFIG_SRC_FILE, "dump reload sources[%d]", i);
                }
                /* Dumping the reloaded config gives the same values. */
                text2 = dump_text(&d);
                CHECK(strstr(text2, "\nprimary = redis-1.example_net:7100 ; ") != NULL,
                      "second dump");
                free(text2);
                config_deinit(&d);
        }
        free(text);
        config_deinit(&c);

        /* Defaults round trip, and a value starting with ';' survives. */
        if (LOAD_OK("[cache]\nkey_prefix =;x:\n", &c, path)) {
                CHECK(strcmp(c.key_prefix, ";x:") == 0, "key_prefix ';x:'");
                text = dump_text(&c);
                write_file(dpath, sizeof(dpath), text);
                if (config_load(&d, dpath, err, sizeof(err)) != 0) {
                        CHECK(false, "dump with ';x:' must load back: %s", err);
                } else {
                        CHECK(config_equal(&c, &d, true), "';x:' round trip:\n%s", text);
                        config_deinit(&d);
                }
                free(text);
                config_deinit(&c);
        }

        /* A password from password_file is only mentioned, so the dump loads back. */
        {
                char pw[PATH_BUF], ini[MSG_BUF];
                write_file(pw, sizeof(pw), "topsecret\n");
                snprintf(ini, sizeof(ini), "[redis]\npassword_file = %s\n", pw);
                if (LOAD_OK(ini, &c, path)) {
                        text = dump_text(&c);
                        CHECK(strstr(text, "topsecret") == NULL, "no secret in the dump");
                        CHECK(strstr(text, "\n; password = *** (read from password_file)\n") !=
                                      NULL,
                              "password_file password noted:\n%s", text);
                        write_file(dpath, sizeof(dpath), text);
                        if (config_load(&d, dpath, err, sizeof(err)) != 0) {
                                CHECK(false, "password_file dump must load back: %s", err);
                        } else {
                                CHECK(config_equal(&c, &d, true), "password_file round trip");
                                config_deinit(&d);
                        }
                        free(text);
                        config_deinit(&c);
                }
        }

        /*
         * With Sentinel, primary and replicas are shown commented out: written
         * next to addresses they would not load back.
         */
        if (LOAD_OK("[sentinel]\n"
                    "addresses = s1.example:26379, [::1]:26380\n"
                    "master_name = mymaster\n"
                    "password = s3ntinel-pw\n"
                    "[redis]\n"
                    "read_from = primary\n",
                    &c, path)) {
                text = dump_text(&c);
                CHECK(strstr(text, "s3ntinel-pw") == NULL, "no Sentinel secret in the dump");
                CHECK(strstr(text, "\n; primary = 127.0.0.1:6379 ; default, unused with [sentinel] "
                                   "addresses\n") != NULL,
                      "primary commented out");
                CHECK(strstr(text,
                             "\n; replicas = ; default, unused with [sentinel] addresses\n") !=
                              NULL,
                      "replicas commented out");
                CHECK(strstr(text, "\naddresses = s1.example:26379, [::1]:26380 ; ") != NULL,
                      "addresses in the dump");
                write_file(dpath, sizeof(dpath), text);
                if (config_load(&d, dpath, err, sizeof(err)) != 0) {
                        CHECK(false, "the Sentinel dump must load back: %s\n%s", err, text);
                } else {
                        CHECK(config_equal(&c, &d, false), "Sentinel round trip:\n%s", text);
                        CHECK(d.n_sentinels == 2 && d.read_from == READ_FROM_PRIMARY,
                              "Sentinel reload");
                        CHECK(strcmp(d.sentinel_password, "***") == 0, "*** loads back");
                        CHECK(d.sources[IX(7)] == CONFIG_SRC_DEFAULT &&
                                      d.sources[IX(8)] == CONFIG_SRC_DEFAULT,
                              "primary and replicas stay defaults");
                        config_deinit(&d);
                }
                free(text);
                config_deinit(&c);
        }

        /* An empty [admin] socket (disabled) round trips. */
        if (LOAD_OK("[admin]\nsocket =\n", &c, path)) {
                text = dump_text(&c);
                snprintf(want, sizeof(want), "\n[admin]\nsocket = ; %s", path);
                CHECK(strstr(text, want) != NULL, "empty admin socket in the dump:\n%s", text);
                write_file(dpath, sizeof(dpath), text);
                if (config_load(&d, dpath, err, sizeof(err)) != 0) {
                        CHECK(false, "empty admin socket dump must load back: %s", err);
                } else {
                        CHECK(config_equal(&c, &d, true) && strcmp(d.admin_socket, "") == 0,
                              "empty admin socket round trip");
                        config_deinit(&d);
                }
                free(text);
                config_deinit(&c);
        }

        /* A long env list: its source comment moves above it. */
        setenv("REDIS_REPLICAS_HOST_PORT",
               "replica-number-one.example.com:6379, replica-number-two.example.com:6379, "
               "replica-number-three.example.com:6379, replica-number-four.example.com:6379, r5:10",
               1);
        if (LOAD_OK("", &c, path)) {
                text = dump_text(&c);
                CHECK(strstr(text,
                             "\n; env REDIS_REPLICAS_HOST_PORT\nreplicas = replica-number-one") !=
                              NULL,
                      "long line comment above:\n%s", text);
                free(text);
                config_deinit(&c);
        }
        clear_env();
}

static char *
read_all(const char *path)
{
        FILE *f = fopen(path, "re");
        char *text = NULL;
        size_t len = 0, cap = 0, n;

        if (f == NULL)
                return NULL;
        for (;;) {
                if (cap - len < 4096) {
                        cap = cap * 2 + 4096;
                        text = realloc(text, cap + 1);
                        if (text == NULL)
                                exit(2);
                }
                n = fread(text + len, 1, cap - len, f);
                len += n;
                if (n == 0)
                        break;
        }
        fclose(f);
        text[len] = '\0';
        return text;
}

static void
test_example(void)
{
        char *text = NULL, *disk, *uncommented, *p;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        struct config c, d;
        char path[PATH_BUF];

        if (f == NULL)
                exit(2);
        config_write_example(f);
        fclose(f);

        /* Every line short enough, and the example loads as the defaults. */
        for (p = text; *p != '\0';) {
                size_t n = strcspn(p, "\n");
                CHECK(n + 1 < 199, "example line too long: %.*s", (int)n, p);
                CHECK(n == 0 || p[n - 1] != ' ', "trailing blank: %.*s", (int)n, p);
                p += n + (p[n] == '\n');
        }
        if (LOAD_OK(text, &c, path)) {
                CHECK(is_default(&c), "the example loads as the defaults");
                config_deinit(&c);
        }
        /* Uncommenting every "; key = value" line sets each key to its default. */
        uncommented = malloc(len + 1);
        if (uncommented == NULL)
                exit(2);
        uncommented[0] = '\0';
        for (p = text; *p != '\0';) {
                size_t n = strcspn(p, "\n");
                const char *eq = memchr(p, '=', n);
                bool is_key =
                        strncmp(p, "; ", 2) == 0 && eq != NULL && eq > p + 3 && eq[-1] == ' ' &&
                        strspn(p + 2, "abcdefghijklmnopqrstuvwxyz_") == (size_t)(eq - 1 - (p + 2));
                strncat(uncommented, is_key ? p + 2 : p, is_key ? n - 2 : n);
                strcat(uncommented, "\n");
                p += n + (p[n] == '\n');
        }
        if (LOAD_OK(uncommented, &c, path)) {
                CHECK(is_default(&c), "the uncommented example gives the defaults");
                for (int i = 0; i < N_KEYS; i++)
                        CHECK(c.sources[i] == CONFIG_SRC_FILE, "uncommented key %d not set", i);
                CHECK(config_init(&d) == 0 && config_equal(&c, &d, true), "defaults equal");
                config_deinit(&d);
                config_deinit(&c);
        }
        free(uncommented);

        disk = read_all(EXAMPLE_PATH);
        CHECK(disk != NULL, "cannot read %s (run from daemon/): %s", EXAMPLE_PATH, strerror(errno));
        if (disk != NULL) {
                CHECK(strcmp(disk, text) == 0,
                      "%s differs from config_write_example(); regenerate it with: "
                      "test-config --write-example > conf/kcached.ini",
                      EXAMPLE_PATH);
                free(disk);
        }
        free(text);
}

/*
 * --- kcached.ini(5) ---------------------------------------------------------
 *
 * The man page is generated from config_write_example()'s output: config_keys[]
 * is static to config.c, and the example is its one complete public rendering
 * (help, range, reloadable, environment, default of every key). Generating from
 * it keeps config.c untouched and the page unable to drift from the table;
 * test_man() checks the checked-in page byte for byte, as test_example() does
 * for conf/kcached.ini.
 */
#define MAN_PATH "../packaging/man/kcached.ini.5"
/* Bump when the generated text changes. */
#define MAN_DATE "November 22, 2026"

/* One key of the example: its comment block and its "; key = value" line. */
struct man_key {
        char help[2048]; /* the comment lines joined, the trailing "(...)" cut off */
        char meta[256];  /* inside that "(...)": "[octal, ]A..B, reloadable: yes|no" */
        char env[256];   /* "; Environment: X." without the dot; "" for none */
};

static const struct {
        const char *section, *text;
} man_sections[] = {
        {"server", "The client socket and the limits kcached enforces on every request."},
        {"redis", "The Redis nodes and how kcached talks to them."},
        {"health", "Probing of the Redis nodes: when a node is marked down, and up again."},
        {"sentinel", "Redis Sentinel discovery of the primary and the replicas, instead of "
                     "[redis] primary and replicas."},
        {"admin", "The admin socket: what kcache admin talks to (health probes, stats, "
                  "metrics, reload)."},
        {"cache", "Cache semantics: key prefix, TTLs, size limits, compression, leases and "
                  "namespaces."},
        {"log", "Logging."},
};

static const char man_head[] =
        ".\\\" SPDX-License-Identifier: MIT\n"
        ".\\\" Generated by `test-config --write-man` from config.c's key table\n"
        ".\\\" (through config_write_example()); do not edit: regenerate.\n"
        ".Dd " MAN_DATE "\n"
        ".Dt KCACHED.INI 5\n"
        ".Os\n"
        ".Sh NAME\n"
        ".Nm kcached.ini\n"
        ".Nd configuration file of the kcache sidecar daemon\n"
        ".Sh SYNOPSIS\n"
        ".Pa /etc/kcache/kcached.ini\n"
        ".Sh DESCRIPTION\n"
        ".Xr kcached 8\n"
        "reads its configuration from the INI file given with\n"
        ".Fl c .\n"
        "Every key is optional and has a built-in default;\n"
        "the packaged file lists every key commented out, with its default.\n"
        "Precedence, lowest to highest: built-in default, this file, the environment\n"
        "(see\n"
        ".Sx ENVIRONMENT ) .\n"
        ".Pp\n"
        "The file holds sections,\n"
        ".Li [name] ,\n"
        "each followed by\n"
        ".Li key = value\n"
        "lines.\n"
        "Section and key names are case-sensitive.\n"
        "A line starting with\n"
        ".Ql \\&;\n"
        "or\n"
        ".Ql #\n"
        "is a comment, and so is the rest of a line after a\n"
        ".Ql \\&;\n"
        "that follows whitespace.\n"
        "So a value cannot hold\n"
        ".Ql \" ;\" ,\n"
        "and there is no quoting: a value runs from after the\n"
        ".Ql =\n"
        "to the end of the line or the comment, with blanks around it removed.\n"
        "A line must be shorter than 199 bytes;\n"
        "do not indent a line after a key, it would continue that key's value.\n"
        "Unknown sections, unknown keys, duplicate keys and bad values are errors,\n"
        "reported as\n"
        ".Dq FILE:LINE: [section] key: why ;\n"
        ".Ic kcached -t -c FILE\n"
        "checks a file and prints the configuration it gives, each value followed by\n"
        "where it came from.\n"
        ".Pp\n"
        "Units: TTLs are in seconds;\n"
        "every other duration is in milliseconds and its name ends in\n"
        ".Ql _ms ;\n"
        "sizes are in bytes.\n"
        ".Pp\n"
        "Keys marked\n"
        ".Dq reloadable: yes\n"
        "are applied in place by a reload\n"
        "(SIGHUP,\n"
        ".Ic systemctl reload kcached ,\n"
        "or\n"
        ".Ic kcache admin reload ) ;\n"
        "a reload that changes any other key applies the rest and names the keys\n"
        "that need a restart.\n"
        "A file that does not load is refused and the running configuration kept.\n"
        ".Sh KEYS\n"
        "Each key is shown with its default value.\n";

static const char man_tail[] =
        ".Sh ENVIRONMENT\n"
        "These variables override the file; empty ones are ignored.\n"
        ".Bl -tag -width REDIS_REPLICAS_HOST_PORT\n"
        ".It Ev REDIS_HOST\n"
        "Host of [redis] primary, keeping its port.\n"
        ".It Ev REDIS_PORT\n"
        "Port of [redis] primary.\n"
        ".It Ev REDIS_REPLICAS_HOST_PORT\n"
        "[redis] replicas, a comma list of host:port.\n"
        ".It Ev REDIS_TIMEOUT\n"
        "Seconds (0.5 allowed); sets connect_timeout_ms and command_timeout_ms.\n"
        ".It Ev REDIS_PASSWORD\n"
        "[redis] password; clears password_file.\n"
        ".El\n"
        ".Sh FILES\n"
        ".Bl -tag -width Ds\n"
        ".It Pa /etc/kcache/kcached.ini\n"
        "The configuration the packaged service unit loads.\n"
        ".It Pa /run/kcache/kcached.sock\n"
        "The default client socket.\n"
        ".It Pa /run/kcache/kcached-admin.sock\n"
        "The default admin socket.\n"
        ".El\n"
        ".Sh EXAMPLES\n"
        "A primary and a replica, the password in a file readable by the kcache user:\n"
        ".Bd -literal -offset indent\n"
        "[redis]\n"
        "primary = 10.0.0.5:6379\n"
        "replicas = 10.0.0.6:6379\n"
        "password_file = /etc/kcache/redis-password\n"
        "\n"
        "[cache]\n"
        "default_ttl = 600\n"
        ".Ed\n"
        ".Sh SEE ALSO\n"
        ".Xr kcache 1 ,\n"
        ".Xr libkcache 3 ,\n"
        ".Xr kcached 8\n";

/* Writes one line of running text; a leading control character is protected by \&. */
static void
man_line(FILE *out, const char *line, size_t n)
{
        if (n > 0 && (line[0] == '.' || line[0] == '\''))
                fputs("\\&", out);
        fprintf(out, "%.*s\n", (int)n, line);
}

/*
 * Writes text as mdoc running text: one sentence a line (mandoc's "new
 * sentence, new line"), wrapped at MAN_WIDTH columns (mandoc's style check),
 * `x` as typographic quotes and backslashes escaped.
 */
#define MAN_WIDTH 80
static void
man_text(FILE *out, const char *text)
{
        char line[4096];
        size_t n = 0, last_space = 0;
        bool in_quote = false;

        for (const char *p = text; *p != '\0'; p++) {
                const char *piece;
                char one[2] = {*p, '\0'};
                bool is_end = (*p == '.' || *p == '?' || *p == '!') && p[1] == ' ' && p[2] >= 'A' &&
                              p[2] <= 'Z';

                if (*p == '`') {
                        piece = in_quote ? "\\(rq" : "\\(lq";
                        in_quote = !in_quote;
                } else if (*p == '\\') {
                        piece = "\\e";
                } else {
                        piece = one;
                }
                if (*p == ' ' && n > 0)
                        last_space = n;
                if (n + strlen(piece) >= sizeof(line))
                        break; /* help texts are far shorter */
                memcpy(line + n, piece, strlen(piece));
                n += strlen(piece);
                if (n > MAN_WIDTH && last_space > 0) {
                        /* Wrap at the last blank; the rest starts the next line. */
                        man_line(out, line, last_space);
                        n -= last_space + 1;
                        memmove(line, line + last_space + 1, n);
                        last_space = 0;
                        for (size_t i = 0; i < n; i++)
                                if (line[i] == ' ')
                                        last_space = i;
                }
                if (is_end) {
                        man_line(out, line, n);
                        n = 0;
                        last_space = 0;
                        p++; /* the space */
                }
        }
        if (n > 0)
                man_line(out, line, n);
}

/* Writes one key's list entry. */
static void
man_write_key(FILE *out, const struct man_key *k, const char *name, const char *value)
{
        const char *rel = strstr(k->meta, "reloadable: ");
        size_t range_len = rel != NULL ? (size_t)(rel - k->meta) : strlen(k->meta);

        /* \& keeps a value ending in punctuation ("kc:") from reading as a delimiter. */
        if (value[0] == '\0')
                fprintf(out, ".It Cm %s No = Pq empty\n", name);
        else
                fprintf(out, ".It Cm %s No = Li %s%s\n", name, value,
                        strchr(".,:;?!()[]|", value[strlen(value) - 1]) != NULL ? "\\&" : "");
        man_text(out, k->help);
        /* The range part is "A..B, " or "octal, A..B, ". */
        if (range_len > 2) {
                if (strncmp(k->meta, "octal, ", 7) == 0)
                        fprintf(out, "Range: %.*s, octal.\n", (int)(range_len - 9), k->meta + 7);
                else
                        fprintf(out, "Range: %.*s.\n", (int)(range_len - 2), k->meta);
        }
        if (rel != NULL)
                fprintf(out, "Reloadable: %s.\n", rel + strlen("reloadable: "));
        if (k->env[0] != '\0') {
                fputs("Environment:\n.Ev", out);
                for (const char *p = k->env; *p != '\0';) {
                        size_t n = strcspn(p, ",");
                        fprintf(out, " %.*s", (int)n, p);
                        p += n;
                        if (*p == ',') {
                                fputs(" ,", out);
                                p++;
                                while (*p == ' ')
                                        p++;
                        }
                }
                fputs(" .\n", out);
        }
}

/* Splits the trailing " (...)" of k->help into k->meta. */
static void
man_split_meta(struct man_key *k)
{
        size_t n = strlen(k->help);
        char *open = NULL;

        if (n > 0 && k->help[n - 1] == ')') {
                for (char *p = k->help; (p = strstr(p, " (")) != NULL; p++)
                        open = p;
        }
        if (open == NULL) {
                k->meta[0] = '\0';
                return;
        }
        snprintf(k->meta, sizeof(k->meta), "%.*s", (int)(k->help + n - 1 - (open + 2)), open + 2);
        *open = '\0';
}

static void
man_append(char *buf, size_t size, const char *text, size_t n)
{
        size_t used = strlen(buf);

        snprintf(buf + used, size - used, "%s%.*s", used > 0 ? " " : "", (int)n, text);
}

/* Writes kcached.ini(5) in mdoc. 0, or -1 when the example could not be read. */
static int
man_write(FILE *out)
{
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        struct man_key k = {0};
        bool in_keys = false, in_list = false;

        if (f == NULL)
                return -1;
        config_write_example(f);
        if (fclose(f) != 0)
                return -1;
        fputs(man_head, out);
        for (const char *p = text; *p != '\0';) {
                size_t n = strcspn(p, "\n");
                const char *eq = memchr(p, '=', n);

                if (n > 2 && p[0] == '[' && p[n - 1] == ']') {
                        in_keys = true;
                        if (in_list)
                                fputs(".El\n", out);
                        fprintf(out, ".Ss \\&[%.*s]\\&\n", (int)(n - 2), p + 1);
                        for (size_t i = 0; i < sizeof(man_sections) / sizeof(man_sections[0]); i++)
                                if (strlen(man_sections[i].section) == n - 2 &&
                                    strncmp(man_sections[i].section, p + 1, n - 2) == 0)
                                        man_text(out, man_sections[i].text);
                        fputs(".Bl -tag -width Ds\n", out);
                        in_list = true;
                } else if (!in_keys || n == 0) {
                        /* the header (prose above says it), or a blank between keys */
                } else if (strncmp(p, "; Environment: ", 15) == 0) {
                        snprintf(k.env, sizeof(k.env), "%.*s", (int)(n - 16), p + 15);
                } else if (strncmp(p, "; ", 2) == 0 && eq != NULL && eq > p + 3 && eq[-1] == ' ' &&
                           strspn(p + 2, "abcdefghijklmnopqrstuvwxyz_") ==
                                   (size_t)(eq - 1 - (p + 2))) {
                        char name[64], value[256];

                        snprintf(name, sizeof(name), "%.*s", (int)(eq - 1 - (p + 2)), p + 2);
                        snprintf(value, sizeof(value), "%.*s",
                                 (int)(eq + 1 < p + n ? p + n - (eq + 2) : 0), eq + 2);
                        man_split_meta(&k);
                        man_write_key(out, &k, name, value);
                        memset(&k, 0, sizeof(k));
                } else if (strncmp(p, "; ", 2) == 0) {
                        man_append(k.help, sizeof(k.help), p + 2, n - 2);
                }
                p += n + (p[n] == '\n');
        }
        if (in_list)
                fputs(".El\n", out);
        fputs(man_tail, out);
        free(text);
        return 0;
}

static void
test_man(void)
{
        char *text = NULL, *disk;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);

        if (f == NULL)
                exit(2);
        CHECK(man_write(f) == 0, "man_write");
        fclose(f);
        disk = read_all(MAN_PATH);
        CHECK(disk != NULL, "cannot read %s (run from daemon/): %s", MAN_PATH, strerror(errno));
        if (disk != NULL) {
                CHECK(strcmp(disk, text) == 0,
                      "%s differs from the key table; regenerate it with: "
                      "test-config --write-man > packaging/man/kcached.ini.5",
                      MAN_PATH);
                free(disk);
        }
        free(text);
}

static int
remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
        (void)st;
        (void)flag;
        (void)ftw;
        if (remove(path) != 0)
                perror(path);
        return 0;
}

int
main(int argc, char **argv)
{
        const char *base = getenv("TMPDIR");

        if (argc == 2 && strcmp(argv[1], "--write-example") == 0) {
                config_write_example(stdout);
                return fflush(stdout) == 0 ? 0 : 1;
        }
        if (argc == 2 && strcmp(argv[1], "--write-man") == 0)
                return man_write(stdout) == 0 && fflush(stdout) == 0 ? 0 : 1;
        if (argc != 1) {
                fprintf(stderr, "usage: test-config [--write-example | --write-man]\n");
                return 2;
        }
        snprintf(tmpdir, sizeof(tmpdir), "%s/test-config.XXXXXX",
                 base != NULL && base[0] != '\0' ? base : "/tmp");
        if (mkdtemp(tmpdir) == NULL) {
                perror("mkdtemp");
                return 2;
        }
        clear_env();

        test_defaults();
        test_full_file();
        test_syntax_errors();
        test_value_errors();
        test_backend_values();
        test_cache_values();
        test_admin_values();
        test_backend_cross_keys();
        test_parse_addr();
        test_comments_and_forms();
        test_env();
        test_password_file();
        test_dump();
        test_example();
        test_man();

        nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
        printf("%d passed, %d failed\n", n_passed, n_failed);
        return n_failed == 0 ? 0 : 1;
}
