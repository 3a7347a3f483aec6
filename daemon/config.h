/* SPDX-License-Identifier: MIT */
/*
 * config: kcached's settings. One key table (config_keys[] in config.c,
 * {section, key, type, field offset, default, min, max, reloadable, help})
 * drives parsing, defaults, environment overrides, `kcached -t` and the docs.
 *
 * Sources, lowest to highest precedence: built-in default < INI file <
 * environment (REDIS_HOST, REDIS_PORT, REDIS_REPLICAS_HOST_PORT,
 * REDIS_TIMEOUT, REDIS_PASSWORD). Every value remembers where it came from.
 *
 * The INI file is read through ini_parse_stream() with a reader of our own:
 * Debian's libinih 55 cuts lines at 200 bytes silently and gives the handler
 * no line numbers, so our reader counts lines and refuses lines of 199 bytes
 * or more. Unknown sections or keys, duplicate keys and bad values are errors
 * reported as "FILE:LINE: [section] key: why". Comments: whole-line `;` or `#`,
 * and inline ` ;` (libinih's rule: a `;` preceded by whitespace).
 */
#ifndef KCACHE_CONFIG_H
#define KCACHE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define CONFIG_MAX_REPLICAS 16
#define CONFIG_HOST_MAX 256
#define CONFIG_PATH_MAX 108 /* sun_path */
#define CONFIG_MAX_IDS  32  /* [admin] allowed_uids, allowed_gids */

/* A Redis node: host:port, [v6]:port, or unix:/path. */
struct config_addr {
        bool is_unix;
        char host[CONFIG_HOST_MAX]; /* name or IP literal, without brackets */
        int port;
        char path[CONFIG_PATH_MAX];
};

enum config_source { CONFIG_SRC_DEFAULT = 0, CONFIG_SRC_FILE, CONFIG_SRC_ENV };

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

/* [redis] read_from: where reads go. */
enum config_read_from { READ_FROM_REPLICA = 0, READ_FROM_PRIMARY, READ_FROM_ANY };

/* [cache] compression: how values are stored. */
enum config_compression { COMPRESSION_ZLIB = 0, COMPRESSION_OFF };

/* [log] target: where log lines go. */
enum config_log_target { LOG_TARGET_STDERR = 0, LOG_TARGET_SYSLOG };

struct config {
        /* [server] */
        char *socket;              /* owned */
        unsigned socket_mode;      /* octal in the file */
        int max_clients;
        int64_t max_request_bytes;
        int max_nesting;
        int max_batch_keys;
        int drain_timeout_ms;
        int max_inflight_per_client;
        int64_t max_output_bytes_per_client;
        int idle_timeout_s;               /* 0: off */
        int request_read_timeout_ms;      /* 0: off */
        char *socket_group;               /* owned; "" leaves the group alone */
        char *allowed_uids;               /* owned; "" = whoever can open the socket */
        char *allowed_gids;               /* owned */
        /* [redis] */
        char *primary;             /* owned; as written */
        char *replicas;            /* owned; comma list as written, "" for none */
        char *username;            /* owned; ACL user, "" for none */
        char *password;            /* owned; "" for none; never logged */
        char *password_file;       /* owned; "" for none; read at load into password */
        int db;
        int connect_timeout_ms;
        int command_timeout_ms;
        int max_reply_elements;
        int64_t max_reply_bytes;
        int pool_size;                  /* connections to the primary */
        int replica_pool_size;          /* connections to each replica */
        int read_from;                  /* enum config_read_from */
        int replica_attempt_timeout_ms; /* 0: command_timeout_ms / 3 */
        int max_inflight_per_node;
        int reconnect_max_ms;
        int max_replica_lag_ms;
        /* [health] */
        int health_interval_ms;
        int health_timeout_ms;
        int failure_threshold;
        int recovery_threshold;
        bool fail_open;            /* no Redis reachable: `health ready` says degraded, not down */
        /* [sentinel] */
        char *sentinel_addresses;  /* owned; comma list, "" for none */
        char *sentinel_master_name; /* owned */
        char *sentinel_password;   /* owned; never logged */
        /* [admin] */
        char *admin_socket;        /* owned; "" disables the admin socket */
        unsigned admin_socket_mode;
        char *admin_socket_group;  /* owned; "" leaves the group alone; name or number */
        char *admin_allowed_uids;  /* owned; comma list of user names or numbers, may be "" */
        char *admin_allowed_gids;  /* owned; comma list of group names or numbers, may be "" */
        char *admin_listen;        /* owned; "" for none, else IP-literal host:port */
        /* [cache] */
        char *key_prefix;          /* owned; may be "" */
        int64_t default_ttl;
        int64_t max_ttl;
        int64_t max_key_bytes;         /* app key length limit */
        int64_t max_value_bytes;       /* largest value stored or inflated */
        int compression;               /* enum config_compression */
        int compression_level;         /* zlib level, 1..9 */
        int64_t compression_threshold; /* compress values of at least this many bytes */
        int64_t compress_inline_max;   /* store larger values uncompressed */
        int lease_ttl_ms;              /* default get_or_set lease */
        int max_wait_ms;               /* cap of get_or_set wait_ms */
        int max_tracked_namespaces;
        int ns_check_ms;
        int64_t near_cache_bytes;      /* 0: no near cache */
        int near_cache_ttl_ms;         /* longest an entry is trusted without an invalidation */
        int near_heartbeat_ms;         /* proof that invalidations still arrive */               /* re-read period of a cached namespace generation */
        /* [log] */
        int log_level;             /* enum log_level */
        int log_target;            /* enum config_log_target */

