/* SPDX-License-Identifier: MIT */
/*
 * config: the key table and everything it drives. config_keys[] is the one
 * place a setting is declared; parsing, defaults, range checks, environment
 * overrides, the dump and conf/kcached.ini all walk it.
 *
 *   defaults ──> INI file (our line reader + libinih) ──> environment
 *            ──> cross-key checks, password_file, derived addresses
 *
 * Invariants: config_load() either fills *c completely or leaves it holding
 * the defaults; every value in a struct config passed its key's validation;
 * sources[i] tells where config_keys[i]'s value came from. A password never
 * appears in an error message or a dump.
 */
#include "daemon/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <grp.h>
#include <ini.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/*
 * Lines of this many bytes or more (newline included) are refused. Debian's
 * libinih reads with a 200-byte buffer (fgets-style: 199 bytes and the NUL)
 * and silently treats the rest of a longer line as the next line, so a long
 * `replicas =` line would lose its tail without a word. 198 keeps a byte of
 * margin, as ini.h asks ("3 more than the longest line").
 */
#define CONFIG_LINE_MAX 199

#define CONFIG_PASSWORD_FILE_MAX 1024
#define CONFIG_DEFAULT_PORT      6379

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

enum config_type {
        CONFIG_T_STRING,        /* char *, any text */
        CONFIG_T_PATH,          /* char *, non-empty, fits sun_path */
        CONFIG_T_PATH_OPT,      /* char *, empty (feature off) or a path that fits sun_path */
        CONFIG_T_ADDR,          /* char *, one config_parse_addr() address */
        CONFIG_T_ADDR_LIST,     /* char *, comma list of addresses, may be empty */
        CONFIG_T_TCP_ADDR_LIST, /* char *, like ADDR_LIST without unix: */
        CONFIG_T_INT,           /* int, decimal, range-checked */
        CONFIG_T_INT64,         /* int64_t, decimal, range-checked */
        CONFIG_T_MODE,          /* unsigned, octal, range-checked */
        CONFIG_T_ENUM,          /* int, the index of one of the row's names[] */
        CONFIG_T_BOOL,          /* bool: yes/no, true/false, 1/0 */
        CONFIG_T_GROUP,         /* char *, empty or one group: a name or a number */
        CONFIG_T_USER_LIST,     /* char *, comma list of users (names or numbers), may be empty */
        CONFIG_T_GROUP_LIST,    /* char *, comma list of groups (names or numbers), may be empty */
        CONFIG_T_LISTEN,        /* char *, empty or IP-literal host:port / [v6]:port */
};

struct config_key {
        const char *section, *key;
        enum config_type type;
        size_t offset; /* of the field in struct config */
        const char *def;
        int64_t min, max;
        bool reloadable;
        const char *help;
        const char *env;          /* variables that override it, for the docs; NULL for none */
        const char *const *names; /* CONFIG_T_ENUM: the values, NULL-terminated */
};

/* Indexes into config_keys[] and sources[]; the table uses them as designators. */
enum {
        K_SOCKET,
        K_SOCKET_MODE,
        K_MAX_CLIENTS,
        K_MAX_REQUEST_BYTES,
        K_MAX_NESTING,
        K_MAX_BATCH_KEYS,
        K_DRAIN_TIMEOUT_MS,
        K_MAX_INFLIGHT_PER_CLIENT,
        K_MAX_OUTPUT_BYTES_PER_CLIENT,
        K_IDLE_TIMEOUT_S,
        K_REQUEST_READ_TIMEOUT_MS,
        K_SOCKET_GROUP,
        K_ALLOWED_UIDS,
        K_ALLOWED_GIDS,
        K_PRIMARY,
        K_REPLICAS,
        K_USERNAME,
        K_PASSWORD,
        K_PASSWORD_FILE,
        K_DB,
        K_CONNECT_TIMEOUT_MS,
        K_COMMAND_TIMEOUT_MS,
        K_MAX_REPLY_ELEMENTS,
        K_MAX_REPLY_BYTES,
        K_POOL_SIZE,
        K_REPLICA_POOL_SIZE,
        K_READ_FROM,
        K_REPLICA_ATTEMPT_TIMEOUT_MS,
        K_MAX_INFLIGHT_PER_NODE,
        K_RECONNECT_MAX_MS,
        K_MAX_REPLICA_LAG_MS,
        K_HEALTH_INTERVAL_MS,
        K_HEALTH_TIMEOUT_MS,
        K_FAILURE_THRESHOLD,
        K_RECOVERY_THRESHOLD,
        K_FAIL_OPEN,
        K_SENTINEL_ADDRESSES,
        K_SENTINEL_MASTER_NAME,
        K_SENTINEL_PASSWORD,
        K_ADMIN_SOCKET,
        K_ADMIN_SOCKET_MODE,
        K_ADMIN_SOCKET_GROUP,
        K_ADMIN_ALLOWED_UIDS,
        K_ADMIN_ALLOWED_GIDS,
        K_ADMIN_LISTEN,
        K_KEY_PREFIX,
        K_DEFAULT_TTL,
        K_MAX_TTL,
        K_MAX_KEY_BYTES,
        K_MAX_VALUE_BYTES,
        K_COMPRESSION,
        K_COMPRESSION_LEVEL,
        K_COMPRESSION_THRESHOLD,
        K_COMPRESS_INLINE_MAX,
        K_LEASE_TTL_MS,
        K_MAX_WAIT_MS,
        K_MAX_TRACKED_NAMESPACES,
        K_NS_CHECK_MS,
        K_NEAR_CACHE_BYTES,
        K_NEAR_CACHE_TTL_MS,
        K_NEAR_HEARTBEAT_MS,
        K_LOG_LEVEL,
        K_LOG_TARGET,
        K_COUNT
};

_Static_assert(K_COUNT <= ARRAY_SIZE(((struct config *)0)->sources),
               "struct config sources[] is too small for config_keys[]");

/*
 * The _Generic terms add 0 to the offset but fail to compile when the field
 * does not have the C type the row's kind stores through, so a table row
 * cannot write an int64_t into an int. (clang-format mangles _Generic.)
 */
/* clang-format off */
#define FIELD(f, T) (offsetof(struct config, f) + _Generic(((struct config *)0)->f, T: 0))
#define INT_KIND(f) _Generic(((struct config *)0)->f, int: CONFIG_T_INT, int64_t: CONFIG_T_INT64)

/* The _AS forms are for keys whose INI name is not their field's name ([health] interval_ms). */
#define KEY_STR_AS(id, sec, name, f, kind, def, rel, env, help) \
        [id] = {sec, name, kind, FIELD(f, char *), def, 0, 0, rel, help, env, NULL}