        /* derived at load time */
        struct config_addr primary_addr;
        struct config_addr replica_addrs[CONFIG_MAX_REPLICAS];
        int n_replicas;
        struct config_addr sentinel_addrs[CONFIG_MAX_REPLICAS];
        int n_sentinels; /* > 0: the primary and replicas come from Sentinel */
        bool has_admin_gid;           /* socket_group is set: chown the admin socket to it */
        uint32_t admin_gid;           /* socket_group, resolved at load */
        bool has_client_gid;
        uint32_t client_gid;                  /* [server] socket_group, resolved */
        uint32_t client_uids[CONFIG_MAX_IDS]; /* [server] allowed_uids, resolved */
        int n_client_uids;
        uint32_t client_gids[CONFIG_MAX_IDS];
        int n_client_gids;
        uint32_t admin_uids[CONFIG_MAX_IDS]; /* allowed_uids, resolved at load */
        int n_admin_uids;
        uint32_t admin_gids[CONFIG_MAX_IDS]; /* allowed_gids, resolved at load */
        int n_admin_gids;
        bool has_admin_listen;        /* listen is set */
        struct config_addr admin_listen_addr; /* listen, an IP literal and a port */
        char *path; /* owned; the file loaded, NULL for none */
        enum config_source sources[64]; /* per key, indexed like config_keys[] */
        int lines[64];                  /* per key: line in path when sources[] is FILE */
        const char *env_names[64];      /* per key: the variable, static, when sources[] is ENV */
};
#define CONFIG_HAVE_ORIGINS 1

/* Sets every key to its default (and sources to DEFAULT). */
int config_init(struct config *c);
void config_deinit(struct config *c);

/*
 * Loads defaults, then path (may be NULL: defaults only), then the
 * environment, then derives addresses and reads password_file.
 * 0 on success; -1 with a one-line reason in err ("FILE:LINE: [section] key:
 * why", or "env REDIS_PORT: why"). On failure *c holds defaults.
 */
int config_load(struct config *c, const char *path, char *err, size_t errlen);

/*
 * Reads c->path again and applies, in place, every reloadable key that
 * changed. 0 with a summary in msg ("changed: a, b; needs a restart: c"), or
 * -1 with the reason, the running configuration untouched.
 */
int config_reload(struct config *c, char *msg, size_t len);

/* Where a key's running value came from; -1 for an unknown key. */
int config_source_of(const struct config *c, const char *section, const char *key);

/* Parses "host:port", "[v6]:port" or "unix:/path". 0 or -1 with err. */
int config_parse_addr(const char *s, struct config_addr *a, char *err, size_t errlen);

/* Formats an address for logs: "127.0.0.1:6379", "[::1]:6379", "unix:/p". */
const char *config_addr_str(const struct config_addr *a, char *out, size_t outlen);

/*
 * Writes the running configuration as INI, one `key = value` a line followed
 * by `; default`, `; FILE:LINE` or `; env NAME`; secrets as ***.
 */
void config_dump(const struct config *c, FILE *out);

/* Writes conf/kcached.ini's body: every key commented with default and help. */
void config_write_example(FILE *out);

const char *log_level_name(int level);
const char *config_read_from_name(int v);
const char *config_compression_name(int v);
const char *config_log_target_name(int v);

#endif