#define KEY_STR(id, sec, f, kind, def, rel, env, help) \
        KEY_STR_AS(id, sec, #f, f, kind, def, rel, env, help)
#define KEY_INT_AS(id, sec, name, f, def, lo, hi, rel, env, help) \
        [id] = {sec, name, INT_KIND(f), offsetof(struct config, f), def, lo, hi, rel, help, env, \
                NULL}
#define KEY_INT(id, sec, f, def, lo, hi, rel, env, help) \
        KEY_INT_AS(id, sec, #f, f, def, lo, hi, rel, env, help)
#define KEY_MODE(id, sec, name, f, def, rel, help) \
        [id] = {sec, name, CONFIG_T_MODE, FIELD(f, unsigned), def, 0, 0777, rel, help, NULL, NULL}
#define KEY_ENUM(id, sec, name, f, values, def, rel, help) \
        [id] = {sec, name, CONFIG_T_ENUM, FIELD(f, int), def, 0, 0, rel, help, NULL, values}
#define KEY_BOOL(id, sec, name, f, def, rel, help) \
        [id] = {sec, name, CONFIG_T_BOOL, FIELD(f, bool), def, 0, 0, rel, help, NULL, NULL}
/* clang-format on */

/*
 * Indexed by enum log_level, enum config_read_from and enum config_compression;
 * NULL-terminated for CONFIG_T_ENUM.
 */
static const char *const log_level_names[] = {
        [LOG_DEBUG] = "debug",
        [LOG_INFO] = "info",
        [LOG_WARN] = "warn",
        [LOG_ERROR] = "error",
        NULL,
};

static const char *const read_from_names[] = {
        [READ_FROM_REPLICA] = "replica",
        [READ_FROM_PRIMARY] = "primary",
        [READ_FROM_ANY] = "any",
        NULL,
};

static const char *const compression_names[] = {
        [COMPRESSION_ZLIB] = "zlib",
        [COMPRESSION_OFF] = "off",
        NULL,
};

static const char *const log_target_names[] = {
        [LOG_TARGET_STDERR] = "stderr",
        [LOG_TARGET_SYSLOG] = "syslog",
        NULL,
};

static const struct config_key config_keys[K_COUNT] = {
        KEY_STR(K_SOCKET, "server", socket, CONFIG_T_PATH, "/run/kcache/kcached.sock", false, NULL,
                "Path of the Unix socket clients connect to."),
        KEY_MODE(K_SOCKET_MODE, "server", "socket_mode", socket_mode, "0660", false,
                 "Permission bits of the socket, in octal."),
        KEY_INT(K_MAX_CLIENTS, "server", max_clients, "1024", 1, 1000000, true, NULL,
                "Client connections served at once."),
        KEY_INT(K_MAX_REQUEST_BYTES, "server", max_request_bytes, "8388608", 1024, 1073741824, true,
                NULL, "Largest request a client may send, in bytes."),
        KEY_INT(K_MAX_NESTING, "server", max_nesting, "16", 1, 32, true, NULL,
                "Deepest nesting of arrays and maps in a request."),
        KEY_INT(K_MAX_BATCH_KEYS, "server", max_batch_keys, "10000", 1, 1000000, true, NULL,
                "Most keys in one batch request."),
        KEY_INT(K_DRAIN_TIMEOUT_MS, "server", drain_timeout_ms, "5000", 0, 600000, true, NULL,
                "On shutdown, how long requests in flight may take to finish."),
        KEY_INT(K_MAX_INFLIGHT_PER_CLIENT, "server", max_inflight_per_client, "1024", 1, 1000000,
                true, NULL,
                "Requests one client may have in flight; past it kcached stops reading from "
                "that client until answers drain (backpressure)."),
        KEY_INT(K_MAX_OUTPUT_BYTES_PER_CLIENT, "server", max_output_bytes_per_client, "67108864",
                65536, 4294967296, true, NULL,
                "Answers waiting for a client that does not read; past it the client is "
                "disconnected."),
        KEY_INT(K_IDLE_TIMEOUT_S, "server", idle_timeout_s, "0", 0, 86400, true, NULL,
                "Close a client idle (nothing in flight, nothing sent) this long, in seconds; "
                "0 keeps idle clients."),
        KEY_INT(K_REQUEST_READ_TIMEOUT_MS, "server", request_read_timeout_ms, "10000", 0, 3600000,
                true, NULL,
                "Close a client that leaves a request half-written this long (slowloris); 0 "
                "waits forever."),
        KEY_STR(K_SOCKET_GROUP, "server", socket_group, CONFIG_T_GROUP, "", false, NULL,
                "Group given to the client socket (a name or a number), the group app "
                "containers run as; empty leaves kcached's own group."),
        KEY_STR(K_ALLOWED_UIDS, "server", allowed_uids, CONFIG_T_USER_LIST, "", true, NULL,
                "Users (names or numbers, comma separated) allowed on the client socket "
                "besides root and kcached's own user; empty allows whoever can open it."),
        KEY_STR(K_ALLOWED_GIDS, "server", allowed_gids, CONFIG_T_GROUP_LIST, "", true, NULL,
                "Groups whose members (primary group) are allowed on the client socket; with "
                "allowed_uids, a peer matching either is let in."),
        KEY_STR(K_PRIMARY, "redis", primary, CONFIG_T_ADDR, "127.0.0.1:6379", true,
                "REDIS_HOST, REDIS_PORT",
                "Primary Redis node: host:port, [v6]:port or unix:/absolute/path. Not together "
                "with [sentinel] addresses."),
        KEY_STR(K_REPLICAS, "redis", replicas, CONFIG_T_ADDR_LIST, "", true,
                "REDIS_REPLICAS_HOST_PORT",
                "Replica Redis nodes, comma separated, written like primary; at most 16. Not "
                "together with [sentinel] addresses."),
        KEY_STR(K_USERNAME, "redis", username, CONFIG_T_STRING, "", false, NULL,
                "ACL user sent with AUTH username password; empty for the default user."),
        KEY_STR(K_PASSWORD, "redis", password, CONFIG_T_STRING, "", false, "REDIS_PASSWORD",
                "Password sent with AUTH; empty for none. Prefer password_file."),
        KEY_STR(K_PASSWORD_FILE, "redis", password_file, CONFIG_T_STRING, "", false,
                "REDIS_PASSWORD",
                "File holding the password (at most 1 KiB, trailing newlines ignored), read at "
                "load. Not together with password."),
        KEY_INT(K_DB, "redis", db, "0", 0, 15, false, NULL, "Redis database number to SELECT."),
        KEY_INT(K_CONNECT_TIMEOUT_MS, "redis", connect_timeout_ms, "1000", 1, 600000, true,
                "REDIS_TIMEOUT", "Time allowed to connect to a Redis node."),
        KEY_INT(K_COMMAND_TIMEOUT_MS, "redis", command_timeout_ms, "1000", 1, 600000, true,
                "REDIS_TIMEOUT",
                "Time allowed for a Redis reply: the deadline of a request, retry included."),
        KEY_INT(K_MAX_REPLY_ELEMENTS, "redis", max_reply_elements, "1048576", 16, 100000000,
                false, NULL,
                "Largest array a Redis reply may declare; more is refused as a node failure."),
        KEY_INT(K_MAX_REPLY_BYTES, "redis", max_reply_bytes, "536870912", 65536, 4294967296,
                false, NULL,
                "Largest Redis reply (built plus buffered); more is refused as a node failure."),
        KEY_INT(K_POOL_SIZE, "redis", pool_size, "4", 1, 64, true, NULL,
                "Connections to the primary; each pipelines its commands."),
        KEY_INT(K_REPLICA_POOL_SIZE, "redis", replica_pool_size, "2", 1, 64, true, NULL,
                "Connections to each replica."),
        KEY_ENUM(K_READ_FROM, "redis", "read_from", read_from, read_from_names, "replica", true,
                 "Where reads go: replica (healthy replicas, else the primary), primary, or any "
                 "(every healthy node). Writes always go to the primary."),
        KEY_INT(K_REPLICA_ATTEMPT_TIMEOUT_MS, "redis", replica_attempt_timeout_ms, "0", 0, 600000,
                true, NULL,
                "Time a read may wait for a replica before it is retried once on another node; "
                "at most command_timeout_ms; 0 means command_timeout_ms / 3."),
        KEY_INT(K_MAX_INFLIGHT_PER_NODE, "redis", max_inflight_per_node, "10000", 1, 1000000, true,
                NULL, "Commands outstanding on one node above which the node is marked down."),
        KEY_INT(K_RECONNECT_MAX_MS, "redis", reconnect_max_ms, "1000", 10, 60000, true, NULL,
                "Longest wait between reconnect attempts to a node; the wait starts at 50 ms and "
                "doubles, with +-25% jitter."),
        KEY_INT(K_MAX_REPLICA_LAG_MS, "redis", max_replica_lag_ms, "1000", 1, 600000, true, NULL,
                "A replica further behind the primary than this leaves the read rotation until "
                "it catches up."),
        KEY_INT_AS(K_HEALTH_INTERVAL_MS, "health", "interval_ms", health_interval_ms, "500", 10,
                   60000, true, NULL,
                   "Period of the PING probe of each node and of the replica-lag heartbeat."),
        KEY_INT_AS(K_HEALTH_TIMEOUT_MS, "health", "timeout_ms", health_timeout_ms, "250", 1, 60000,
                   true, NULL, "A probe not answered in this time is a failure."),
        KEY_INT(K_FAILURE_THRESHOLD, "health", failure_threshold, "3", 1, 100, true, NULL,
                "Consecutive failures (probes, request timeouts, lost connections, node errors) "
                "that mark a node down."),
        KEY_INT(K_RECOVERY_THRESHOLD, "health", recovery_threshold, "2", 1, 100, true, NULL,
                "Consecutive successful probes that mark a down node up again."),
        KEY_BOOL(K_FAIL_OPEN, "health", "fail_open", fail_open, "no", true,
                 "yes: the application copes without its cache, so when no Redis node is "
                 "reachable the admin `health ready` answers degraded, not down (yes or no)."),
        KEY_STR_AS(K_SENTINEL_ADDRESSES, "sentinel", "addresses", sentinel_addresses,
                   CONFIG_T_TCP_ADDR_LIST, "", false, NULL,
                   "Redis Sentinels to ask for the primary and replicas: host:port or [v6]:port, "
                   "comma separated; at most 16; empty for none. When set, [redis] primary and "
                   "replicas must not be."),
        KEY_STR_AS(K_SENTINEL_MASTER_NAME, "sentinel", "master_name", sentinel_master_name,
                   CONFIG_T_STRING, "", false, NULL,
                   "Name of the monitored master; required with addresses."),
        KEY_STR_AS(K_SENTINEL_PASSWORD, "sentinel", "password", sentinel_password, CONFIG_T_STRING,
                   "", false, NULL, "Password sent with AUTH to the Sentinels; empty for none."),
        KEY_STR_AS(K_ADMIN_SOCKET, "admin", "socket", admin_socket, CONFIG_T_PATH_OPT,
                   "/run/kcache/kcached-admin.sock", false, NULL,
                   "Path of the admin socket (health, stats, backends); empty disables it."),
        KEY_MODE(K_ADMIN_SOCKET_MODE, "admin", "socket_mode", admin_socket_mode, "0600", false,
                 "Permission bits of the admin socket, in octal."),
        KEY_STR_AS(K_ADMIN_SOCKET_GROUP, "admin", "socket_group", admin_socket_group,
                   CONFIG_T_GROUP, "", false, NULL,
                   "Group given to the admin socket (a name or a number), so that socket_mode "
                   "0660 lets its members connect; empty leaves kcached's own group."),
        KEY_STR_AS(K_ADMIN_ALLOWED_UIDS, "admin", "allowed_uids", admin_allowed_uids,
                   CONFIG_T_USER_LIST, "", true, NULL,
                   "Users (names or numbers, comma separated, at most 32) allowed on the admin "
                   "socket besides root and kcached's own user, which always are. Checked with "
                   "the peer's credentials at connect; other peers are closed and logged."),
        KEY_STR_AS(K_ADMIN_ALLOWED_GIDS, "admin", "allowed_gids", admin_allowed_gids,
                   CONFIG_T_GROUP_LIST, "", true, NULL,
                   "Groups (names or numbers, comma separated, at most 32) whose members are "
                   "allowed on the admin socket: the peer's primary group at connect, not its "
                   "supplementary groups."),
        KEY_STR_AS(K_ADMIN_LISTEN, "admin", "listen", admin_listen, CONFIG_T_LISTEN, "", false,
                   NULL,
                   "TCP address (IP:port, e.g. 127.0.0.1:9121) of a second admin listener for "
                   "scrapers that cannot read a Unix socket; it serves only metrics, health and "
                   "stats (and GET /metrics over HTTP), never a command that changes state. "
                   "Empty for none."),
        KEY_STR(K_KEY_PREFIX, "cache", key_prefix, CONFIG_T_STRING, "kc:", false, NULL,
                "Prefix of every Redis key kcached uses; may be empty."),
        KEY_INT(K_DEFAULT_TTL, "cache", default_ttl, "3600", 1, 2147483647, true, NULL,
                "TTL of an entry stored without one, in seconds; at most max_ttl."),
        KEY_INT(K_MAX_TTL, "cache", max_ttl, "2592000", 1, 2147483647, true, NULL,
                "Longest TTL, in seconds."),
        KEY_INT(K_MAX_KEY_BYTES, "cache", max_key_bytes, "1024", 1, 65536, true, NULL,
                "Longest application key, in bytes (any bytes); a longer one is refused with "
                "TOO_LARGE."),
        KEY_INT(K_MAX_VALUE_BYTES, "cache", max_value_bytes, "16777216", 1, 1073741824, true, NULL,
                "Largest value kcached stores or inflates, in bytes: a larger write is refused "
                "with TOO_LARGE, a stored value claiming a larger size reads as corrupt (a miss)."),
        KEY_ENUM(K_COMPRESSION, "cache", "compression", compression, compression_names, "zlib",
                 true,
                 "How values are written: zlib (compressed when that makes them smaller) or off."),
        KEY_INT(K_COMPRESSION_LEVEL, "cache", compression_level, "1", 1, 9, true, NULL,
                "zlib level: 1 is the fastest, 9 the smallest."),
        KEY_INT(K_COMPRESSION_THRESHOLD, "cache", compression_threshold, "1024", 0, 1073741824,
                true, NULL,
                "Values of at least this many bytes are compressed, and stored so if the result "
                "is smaller."),
        KEY_INT(K_COMPRESS_INLINE_MAX, "cache", compress_inline_max, "1048576", 0, 1073741824, true,
                NULL,
                "Values larger than this many bytes are stored uncompressed: compressing them "
                "would stall the event loop."),
        KEY_INT(K_LEASE_TTL_MS, "cache", lease_ttl_ms, "5000", 10, 600000, true, NULL,
                "Lease length of get_or_set when the request gives no lease_ms; also the default "
                "of its wait_ms."),
        KEY_INT(K_MAX_WAIT_MS, "cache", max_wait_ms, "30000", 10, 600000, true, NULL,
                "Longest wait_ms a get_or_set may ask for; larger ones are capped."),
        KEY_INT(K_MAX_TRACKED_NAMESPACES, "cache", max_tracked_namespaces, "256", 1, 100000, false,
                NULL,
                "Most namespaces kcached tracks at once (cached generation, per-namespace stats)."),
        KEY_INT(K_NS_CHECK_MS, "cache", ns_check_ms, "1000", 10, 600000, true, NULL,
                "How often kcached re-reads a namespace generation it caches from Redis, in case "
                "a pub/sub notice was missed."),
        KEY_INT(K_NEAR_CACHE_BYTES, "cache", near_cache_bytes, "0", 0, 68719476736, false, NULL,
                "Memory for the near cache (hot values kept in kcached, invalidated by Redis "
                "tracking), keys and overhead counted; 0 turns it off."),
        KEY_INT(K_NEAR_CACHE_TTL_MS, "cache", near_cache_ttl_ms, "60000", 1, 86400000, true, NULL,
                "Longest a near-cache entry is served without an invalidation, in ms."),
        KEY_INT(K_NEAR_HEARTBEAT_MS, "cache", near_heartbeat_ms, "1000", 10, 600000, true, NULL,
                "Period of the heartbeat that proves invalidations still arrive; a missed one "
                "flushes the near cache."),
        KEY_ENUM(K_LOG_LEVEL, "log", "level", log_level, log_level_names, "info", true,
                 "Least severe messages logged: debug, info, warn or error."),
        KEY_ENUM(K_LOG_TARGET, "log", "target", log_target, log_target_names, "stderr", false,
                 "Where log lines go: stderr (journald and container runtimes collect it) or "
                 "syslog (facility daemon)."),
};

static const char *const config_sections[] = {"server", "redis", "health", "sentinel",
                                              "admin",  "cache", "log"};

/*
 * Where each value came from beyond sources[]: the line for FILE and the
 * variable for ENV. config.h does not have fields for them yet; until it
 * grows `int lines[64]` and `const char *env_names[64]` (and defines
 * CONFIG_HAVE_ORIGINS), the dump names the file without a line and every
 * variable that can set the key.
 */
#ifdef CONFIG_HAVE_ORIGINS
static void
origin_set(struct config *c, size_t i, int line, const char *env)
{
        c->lines[i] = line;
        c->env_names[i] = env;
}

static int
origin_line(const struct config *c, size_t i)
{
        return c->lines[i];
}

static const char *
origin_env(const struct config *c, size_t i)
{
        if (c->env_names[i] != NULL)
                return c->env_names[i];
        return config_keys[i].env != NULL ? config_keys[i].env : "?";
}
#else
static void
origin_set(struct config *c, size_t i, int line, const char *env)
{
        (void)c;
        (void)i;
        (void)line;
        (void)env;
}

static int
origin_line(const struct config *c, size_t i)
{
        (void)c;
        (void)i;
        return 0;
}

static const char *
origin_env(const struct config *c, size_t i)
{
        (void)c;
        return config_keys[i].env != NULL ? config_keys[i].env : "?";
}
#endif

/* names[v] of a NULL-terminated list, "unknown" when v is not an index of it. */
static const char *
enum_name(const char *const *names, int v)
{
        for (int i = 0; names[i] != NULL; i++) {
                if (i == v)
                        return names[i];
        }
        return "unknown";
}

const char *
log_level_name(int level)
{
        return enum_name(log_level_names, level);
}

const char *
config_read_from_name(int v)
{
        return enum_name(read_from_names, v);
}

const char *
config_compression_name(int v)
{
        return enum_name(compression_names, v);
}

const char *
config_log_target_name(int v)
{
        return enum_name(log_target_names, v);
}

static void __attribute__((format(printf, 3, 4)))
set_err(char *err, size_t errlen, const char *fmt, ...)
{
        va_list ap;

        if (err == NULL || errlen == 0)
                return;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
}

static void *
field_ptr(struct config *c, size_t i)
{
        return (char *)c + config_keys[i].offset;
}

static const void *
field_cptr(const struct config *c, size_t i)
{
        return (const char *)c + config_keys[i].offset;
}

static int
replace_string(char **slot, const char *value)
{
        char *copy = strdup(value);

        if (copy == NULL)
                return -ENOMEM;
        free(*slot);
        *slot = copy;
        return 0;
}

/*
 * Decimal (or octal) digits with an optional leading '-', nothing else: no
 * '+', no spaces, no "0x", no suffix. strtoll would accept several of those.
 * 0, -EINVAL for a malformed number, -ERANGE if it does not fit int64_t.
 */
static int
parse_int(const char *s, unsigned base, int64_t *out)
{
        const uint64_t limit = (uint64_t)INT64_MAX + 1;
        const char *p = s;
        bool is_neg = false;
        uint64_t v = 0;

        if (*p == '-') {
                is_neg = true;
                p++;
        }
        if (*p == '\0')
                return -EINVAL;
        for (; *p != '\0'; p++) {
                if (*p < '0' || *p >= (char)('0' + base))
                        return -EINVAL;
                unsigned d = (unsigned)(*p - '0');
                if (v > (limit - d) / base)
                        return -ERANGE;
                v = v * base + d;
        }
        if (is_neg)
                *out = v == limit ? INT64_MIN : -(int64_t)v;
        else if (v == limit)
                return -ERANGE;
        else
                *out = (int64_t)v;
        return 0;
}

static bool
is_host_char(char ch)
{
        return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
               ch == '.' || ch == '-' || ch == '_';
}

static int
parse_port(const char *s, int *port)
{
        int64_t v;

        if (parse_int(s, 10, &v) != 0 || v < 1 || v > 65535)
                return -EINVAL;
        *port = (int)v;
        return 0;
}

int
config_parse_addr(const char *s, struct config_addr *a, char *err, size_t errlen)
{
        struct config_addr r = {0};
        const char *colon;
        size_t hostlen;

        if (strncmp(s, "unix:", 5) == 0) {
                const char *path = s + 5;
                if (path[0] != '/') {
                        set_err(err, errlen, "'%s': unix: needs an absolute path", s);
                        return -1;
                }
                if (strlen(path) >= sizeof(r.path)) {
                        set_err(err, errlen, "'%s': socket path longer than %zu bytes", s,
                                sizeof(r.path) - 1);
                        return -1;
                }
                r.is_unix = true;
                strcpy(r.path, path);
                *a = r;
                return 0;
        }

        if (s[0] == '[') {
                const char *close = strchr(s, ']');
                struct in6_addr in6;
                if (close == NULL) {
                        set_err(err, errlen, "'%s': missing ']'", s);
                        return -1;
                }
                hostlen = (size_t)(close - s - 1);
                if (hostlen == 0 || hostlen >= sizeof(r.host)) {
                        set_err(err, errlen, "'%s' is not [IPv6]:port", s);
                        return -1;
                }
                memcpy(r.host, s + 1, hostlen);
                r.host[hostlen] = '\0';
                if (inet_pton(AF_INET6, r.host, &in6) != 1) {
                        set_err(err, errlen, "'%s': '%s' is not an IPv6 address", s, r.host);
                        return -1;
                }
                if (close[1] != ':') {
                        set_err(err, errlen, "'%s': missing :port after ']'", s);
                        return -1;
                }
                colon = close + 1;
        } else {
                colon = strchr(s, ':');
                if (colon == NULL) {
                        set_err(err, errlen,
                                "'%s' is not host:port, [v6]:port or unix:/path (missing :port)",
                                s);
                        return -1;
                }
                if (strchr(colon + 1, ':') != NULL) {
                        set_err(err, errlen, "'%s': an IPv6 address needs brackets: [v6]:port", s);
                        return -1;
                }
                hostlen = (size_t)(colon - s);
                if (hostlen == 0) {
                        set_err(err, errlen, "'%s': empty host", s);
                        return -1;
                }
                if (hostlen >= sizeof(r.host)) {
                        set_err(err, errlen, "host longer than %zu bytes", sizeof(r.host) - 1);
                        return -1;
                }
                for (size_t i = 0; i < hostlen; i++) {
                        if (!is_host_char(s[i])) {
                                set_err(err, errlen,
                                        "'%s': host may hold only letters, digits, '.', '-', '_'",
                                        s);
                                return -1;
                        }
                }
                memcpy(r.host, s, hostlen);
                r.host[hostlen] = '\0';
        }
        if (parse_port(colon + 1, &r.port) != 0) {
                set_err(err, errlen, "'%s': '%s' is not a port (1..65535)", s, colon + 1);
                return -1;
        }
        *a = r;
        return 0;
}

const char *
config_addr_str(const struct config_addr *a, char *out, size_t outlen)
{
        if (a->is_unix)
                snprintf(out, outlen, "unix:%s", a->path);
        else if (strchr(a->host, ':') != NULL)
                snprintf(out, outlen, "[%s]:%d", a->host, a->port);
        else
                snprintf(out, outlen, "%s:%d", a->host, a->port);
        return out;
}

static bool
is_blank(char ch)
{
        return ch == ' ' || ch == '\t';
}

/*
 * Splits a comma list ("a:1, b:2"), ignoring blanks around items. An empty
 * or blank list is zero addresses; an empty item is an error, and so is a
 * unix: item unless allow_unix. addrs may be NULL to validate only.
 */
static int
parse_addr_list(const char *s, bool allow_unix, struct config_addr *addrs, int *n_addrs, char *err,
                size_t errlen)
{
        struct config_addr a;
        char item[CONFIG_HOST_MAX + 16];
        const char *p = s;
        int n = 0;

        while (is_blank(*p))
                p++;
        if (*p == '\0') {
                *n_addrs = 0;
                return 0;
        }
        for (;;) {
                const char *end = strchr(p, ',');
                const char *stop = end != NULL ? end : p + strlen(p);
                while (p < stop && is_blank(*p))
                        p++;
                while (stop > p && is_blank(stop[-1]))
                        stop--;
                size_t len = (size_t)(stop - p);
                if (len == 0) {
                        set_err(err, errlen, "empty item in the list");
                        return -1;
                }
                if (len >= sizeof(item)) {
                        set_err(err, errlen, "item %d is too long", n + 1);
                        return -1;
                }
                memcpy(item, p, len);
                item[len] = '\0';
                if (n == CONFIG_MAX_REPLICAS) {
                        set_err(err, errlen, "more than %d addresses", CONFIG_MAX_REPLICAS);
                        return -1;
                }
                if (config_parse_addr(item, &a, err, errlen) != 0)
                        return -1;
                if (a.is_unix && !allow_unix) {
                        set_err(err, errlen,
                                "'%s': expected host:port or [v6]:port, not unix:", item);
                        return -1;
                }
                if (addrs != NULL)
                        addrs[n] = a;
                n++;
                if (end == NULL)
                        break;
                p = end + 1;
        }
        *n_addrs = n;
        return 0;
}

/*
 * One user or group: a number (any id but -1, which chown reads as "leave
 * alone"), or a name the system knows. Names are looked up when the
 * configuration is loaded: an id that stops existing later keeps working.
 */
static int
parse_id(const char *s, bool is_group, uint32_t *id, char *why, size_t whylen)
{
        int64_t v;

        if (s[0] >= '0' && s[0] <= '9') {
                if (parse_int(s, 10, &v) != 0 || v < 0 || v >= UINT32_MAX) {
                        set_err(why, whylen, "'%s' is not a %s id (0..%u)", s,
                                is_group ? "group" : "user", UINT32_MAX - 1);
                        return -1;
                }
                *id = (uint32_t)v;
                return 0;
        }
        errno = 0;
        if (is_group) {
                const struct group *gr = getgrnam(s);
                if (gr != NULL) {
                        *id = (uint32_t)gr->gr_gid;
                        return 0;
                }
        } else {
                const struct passwd *pw = getpwnam(s);
                if (pw != NULL) {
                        *id = (uint32_t)pw->pw_uid;
                        return 0;
                }
        }
        if (errno != 0 && errno != ENOENT && errno != ESRCH)
                set_err(why, whylen, "'%s': looking up the %s: %s", s, is_group ? "group" : "user",
                        strerror(errno));
        else
                set_err(why, whylen, "'%s': no such %s", s, is_group ? "group" : "user");
        return -1;
}

/* A comma list of ids, blanks around items ignored; ids may be NULL to validate only. */
static int
parse_id_list(const char *s, bool is_group, uint32_t *ids, int *n_ids, char *why, size_t whylen)
{
        char item[256];
        const char *p = s;
        uint32_t id;
        int n = 0;

        while (is_blank(*p))
                p++;
        if (*p == '\0') {
                *n_ids = 0;
                return 0;
        }
        for (;;) {
                const char *end = strchr(p, ',');
                const char *stop = end != NULL ? end : p + strlen(p);
                while (p < stop && is_blank(*p))
                        p++;
                while (stop > p && is_blank(stop[-1]))
                        stop--;
                size_t len = (size_t)(stop - p);
                if (len == 0) {
                        set_err(why, whylen, "empty item in the list");
                        return -1;
                }
                if (len >= sizeof(item)) {
                        set_err(why, whylen, "item %d is too long", n + 1);
                        return -1;
                }
                if (n == CONFIG_MAX_IDS) {
                        set_err(why, whylen, "more than %d %s", CONFIG_MAX_IDS,
                                is_group ? "groups" : "users");
                        return -1;
                }
                memcpy(item, p, len);
                item[len] = '\0';
                if (parse_id(item, is_group, &id, why, whylen) != 0)
                        return -1;
                if (ids != NULL)
                        ids[n] = id;
                n++;
                if (end == NULL)
                        break;
                p = end + 1;
        }
        *n_ids = n;
        return 0;
}

/* [admin] listen: empty, or an IP literal and a port (binding needs no resolver). */
static int
parse_listen(const char *s, struct config_addr *a, char *why, size_t whylen)
{
        struct in6_addr in6;
        struct in_addr in4;

        if (s[0] == '\0')
                return 0;
        if (config_parse_addr(s, a, why, whylen) != 0)
                return -1;
        if (a->is_unix) {
                set_err(why, whylen, "'%s': expected IP:port or [IPv6]:port, not unix:", s);
                return -1;
        }
        if (inet_pton(AF_INET, a->host, &in4) != 1 && inet_pton(AF_INET6, a->host, &in6) != 1) {
                set_err(why, whylen,
                        "'%s': '%s' is not an IP address (expected e.g. 127.0.0.1:9121)", s,
                        a->host);
                return -1;
        }
        return 0;
}

static void
format_value(const struct config *c, size_t i, char *out, size_t outlen)
{
        const struct config_key *k = &config_keys[i];
        const void *f = field_cptr(c, i);

        switch (k->type) {
        case CONFIG_T_STRING:
        case CONFIG_T_PATH:
        case CONFIG_T_PATH_OPT:
        case CONFIG_T_ADDR:
        case CONFIG_T_ADDR_LIST:
        case CONFIG_T_TCP_ADDR_LIST:
        case CONFIG_T_GROUP:
        case CONFIG_T_USER_LIST:
        case CONFIG_T_GROUP_LIST:
        case CONFIG_T_LISTEN:
                snprintf(out, outlen, "%s", *(char *const *)f);
                break;
        case CONFIG_T_BOOL:
                snprintf(out, outlen, "%s", *(const bool *)f ? "yes" : "no");
                break;
        case CONFIG_T_INT:
                snprintf(out, outlen, "%d", *(const int *)f);
                break;
        case CONFIG_T_INT64:
                snprintf(out, outlen, "%lld", (long long)*(const int64_t *)f);
                break;
        case CONFIG_T_MODE:
                snprintf(out, outlen, "0%03o", *(const unsigned *)f);
                break;
        case CONFIG_T_ENUM:
                snprintf(out, outlen, "%s", enum_name(k->names, *(const int *)f));
                break;
        }
}

/*
 * Validates value for key i and stores it. 0; -1 with the reason in why
 * (without the "FILE:LINE: [section] key: " prefix, the caller knows it);
 * -ENOMEM.
 */
static int
key_set(struct config *c, size_t i, const char *value, char *why, size_t whylen)
{
        const struct config_key *k = &config_keys[i];
        void *f = field_ptr(c, i);
        int64_t v;
        int n, r;

        switch (k->type) {
        case CONFIG_T_STRING:
                break;
        case CONFIG_T_PATH:
        case CONFIG_T_PATH_OPT:
                if (value[0] == '\0' && k->type == CONFIG_T_PATH) {
                        set_err(why, whylen, "empty value (expected a path)");
                        return -1;
                }
                if (strlen(value) >= CONFIG_PATH_MAX) {
                        set_err(why, whylen, "path longer than %d bytes", CONFIG_PATH_MAX - 1);
                        return -1;
                }
                break;
        case CONFIG_T_ADDR: {
                struct config_addr a;
                if (value[0] == '\0') {
                        set_err(why, whylen,
                                "empty value (expected host:port, [v6]:port or unix:/path)");
                        return -1;
                }
                if (config_parse_addr(value, &a, why, whylen) != 0)
                        return -1;
                break;
        }
        case CONFIG_T_ADDR_LIST:
        case CONFIG_T_TCP_ADDR_LIST:
                if (parse_addr_list(value, k->type == CONFIG_T_ADDR_LIST, NULL, &n, why, whylen) !=
                    0)
                        return -1;
                break;
        case CONFIG_T_INT:
        case CONFIG_T_INT64:
        case CONFIG_T_MODE: {
                bool is_mode = k->type == CONFIG_T_MODE;
                if (value[0] == '\0') {
                        set_err(why, whylen, "empty value (expected %s)",
                                is_mode ? "an octal mode" : "a decimal integer");
                        return -1;
                }
                r = parse_int(value, is_mode ? 8 : 10, &v);
                if (r == -EINVAL) {
                        set_err(why, whylen, "'%s' is not %s", value,
                                is_mode ? "an octal number" : "a decimal integer");
                        return -1;
                }
                if (r == -ERANGE || v < k->min || v > k->max) {
                        if (is_mode && r == 0 && v >= 0)
                                set_err(why, whylen, "%#llo is out of range %#llo..%#llo",
                                        (unsigned long long)v, (unsigned long long)k->min,
                                        (unsigned long long)k->max);
                        else if (r == 0)
                                set_err(why, whylen, "%lld is out of range %lld..%lld",
                                        (long long)v, (long long)k->min, (long long)k->max);
                        else
                                set_err(why, whylen, "%s is out of range %lld..%lld", value,
                                        (long long)k->min, (long long)k->max);
                        return -1;
                }
                if (k->type == CONFIG_T_INT)
                        *(int *)f = (int)v;
                else if (k->type == CONFIG_T_INT64)
                        *(int64_t *)f = v;
                else
                        *(unsigned *)f = (unsigned)v;
                return 0;
        }
        case CONFIG_T_ENUM: {
                char list[256] = "";
                size_t used = 0;
                for (int e = 0; k->names[e] != NULL; e++) {
                        if (strcmp(value, k->names[e]) == 0) {
                                *(int *)f = e;
                                return 0;
                        }
                        if (used < sizeof(list)) {
                                int w = snprintf(list + used, sizeof(list) - used, "%s%s",
                                                 e > 0 ? ", " : "", k->names[e]);
                                used += w > 0 ? (size_t)w : 0;
                        }
                }
                set_err(why, whylen, "'%s' is not one of %s", value, list);
                return -1;
        }
        case CONFIG_T_BOOL:
                if (strcmp(value, "yes") == 0 || strcmp(value, "true") == 0 ||
                    strcmp(value, "1") == 0) {
                        *(bool *)f = true;
                        return 0;
                }
                if (strcmp(value, "no") == 0 || strcmp(value, "false") == 0 ||
                    strcmp(value, "0") == 0) {
                        *(bool *)f = false;
                        return 0;
                }
                set_err(why, whylen, "'%s' is not one of yes, no, true, false, 1, 0", value);
                return -1;
        case CONFIG_T_GROUP: {
                uint32_t id;
                if (value[0] != '\0' && parse_id(value, true, &id, why, whylen) != 0)
                        return -1;
                break;
        }
        case CONFIG_T_USER_LIST:
        case CONFIG_T_GROUP_LIST:
                if (parse_id_list(value, k->type == CONFIG_T_GROUP_LIST, NULL, &n, why, whylen) !=
                    0)
                        return -1;
                break;
        case CONFIG_T_LISTEN: {
                struct config_addr a;
                if (parse_listen(value, &a, why, whylen) != 0)
                        return -1;
                break;
        }
        }
        /* The string kinds. */
        return replace_string((char **)f, value);
}

/* Fills the derived addresses and ids from the (already validated) strings. */
static int
derive_addrs(struct config *c, char *why, size_t whylen)
{
        if (config_parse_addr(c->primary, &c->primary_addr, why, whylen) != 0)
                return -1;
        if (parse_addr_list(c->replicas, true, c->replica_addrs, &c->n_replicas, why, whylen) != 0)
                return -1;
        if (parse_addr_list(c->sentinel_addresses, false, c->sentinel_addrs, &c->n_sentinels, why,
                            whylen) != 0)
                return -1;
        c->has_admin_gid = c->admin_socket_group[0] != '\0';
        c->admin_gid = 0;
        if (c->has_admin_gid &&
            parse_id(c->admin_socket_group, true, &c->admin_gid, why, whylen) != 0)
                return -1;
        c->has_client_gid = c->socket_group[0] != '\0';
        c->client_gid = 0;
        if (c->has_client_gid && parse_id(c->socket_group, true, &c->client_gid, why, whylen) != 0)
                return -1;
        if (parse_id_list(c->allowed_uids, false, c->client_uids, &c->n_client_uids, why,
                          whylen) != 0 ||
            parse_id_list(c->allowed_gids, true, c->client_gids, &c->n_client_gids, why,
                          whylen) != 0)
                return -1;
        if (parse_id_list(c->admin_allowed_uids, false, c->admin_uids, &c->n_admin_uids, why,
                          whylen) != 0 ||
            parse_id_list(c->admin_allowed_gids, true, c->admin_gids, &c->n_admin_gids, why,
                          whylen) != 0)
                return -1;
        c->has_admin_listen = c->admin_listen[0] != '\0';
        memset(&c->admin_listen_addr, 0, sizeof(c->admin_listen_addr));
        return parse_listen(c->admin_listen, &c->admin_listen_addr, why, whylen);
}

static bool
is_string_type(enum config_type t)
{
        switch (t) {
        case CONFIG_T_STRING:
        case CONFIG_T_PATH:
        case CONFIG_T_PATH_OPT:
        case CONFIG_T_ADDR:
        case CONFIG_T_ADDR_LIST:
        case CONFIG_T_TCP_ADDR_LIST:
        case CONFIG_T_GROUP:
        case CONFIG_T_USER_LIST:
        case CONFIG_T_GROUP_LIST:
        case CONFIG_T_LISTEN:
                return true;
        case CONFIG_T_INT:
        case CONFIG_T_INT64:
        case CONFIG_T_MODE:
        case CONFIG_T_ENUM:
        case CONFIG_T_BOOL:
                return false;
        }
        return false;
}

void
config_deinit(struct config *c)
{
        for (size_t i = 0; i < K_COUNT; i++) {
                const struct config_key *k = &config_keys[i];
                if (is_string_type(k->type)) {
                        char **s = field_ptr(c, i);
                        free(*s);
                        *s = NULL;
                }
        }
        free(c->path);
        c->path = NULL;
}

int
config_init(struct config *c)
{
        char why[256];
        int r;

        memset(c, 0, sizeof(*c));
        for (size_t i = 0; i < K_COUNT; i++) {
                r = key_set(c, i, config_keys[i].def, why, sizeof(why));
                if (r != 0)
                        goto fail;
                c->sources[i] = CONFIG_SRC_DEFAULT;
        }
        r = derive_addrs(c, why, sizeof(why));
        if (r != 0)
                goto fail;
        return 0;
fail:
        config_deinit(c);
        /* -1 means a default in the table does not pass its own check: a bug test-config catches.
         */
        return r == -ENOMEM ? -ENOMEM : -EINVAL;
}

/* ---- INI file ---------------------------------------------------------------------------- */

struct load_state {
        struct config *c;
        FILE *f;
        const char *path;
        int lineno;         /* of the line libinih is working on */
        bool has_prev_key;  /* mirrors libinih's prev_name: a key line since the last [section] */
        int lines[K_COUNT]; /* line that set each key, 0 for none */
        int err_line;       /* line of the first error, 0 for none */
        int err_ret;        /* -ENOMEM or -1 */
        char *err;
        size_t errlen;
};

static void __attribute__((format(printf, 3, 4)))
load_fail(struct load_state *st, int ret, const char *fmt, ...)
{
        va_list ap;

        if (st->err_line != 0)
                return; /* keep the first */
        st->err_line = st->lineno > 0 ? st->lineno : 1;
        st->err_ret = ret;
        if (st->err != NULL && st->errlen > 0) {
                va_start(ap, fmt);
                vsnprintf(st->err, st->errlen, fmt, ap);
                va_end(ap);
        }
}

static bool
is_known_section(const char *name, size_t len)
{
        for (size_t i = 0; i < ARRAY_SIZE(config_sections); i++) {
                if (strlen(config_sections[i]) == len && memcmp(config_sections[i], name, len) == 0)
                        return true;
        }
        return false;
}

static bool
is_space(char ch)
{
        return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n' || ch == '\v' || ch == '\f';
}

/*
 * Looks at a line the way libinih 55 will, to catch what its handler never
 * sees: a [section] we do not know (even one with no keys), and continuation
 * lines (an indented line after a key is appended to that key's value).
 */
static void
check_line(struct load_state *st, char *line)
{
        char *start = line;

        if (st->lineno == 1 && (unsigned char)start[0] == 0xEF && (unsigned char)start[1] == 0xBB &&
            (unsigned char)start[2] == 0xBF)
                start += 3;
        char *p = start;
        while (is_space(*p))
                p++;
        if (*p == '\0' || *p == ';' || *p == '#')
                return;
        if (p > start && st->has_prev_key) {
                load_fail(st, -1,
                          "%s:%d: line starts with whitespace: libinih would append it to the "
                          "previous key's value",
                          st->path, st->lineno);
                return;
        }
        if (*p == '[') {
                char *close = strchr(p + 1, ']');
                if (close == NULL)
                        return; /* libinih reports it as a syntax error */
                if (!is_known_section(p + 1, (size_t)(close - p - 1))) {
                        load_fail(st, -1, "%s:%d: [%.*s]: unknown section", st->path, st->lineno,
                                  (int)(close - p - 1), p + 1);
                        return;
                }
                st->has_prev_key = false;
                return;
        }
        st->has_prev_key = true;
}

/*
 * fgets() for libinih that counts lines, so the handler can say where it is,
 * and refuses long lines instead of letting libinih cut them. Returns NULL
 * at EOF or on the first error, which ends the parse.
 */
static char *
config_reader(char *str, int num, void *stream)
{
        struct load_state *st = stream;
        size_t len = 0, cap = num > 0 ? (size_t)num : 0;
        bool has_nul = false;
        int ch = EOF;

        if (st->err_line != 0)
                return NULL;
        while ((ch = getc(st->f)) != EOF) {
                if (len + 1 < cap)
                        str[len] = (char)ch;
                len++;
                if (ch == '\0')
                        has_nul = true;
                if (ch == '\n')
                        break;
        }
        if (ch == EOF && ferror(st->f)) {
                st->lineno++;
                load_fail(st, -1, "%s:%d: read error: %s", st->path, st->lineno, strerror(errno));
                return NULL;
        }
        if (len == 0)
                return NULL;
        st->lineno++;
        if (len >= CONFIG_LINE_MAX || len + 1 > cap) {
                load_fail(st, -1, "%s:%d: line is %zu bytes long, at most %d are allowed", st->path,
                          st->lineno, len, CONFIG_LINE_MAX - 1);
                return NULL;
        }
        str[len] = '\0';
        if (has_nul) {
                load_fail(st, -1, "%s:%d: line contains a NUL byte", st->path, st->lineno);
                return NULL;
        }
        check_line(st, str);
        return st->err_line != 0 ? NULL : str;
}

static int
find_key(const char *section, const char *name)
{
        for (size_t i = 0; i < K_COUNT; i++) {
                if (strcmp(config_keys[i].section, section) == 0 &&
                    strcmp(config_keys[i].key, name) == 0)
                        return (int)i;
        }
        return -1;
}

static int
config_handler(void *user, const char *section, const char *name, const char *value)
{
        struct load_state *st = user;
        char why[512];
        int i, r;

        if (st->err_line != 0)
                return 0;
        if (section[0] == '\0') {
                load_fail(st, -1, "%s:%d: %s: key outside any [section]", st->path, st->lineno,
                          name);
                return 0;
        }
        if (!is_known_section(section, strlen(section))) {
                load_fail(st, -1, "%s:%d: [%s]: unknown section", st->path, st->lineno, section);
                return 0;
        }
        i = find_key(section, name);
        if (i < 0) {
                load_fail(st, -1, "%s:%d: [%s] %s: unknown key", st->path, st->lineno, section,
                          name);
                return 0;
        }
        if (st->lines[i] != 0) {
                load_fail(st, -1, "%s:%d: [%s] %s: duplicate key (first set at line %d)", st->path,
                          st->lineno, section, name, st->lines[i]);
                return 0;
        }
        r = key_set(st->c, (size_t)i, value, why, sizeof(why));
        if (r == -ENOMEM) {
                load_fail(st, -ENOMEM, "out of memory");
                return 0;
        }
        if (r != 0) {
                load_fail(st, -1, "%s:%d: [%s] %s: %s", st->path, st->lineno, section, name, why);
                return 0;
        }
        st->lines[i] = st->lineno;
        st->c->sources[i] = CONFIG_SRC_FILE;
        origin_set(st->c, (size_t)i, st->lineno, NULL);
        return 1;
}

static int
load_file(struct load_state *st)
{
        int r;

        st->f = fopen(st->path, "re");
        if (st->f == NULL) {
                set_err(st->err, st->errlen, "%s: cannot open: %s", st->path, strerror(errno));
                return -1;
        }
        r = ini_parse_stream(config_reader, st, config_handler, st);
        fclose(st->f);
        st->f = NULL;
        /*
         * libinih keeps going after an error and returns the first line that
         * failed, ours (the handler returned 0) or its own syntax errors, which
         * we only learn about here. Both count lines the same way: one reader
         * call per line.
         */
        if (r > 0 && (st->err_line == 0 || r < st->err_line)) {
                set_err(st->err, st->errlen,
                        "%s:%d: syntax error: expected [section], key = value or a comment",
                        st->path, r);
                return -1;
        }
        if (st->err_line != 0)
                return st->err_ret;
        if (r == -2) {
                set_err(st->err, st->errlen, "out of memory");
                return -ENOMEM;
        }
        if (r != 0) {
                set_err(st->err, st->errlen, "%s: cannot parse (libinih returned %d)", st->path, r);
                return -1;
        }
        return 0;
}

/* ---- environment ------------------------------------------------------------------------- */

static const char *
env_get(const char *name)
{
        const char *v = getenv(name);

        return v != NULL && v[0] != '\0' ? v : NULL;
}

static void
mark_env(struct config *c, size_t i, const char *var)
{
        c->sources[i] = CONFIG_SRC_ENV;
        origin_set(c, i, 0, var);
}

/* "0.5" -> 500; decimal seconds, at most millisecond precision kept (rounded up). */
static int
parse_seconds_ms(const char *s, int64_t *ms)
{
        int64_t whole = 0, frac = 0;
        int n_frac = 0;
        bool has_rest = false;
        const char *p = s;

        if (*p < '0' || *p > '9')
                return -EINVAL;
        for (; *p >= '0' && *p <= '9'; p++) {
                whole = whole * 10 + (*p - '0');
                if (whole > 1000000)
                        return -ERANGE;
        }
        if (*p == '.') {
                p++;
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                for (; *p >= '0' && *p <= '9'; p++) {
                        if (n_frac < 3) {
                                frac = frac * 10 + (*p - '0');
                                n_frac++;
                        } else if (*p != '0') {
                                has_rest = true;
                        }
                }
        }
        if (*p != '\0')
                return -EINVAL;
        while (n_frac < 3) {
                frac *= 10;
                n_frac++;
        }
        *ms = whole * 1000 + frac + (has_rest ? 1 : 0);
        return 0;
}

static int
set_primary(struct config *c, const char *host, int port, char *err, size_t errlen, const char *var,
            const char *value)
{
        struct config_addr a;
        char buf[CONFIG_HOST_MAX + 16];
        char why[384];

        if (strchr(host, ':') != NULL)
                snprintf(buf, sizeof(buf), "[%s]:%d", host, port);
        else
                snprintf(buf, sizeof(buf), "%s:%d", host, port);
        if (config_parse_addr(buf, &a, why, sizeof(why)) != 0) {
                set_err(err, errlen, "env %s: '%s' is not a host name or IP address", var, value);
                return -1;
        }
        return replace_string(&c->primary, buf);
}

static int
apply_env(struct config *c, char *err, size_t errlen)
{
        struct config_addr cur;
        const char *host = env_get("REDIS_HOST");
        const char *port_s = env_get("REDIS_PORT");
        const char *v;
        char why[384];
        int port, r;

        if (host != NULL || port_s != NULL) {
                if (config_parse_addr(c->primary, &cur, why, sizeof(why)) != 0) {
                        set_err(err, errlen, "[redis] primary: %s", why);
                        return -1;
                }
                port = cur.is_unix ? CONFIG_DEFAULT_PORT : cur.port;
                if (port_s != NULL && parse_port(port_s, &port) != 0) {
                        set_err(err, errlen, "env REDIS_PORT: '%s' is not a port", port_s);
                        return -1;
                }
                if (host == NULL && cur.is_unix) {
                        set_err(err, errlen,
                                "env REDIS_PORT: [redis] primary is a unix socket, set REDIS_HOST "
                                "too");
                        return -1;
                }
                if (host != NULL && host[0] == '[') {
                        /* Accept "[::1]" as well as "::1". */
                        size_t len = strlen(host);
                        char bare[CONFIG_HOST_MAX];
                        if (len < 3 || host[len - 1] != ']' || len - 2 >= sizeof(bare)) {
                                set_err(err, errlen,
                                        "env REDIS_HOST: '%s' is not a host name or IP address",
                                        host);
                                return -1;
                        }
                        memcpy(bare, host + 1, len - 2);
                        bare[len - 2] = '\0';
                        r = set_primary(c, bare, port, err, errlen, "REDIS_HOST", host);
                } else {
                        r = set_primary(c, host != NULL ? host : cur.host, port, err, errlen,
                                        host != NULL ? "REDIS_HOST" : "REDIS_PORT",
                                        host != NULL ? host : port_s);
                }
                if (r != 0)
                        return r;
                mark_env(c, K_PRIMARY,
                         host != NULL && port_s != NULL ? "REDIS_HOST, REDIS_PORT"
                         : host != NULL                 ? "REDIS_HOST"
                                                        : "REDIS_PORT");
        }

        v = env_get("REDIS_REPLICAS_HOST_PORT");
        if (v != NULL) {
                r = key_set(c, K_REPLICAS, v, why, sizeof(why));
                if (r == -ENOMEM)
                        return r;
                if (r != 0) {
                        set_err(err, errlen, "env REDIS_REPLICAS_HOST_PORT: %s", why);
                        return -1;
                }
                mark_env(c, K_REPLICAS, "REDIS_REPLICAS_HOST_PORT");
        }

        v = env_get("REDIS_TIMEOUT");
        if (v != NULL) {
                int64_t ms;
                if (parse_seconds_ms(v, &ms) != 0 || ms < 1 || ms > 600000) {
                        set_err(err, errlen,
                                "env REDIS_TIMEOUT: '%s' is not a number of seconds in (0, 600]",
                                v);
                        return -1;
                }
                c->connect_timeout_ms = (int)ms;
                c->command_timeout_ms = (int)ms;
                mark_env(c, K_CONNECT_TIMEOUT_MS, "REDIS_TIMEOUT");
                mark_env(c, K_COMMAND_TIMEOUT_MS, "REDIS_TIMEOUT");
        }

        v = env_get("REDIS_PASSWORD");
        if (v != NULL) {
                if (replace_string(&c->password, v) != 0 ||
                    replace_string(&c->password_file, "") != 0)
                        return -ENOMEM;
                mark_env(c, K_PASSWORD, "REDIS_PASSWORD");
                mark_env(c, K_PASSWORD_FILE, "REDIS_PASSWORD");
        }
        return 0;
}

/* ---- cross-key checks -------------------------------------------------------------------- */

/* "FILE:LINE: " for a key set in the file, "env NAME: " for one from the environment. */
static void
where(const struct config *c, const struct load_state *st, size_t i, char *out, size_t outlen)
{
        if (c->sources[i] == CONFIG_SRC_FILE)
                snprintf(out, outlen, "%s:%d: ", st->path, st->lines[i]);
        else if (c->sources[i] == CONFIG_SRC_ENV)
                snprintf(out, outlen, "env %s: ", origin_env(c, i));
        else
                out[0] = '\0';
}

static int
read_password_file(struct config *c, const struct load_state *st, char *err, size_t errlen)
{
        char buf[CONFIG_PASSWORD_FILE_MAX + 1];
        char at[CONFIG_PATH_MAX + 4096];
        size_t len;
        FILE *f;
        int e;

        where(c, st, K_PASSWORD_FILE, at, sizeof(at));
        f = fopen(c->password_file, "re");
        if (f == NULL) {
                e = errno;
                set_err(err, errlen, "%s[redis] password_file: cannot read '%s': %s", at,
                        c->password_file, strerror(e));
                return -1;
        }
        len = fread(buf, 1, sizeof(buf), f);
        e = ferror(f) ? errno : 0;
        fclose(f);
        if (e != 0) {
                set_err(err, errlen, "%s[redis] password_file: cannot read '%s': %s", at,
                        c->password_file, strerror(e));
                return -1;
        }
        if (len > CONFIG_PASSWORD_FILE_MAX) {
                set_err(err, errlen, "%s[redis] password_file: '%s' is longer than %d bytes", at,
                        c->password_file, CONFIG_PASSWORD_FILE_MAX);
                return -1;
        }
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
                len--;
        buf[len] = '\0';
        if (len == 0 || memchr(buf, '\0', len) != NULL || memchr(buf, '\n', len) != NULL) {
                set_err(err, errlen,
                        "%s[redis] password_file: '%s' must hold one non-empty line of text", at,
                        c->password_file);
                return -1;
        }
        e = replace_string(&c->password, buf);
        memset(buf, 0, sizeof(buf));
        return e;
}

static int
check_sentinel(const struct config *c, const struct load_state *st, char *err, size_t errlen)
{
        char at[CONFIG_PATH_MAX + 4096];
        int n;

        /* Validated when set, so this only counts; a blank list is no Sentinel. */
        if (parse_addr_list(c->sentinel_addresses, false, NULL, &n, NULL, 0) != 0 || n == 0)
                return 0;
        /*
         * A primary or replicas written down would be ignored in favour of
         * what Sentinel says; refuse rather than guess which the operator
         * meant. Defaults do not count: nobody asked for them.
         */
        if (c->sources[K_PRIMARY] != CONFIG_SRC_DEFAULT ||
            c->sources[K_REPLICAS] != CONFIG_SRC_DEFAULT) {
                where(c, st, K_SENTINEL_ADDRESSES, at, sizeof(at));
                set_err(err, errlen,
                        "%s[sentinel] addresses: Sentinel and static primary/replicas are mutually "
                        "exclusive",
                        at);
                return -1;
        }
        if (c->sentinel_master_name[0] == '\0') {
                /* At "master_name =" if the file has one, else at addresses. */
                size_t i = c->sources[K_SENTINEL_MASTER_NAME] != CONFIG_SRC_DEFAULT
                                   ? K_SENTINEL_MASTER_NAME
                                   : K_SENTINEL_ADDRESSES;
                where(c, st, i, at, sizeof(at));
                set_err(err, errlen, "%s[sentinel] master_name: required when addresses is set",
                        at);
                return -1;
        }
        return 0;
}

static int
check_admin(const struct config *c, const struct load_state *st, char *err, size_t errlen)
{
        char at[CONFIG_PATH_MAX + 4096];

        /* Binding the second would unlink the first one's socket file. */
        if (c->admin_socket[0] != '\0' && strcmp(c->admin_socket, c->socket) == 0) {
                bool blame_admin = st->lines[K_ADMIN_SOCKET] > st->lines[K_SOCKET];
                where(c, st, blame_admin ? K_ADMIN_SOCKET : K_SOCKET, at, sizeof(at));
                set_err(err, errlen, "%s[%s] socket: '%s' is also the %s socket", at,
                        blame_admin ? "admin" : "server", c->admin_socket,
                        blame_admin ? "client" : "admin");
                return -1;
        }
        return 0;
}

static int
check_config(struct config *c, const struct load_state *st, char *err, size_t errlen)
{
        char at[CONFIG_PATH_MAX + 4096];

        if (c->default_ttl > c->max_ttl) {
                /* Blame the key written last: that is where the reader sees the clash. */
                bool blame_default = st->lines[K_DEFAULT_TTL] > st->lines[K_MAX_TTL];
                if (blame_default) {
                        where(c, st, K_DEFAULT_TTL, at, sizeof(at));
                        set_err(err, errlen,
                                "%s[cache] default_ttl: %lld is greater than max_ttl %lld", at,
                                (long long)c->default_ttl, (long long)c->max_ttl);
                } else {
                        where(c, st, K_MAX_TTL, at, sizeof(at));
                        set_err(err, errlen,
                                "%s[cache] max_ttl: %lld is less than default_ttl %lld", at,
                                (long long)c->max_ttl, (long long)c->default_ttl);
                }
                return -1;
        }
        if (c->password[0] != '\0' && c->password_file[0] != '\0') {
                /* Only the file can set both: REDIS_PASSWORD clears password_file. */
                if (st->lines[K_PASSWORD_FILE] > st->lines[K_PASSWORD]) {
                        where(c, st, K_PASSWORD_FILE, at, sizeof(at));
                        set_err(err, errlen,
                                "%s[redis] password_file: cannot be used with password (line %d)",
                                at, st->lines[K_PASSWORD]);
                } else {
                        where(c, st, K_PASSWORD, at, sizeof(at));
                        set_err(err, errlen,
                                "%s[redis] password: cannot be used with password_file (line %d)",
                                at, st->lines[K_PASSWORD_FILE]);
                }
                return -1;
        }
        if (c->replica_attempt_timeout_ms > c->command_timeout_ms) {
                /* The retry must fit in the request's deadline. */
                if (st->lines[K_COMMAND_TIMEOUT_MS] > st->lines[K_REPLICA_ATTEMPT_TIMEOUT_MS]) {
                        where(c, st, K_COMMAND_TIMEOUT_MS, at, sizeof(at));
                        set_err(err, errlen,
                                "%s[redis] command_timeout_ms: %d is less than "
                                "replica_attempt_timeout_ms %d",
                                at, c->command_timeout_ms, c->replica_attempt_timeout_ms);
                } else {
                        where(c, st, K_REPLICA_ATTEMPT_TIMEOUT_MS, at, sizeof(at));
                        set_err(err, errlen,
                                "%s[redis] replica_attempt_timeout_ms: %d is greater than "
                                "command_timeout_ms %d",
                                at, c->replica_attempt_timeout_ms, c->command_timeout_ms);
                }
                return -1;
        }
        if (check_sentinel(c, st, err, errlen) != 0)
                return -1;
        if (check_admin(c, st, err, errlen) != 0)
                return -1;
        if (c->password_file[0] != '\0')
                return read_password_file(c, st, err, errlen);
        return 0;
}

int
config_load(struct config *c, const char *path, char *err, size_t errlen)
{
        struct config tmp;
        struct load_state st = {.c = &tmp, .path = path, .err = err, .errlen = errlen};
        char why[512];
        int r;

        set_err(err, errlen, "no error");
        r = config_init(&tmp);
        if (r != 0) {
                set_err(err, errlen, "cannot set the defaults: %s", strerror(-r));
                goto fail_init;
        }
        if (path != NULL) {
                tmp.path = strdup(path);
                if (tmp.path == NULL) {
                        r = -ENOMEM;
                        set_err(err, errlen, "out of memory");
                        goto fail;
                }
                r = load_file(&st);
                if (r != 0)
                        goto fail;
        }
        r = apply_env(&tmp, err, errlen);
        if (r == -ENOMEM)
                set_err(err, errlen, "out of memory");
        if (r != 0)
                goto fail;
        r = check_config(&tmp, &st, err, errlen);
        if (r == -ENOMEM)
                set_err(err, errlen, "out of memory");
        if (r != 0)
                goto fail;
        r = derive_addrs(&tmp, why, sizeof(why));
        if (r != 0) {
                /* Cannot happen: every address string was validated when it was set. */
                set_err(err, errlen, "[redis]: %s", why);
                goto fail;
        }
        *c = tmp;
        return 0;
fail:
        config_deinit(&tmp);
fail_init:
        if (config_init(c) != 0)
                memset(c, 0, sizeof(*c));
        return -1;
}

/* ---- output ------------------------------------------------------------------------------ */

static void
format_origin(const struct config *c, size_t i, char *out, size_t outlen)
{
        int line = origin_line(c, i);

        switch (c->sources[i]) {
        case CONFIG_SRC_DEFAULT:
                snprintf(out, outlen, "default");
                break;
        case CONFIG_SRC_FILE:
                if (line > 0)
                        snprintf(out, outlen, "%s:%d", c->path != NULL ? c->path : "file", line);
                else
                        snprintf(out, outlen, "%s", c->path != NULL ? c->path : "file");
                break;
        case CONFIG_SRC_ENV:
                snprintf(out, outlen, "env %s", origin_env(c, i));
                break;
        }
}

/*
 * The dump is meant to load back with config_load(), with known limits:
 * - a value holding " ;" (whitespace then ';') cannot be written, because
 *   libinih takes it as the start of an inline comment and there is no
 *   quoting; only an environment value could hold one, and the one that may
 *   (REDIS_PASSWORD) is shown as ***;
 * - the password is written as *** (never the secret), so it loads back as
 *   the literal "***"; a password read from password_file is shown in a
 *   comment, since password and password_file may not both be set;
 * - [sentinel] password is written as *** in the same way;
 * - with Sentinel, primary and replicas hold their unused defaults (any
 *   other source is refused) and are written commented out, since setting
 *   them in a file next to [sentinel] addresses is an error;
 * - a line of 199 bytes or more is refused when read back; it can only come
 *   from a long REDIS_REPLICAS_HOST_PORT. When the source comment would make
 *   a line too long, it goes on its own line above the key.
 */
void
config_dump(const struct config *c, FILE *out)
{
        const char *section = NULL;
        char value[4096], origin[4096 + 64];

        fprintf(out, "; kcached configuration: every key, and where its value came from\n");
        for (size_t i = 0; i < K_COUNT; i++) {
                const struct config_key *k = &config_keys[i];
                if (section == NULL || strcmp(section, k->section) != 0) {
                        section = k->section;
                        fprintf(out, "%s[%s]\n", i > 0 ? "\n" : "", section);
                }
                format_value(c, i, value, sizeof(value));
                format_origin(c, i, origin, sizeof(origin));
                if (i == K_PASSWORD && c->password[0] != '\0' && c->password_file[0] != '\0') {
                        fprintf(out, "; password = *** (read from password_file)\n");
                        continue;
                }
                if ((i == K_PASSWORD || i == K_SENTINEL_PASSWORD) && value[0] != '\0')
                        snprintf(value, sizeof(value), "***");
                if ((i == K_PRIMARY || i == K_REPLICAS) && c->n_sentinels > 0) {
                        fprintf(out, "; %s =%s%s ; %s, unused with [sentinel] addresses\n", k->key,
                                value[0] != '\0' ? " " : "", value, origin);
                        continue;
                }
                /* "key =;x": a ';' right after '=' is not a comment, after a blank it is. */
                const char *eq = value[0] == ';' ? " =" : " = ";
                size_t len = strlen(k->key) + strlen(eq) + strlen(value) + 3 + strlen(origin) + 1;
                if (len >= CONFIG_LINE_MAX) {
                        fprintf(out, "; %s\n", origin);
                        fprintf(out, "%s%s%s\n", k->key, value[0] == '\0' ? " =" : eq, value);
                } else if (value[0] == '\0') {
                        fprintf(out, "%s = ; %s\n", k->key, origin);
                } else {
                        fprintf(out, "%s%s%s ; %s\n", k->key, eq, value, origin);
                }
        }
}

/* Writes text as "; " comment lines of at most width columns, breaking at spaces. */
static void
write_wrapped(FILE *out, const char *text, size_t width)
{
        const char *p = text;

        while (*p != '\0') {
                size_t room = width - 2, len = strlen(p), cut = len;
                if (len > room) {
                        cut = room;
                        while (cut > 0 && p[cut] != ' ')
                                cut--;
                        if (cut == 0) {
                                cut = strcspn(p, " ");
                        }
                }
                fprintf(out, "; %.*s\n", (int)cut, p);
                p += cut;
                while (*p == ' ')
                        p++;
        }
}

static const char config_example_header[] =
        "; kcached.ini: configuration of kcached, the kcache sidecar for Redis.\n"
        ";\n"
        "; Every key is listed below, commented out, with its default value. To change\n"
        "; one, remove the leading \"; \" and edit the value. Keys are case-sensitive.\n"
        ";\n"
        "; Comments: a line starting with ';' or '#', or the rest of a line after a ';'\n"
        "; that follows whitespace (\"key = value ; comment\"). So a value cannot hold\n"
        "; \" ;\", and there is no quoting: a value runs from after '=' to the end of\n"
        "; the line or the comment, with blanks around it removed.\n"
        "; A line must be shorter than 199 bytes; do not indent a line after a key, it\n"
        "; would continue that key's value. Unknown sections, unknown keys, duplicate\n"
        "; keys and bad values are errors, reported as FILE:LINE.\n"
        ";\n"
        "; Units: TTLs are in seconds; every other duration is in milliseconds and its\n"
        "; name ends in _ms; sizes are in bytes.\n"
        ";\n"
        "; Environment variables override this file (empty ones are ignored):\n"
        ";   REDIS_HOST                host of [redis] primary, keeping its port\n"
        ";   REDIS_PORT                port of [redis] primary\n"
        ";   REDIS_REPLICAS_HOST_PORT  [redis] replicas, a comma list of host:port\n"
        ";   REDIS_TIMEOUT             seconds (0.5 allowed), sets connect_timeout_ms\n"
        ";                             and command_timeout_ms\n"
        ";   REDIS_PASSWORD            [redis] password; clears password_file\n"
        ";\n"
        "; \"Reloadable: yes\" marks keys a reload applies; the others need a restart.\n";

void
config_write_example(FILE *out)
{
        const char *section = NULL;
        char value[256], help[1024], range[128];
        struct config defaults = {0};

        fputs(config_example_header, out);
        for (size_t i = 0; i < K_COUNT; i++) {
                const struct config_key *k = &config_keys[i];
                if (section == NULL || strcmp(section, k->section) != 0) {
                        section = k->section;
                        fprintf(out, "\n[%s]\n", section);
                } else {
                        fputc('\n', out);
                }
                switch (k->type) {
                case CONFIG_T_INT:
                case CONFIG_T_INT64:
                        snprintf(range, sizeof(range), "%lld..%lld, ", (long long)k->min,
                                 (long long)k->max);
                        break;
                case CONFIG_T_MODE:
                        snprintf(range, sizeof(range), "octal, %#llo..%#llo, ",
                                 (unsigned long long)k->min, (unsigned long long)k->max);
                        break;
                default:
                        range[0] = '\0';
                        break;
                }
                snprintf(help, sizeof(help), "%s (%sreloadable: %s)", k->help, range,
                         k->reloadable ? "yes" : "no");
                write_wrapped(out, help, 78);
                if (k->env != NULL)
                        fprintf(out, "; Environment: %s.\n", k->env);
                /* The default as config_dump() would print it, from the table alone. */
                if (key_set(&defaults, i, k->def, value, sizeof(value)) == 0)
                        format_value(&defaults, i, value, sizeof(value));
                else
                        snprintf(value, sizeof(value), "%s", k->def);
                if (value[0] == '\0')
                        fprintf(out, "; %s =\n", k->key);
                else
                        fprintf(out, "; %s = %s\n", k->key, value);
        }
        config_deinit(&defaults);
}

/*
 * Reload: load the file again into a scratch config, then copy into the
 * running one every reloadable key whose value changed. Modules hold pointers
 * into *c, so values change in place; strings are swapped, so the scratch
 * config frees the old ones. Keys that changed but cannot change live keep
 * their running value and are named, so the operator knows a restart is due.
 */
static bool
key_equal(const struct config *a, const struct config *b, size_t i)
{
        const struct config_key *k = &config_keys[i];
        const char *pa = (const char *)a + k->offset, *pb = (const char *)b + k->offset;

        if (is_string_type(k->type)) {
                const char *sa = *(char *const *)pa, *sb = *(char *const *)pb;
                return strcmp(sa != NULL ? sa : "", sb != NULL ? sb : "") == 0;
        }
        switch (k->type) {
        case CONFIG_T_INT64:
                return *(const int64_t *)pa == *(const int64_t *)pb;
        case CONFIG_T_MODE:
                return *(const unsigned *)pa == *(const unsigned *)pb;
        case CONFIG_T_BOOL:
                return *(const bool *)pa == *(const bool *)pb;
        default:
                return *(const int *)pa == *(const int *)pb;
        }
}

static void
key_take(struct config *dst, struct config *src, size_t i)
{
        const struct config_key *k = &config_keys[i];
        char *pd = (char *)dst + k->offset, *ps = (char *)src + k->offset;
        size_t n;

        if (is_string_type(k->type)) {
                char *t = *(char **)pd;
                *(char **)pd = *(char **)ps;
                *(char **)ps = t;
        } else {
                switch (k->type) {
                case CONFIG_T_INT64:
                        n = sizeof(int64_t);
                        break;
                case CONFIG_T_MODE:
                        n = sizeof(unsigned);
                        break;
                case CONFIG_T_BOOL:
                        n = sizeof(bool);
                        break;
                default:
                        n = sizeof(int);
                        break;
                }
                memcpy(pd, ps, n);
        }
        dst->sources[i] = src->sources[i];
        dst->lines[i] = src->lines[i];
        dst->env_names[i] = src->env_names[i];
}

static void
list_add(char *out, size_t len, const char *name)
{
        size_t used = strlen(out);

        snprintf(out + used, len - used, "%s%s", used > 0 ? ", " : "", name);
}

int
config_reload(struct config *c, char *msg, size_t len)
{
        struct config n;
        char err[512], changed[512] = "", restart[512] = "";

        if (config_load(&n, c->path, err, sizeof(err)) < 0) {
                config_deinit(&n);
                snprintf(msg, len, "%s", err);
                return -1;
        }
        for (size_t i = 0; i < K_COUNT; i++) {
                if (key_equal(c, &n, i))
                        continue;
                if (!config_keys[i].reloadable) {
                        list_add(restart, sizeof(restart), config_keys[i].key);
                        continue;
                }
                key_take(c, &n, i);
                list_add(changed, sizeof(changed), config_keys[i].key);
        }
        /* Values derived at load follow their keys. */
        c->primary_addr = n.primary_addr;
        memcpy(c->replica_addrs, n.replica_addrs, sizeof(c->replica_addrs));
        c->n_replicas = n.n_replicas;
        memcpy(c->client_uids, n.client_uids, sizeof(c->client_uids));
        c->n_client_uids = n.n_client_uids;
        memcpy(c->client_gids, n.client_gids, sizeof(c->client_gids));
        c->n_client_gids = n.n_client_gids;
        memcpy(c->admin_uids, n.admin_uids, sizeof(c->admin_uids));
        c->n_admin_uids = n.n_admin_uids;
        memcpy(c->admin_gids, n.admin_gids, sizeof(c->admin_gids));
        c->n_admin_gids = n.n_admin_gids;
        config_deinit(&n);
        snprintf(msg, len, "changed: %s; needs a restart: %s", changed[0] ? changed : "none",
                 restart[0] ? restart : "none");
        return 0;
}

int
config_source_of(const struct config *c, const char *section, const char *key)
{
        for (size_t i = 0; i < K_COUNT; i++)
                if (strcmp(config_keys[i].section, section) == 0 &&
                    strcmp(config_keys[i].key, key) == 0)
                        return (int)c->sources[i];
        return -1;
}
