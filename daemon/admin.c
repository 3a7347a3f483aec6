/* SPDX-License-Identifier: MIT */
/*
 * admin: the operators' line-protocol sockets (see admin.h).
 *
 *   accept -> [Unix: peer credentials or close] -> admin_conn: recv into in[]
 *          -> split lines -> admin_cmds[] (TCP: only the tcp_ok ones)
 *          -> answer appended to out -> prepare hook: one send per conn
 *
 * Input: in[] holds at most one line being assembled (ADMIN_LINE_MAX bytes
 * plus "\r\n"). A line that cannot fit is answered `error: line too long` as
 * soon as that is known, and the bytes up to the next newline are discarded,
 * so the answers stay one per line and the connection stays usable.
 *
 * Output: answers are appended to out and written once per loop iteration
 * from our own ev_prepare hook; EV_WRITE only after a short write. While more
 * than ADMIN_OUT_PAUSE bytes wait, reading and command execution pause (a
 * pipelining peer is slowed, not dropped); a peer whose unread answers still
 * pass ADMIN_OUT_MAX is closed.
 *
 * `flush NS` is the one command that waits for Redis: the connection is
 * busy (no reading, no further commands, so answers stay in order) until the
 * bcall embedded in it completes or its own timer (command_timeout_ms) fires.
 * Closing the connection cancels the bcall, so no completion ever names a
 * freed connection.
 *
 * A connection is never freed inside its own callback: admin_conn_close()
 * parks it on the dead list, freed from the prepare hook.
 */
#include "daemon/admin.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "buf.h"
#include "daemon/backend.h"
#include "daemon/cache.h"
#include "daemon/conn.h"
#include "daemon/json.h"
#include "daemon/log.h"
#include "daemon/server.h"
#include "daemon/stats.h"
#include "kcache-version.h"

#define ADMIN_IN_SIZE      (ADMIN_LINE_MAX + 2) /* a full line and its "\r\n" */
#define ADMIN_MAX_ARGS     4
#define ADMIN_ECHO_MAX     64   /* bytes of an unknown command echoed back */
#define ADMIN_CLOSE_WAIT   1.0  /* seconds to flush the last answers after quit or EOF */
#define ADMIN_TCP_IDLE     30.0 /* seconds a TCP peer may stay silent before it is closed */
#define ADMIN_IDLE_KEEP    (16 * 1024)
#define ADMIN_ACCEPT_BATCH 16
#define ADMIN_CLIENTS_MAX  10000 /* client connections listed by `clients` */
#define ADMIN_METRICS_NS   256   /* namespaces with their own metrics series */

/* clang-format 14 reads `(ptr) - x` as a cast of `-x`: keep it away from these. */
/* clang-format off */
#define admin_of(ptr, member) ((struct admin *)((char *)(ptr) - offsetof(struct admin, member)))
#define admin_conn_of(ptr, member) \
        ((struct admin_conn *)((char *)(ptr) - offsetof(struct admin_conn, member)))
/* clang-format on */
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* What an HTTP request on the TCP listener asked for, once its headers have been read. */
enum admin_http { ADMIN_HTTP_NONE = 0, ADMIN_HTTP_HEADERS };

struct admin_conn {
        struct admin *adm; /* ref, owner */
        int fd;
        uint64_t id;
        ev_io rio;
        ev_io wio;
        ev_timer close_timer; /* bounds the final flush after quit or EOF */
        ev_timer idle_timer;  /* TCP: a silent peer does not keep its slot */
        ev_timer flush_timer; /* bounds a `flush` waiting for Redis */
        struct bcall flush_call;
        char in[ADMIN_IN_SIZE];
        size_t in_len;
        struct buf out;
        struct admin_conn *next, *prev; /* live list, or next on the dead list */
        /* Unix peers: who (SO_PEERCRED); logged with what they change. */
        int32_t pid;
        uint32_t uid;
        enum admin_http http;
        char http_target[64]; /* the request target, truncated */
        bool http_is_head;    /* the answer has no body */
        bool is_tcp;          /* from the TCP listener: read-only commands */
        bool has_lines;       /* a line was handled: HTTP only as the first one */
        bool is_discarding;   /* inside an over-long line: drop through its newline */
        bool is_paused;       /* too many answers unread: not reading, not executing */
        bool is_busy;         /* a `flush` waits for Redis: not reading, not executing */
        bool is_sending;      /* inside cache_flush_ns(): a completion must not resume */
        bool is_closing;      /* no more commands; close once out is written */
        bool is_dead;         /* torn down, waiting to be freed */
};

struct admin {
        struct server *srv;   /* ref, owner */
        struct ev_loop *loop; /* ref */
        int lfd;              /* Unix listener, -1 for none */
        int tfd;              /* TCP listener, -1 for none */
        char *path;           /* owned; unlinked on free; NULL without a Unix socket */
        ev_io lio;
        ev_io tio;
        ev_prepare flush;
        struct admin_conn *conns; /* owned, doubly linked */
        struct admin_conn *dead;  /* owned: closed conns freed in the prepare hook */
        unsigned n_conns;         /* from the Unix socket */
        unsigned n_tcp;           /* from the TCP listener */
        uint64_t next_id;
        bool has_dirty; /* some conn has answers to write this iteration */
};

/* A word of the command line: not NUL-terminated, may hold any byte. */
struct admin_tok {
        const char *p;
        size_t n;
};

struct admin_cmd {
        const char *name;
        const char *usage; /* for help and `error: usage:` */
        int min_args, max_args;
        bool tcp_ok; /* reads state only: served on the TCP listener too */
        void (*fn)(struct admin_conn *c, const struct admin_tok *args, int n_args);
};

static void admin_conn_on_read(struct ev_loop *loop, ev_io *w, int revents);
static void admin_conn_on_write(struct ev_loop *loop, ev_io *w, int revents);
static void admin_conn_on_close_timer(struct ev_loop *loop, ev_timer *w, int revents);
static void admin_conn_on_idle_timer(struct ev_loop *loop, ev_timer *w, int revents);
static void admin_conn_on_flush_timer(struct ev_loop *loop, ev_timer *w, int revents);
static void admin_conn_process(struct admin_conn *c);
static void admin_conn_resume(struct admin_conn *c);

static struct log_limit admin_log_limit;
static struct log_limit admin_refuse_limit;

/* --- output ------------------------------------------------------------- */

static void
admin_conn_mark_dirty(struct admin_conn *c)
{
        c->adm->has_dirty = true;
}

/* Appends one answer line; the text must not contain a newline. */
static void __attribute__((format(printf, 2, 3)))
admin_reply(struct admin_conn *c, const char *fmt, ...)
{
        char line[1024];
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
        va_end(ap);
        if (n < 0)
                n = 0;
        if ((size_t)n > sizeof(line) - 2)
                n = (int)sizeof(line) - 2; /* truncated: still one line */
        line[n++] = '\n';
        /* Out of memory: this answer is lost; the peer sees fewer lines. */
        (void)buf_append(&c->out, line, (size_t)n);
        admin_conn_mark_dirty(c);
}

/* A JSON answer: fn writes one value into out, then the newline. */
static void
admin_reply_json(struct admin_conn *c, void (*fn)(struct admin_conn *c, struct json *j))
{
        size_t start = c->out.len;
        struct json j;

        json_init(&j, &c->out);
        fn(c, &j);
        if (!j.failed && buf_append(&c->out, "\n", 1) == 0) {
                admin_conn_mark_dirty(c);
                return;
        }
        /* Drop the partial answer (bytes before start are untouched). */
        c->out.len = start;
        admin_reply(c, "error: out of memory");
}

/*
 * A multi-line answer: fn appends whole lines to body (0, or -1 out of
 * memory); then the terminating "." line.
 */
static void
admin_reply_block(struct admin_conn *c, int (*fn)(struct admin_conn *c, struct buf *body))
{
        size_t start = c->out.len;

        if (fn(c, &c->out) == 0) {
                bool needs_nl = c->out.len > start && c->out.data[c->out.len - 1] != '\n';
                if ((!needs_nl || buf_append(&c->out, "\n", 1) == 0) &&
                    buf_append(&c->out, ".\n", 2) == 0) {
                        admin_conn_mark_dirty(c);
                        return;
                }
        }
        c->out.len = start;
        admin_reply(c, "error: out of memory");
}

/*
 * Copies peer bytes into out as printable ASCII: quote, backslash and bytes
 * outside 0x20..0x7e become \xNN; at most ADMIN_ECHO_MAX input bytes, then
 * "...". out must hold 4 * ADMIN_ECHO_MAX + 4 bytes.
 */
static void
admin_escape(const struct admin_tok *t, char *out, size_t outlen)
{
        size_t n = t->n < ADMIN_ECHO_MAX ? t->n : ADMIN_ECHO_MAX;
        size_t j = 0;

        for (size_t i = 0; i < n && j + 5 < outlen; i++) {
                unsigned char ch = (unsigned char)t->p[i];
                if (ch < 0x20 || ch > 0x7e || ch == '\'' || ch == '\\')
                        j += (size_t)snprintf(out + j, outlen - j, "\\x%02x", ch);
                else
                        out[j++] = (char)ch;
        }
        if (t->n > n && j + 4 <= outlen) {
                memcpy(out + j, "...", 3);
                j += 3;
        }
        out[j] = '\0';
}

/* Makes text from elsewhere (a backend's reason) safe inside one line. */
static void
admin_one_line(char *s)
{
        for (; *s != '\0'; s++)
                if ((unsigned char)*s < 0x20 || *s == 0x7f)
                        *s = ' ';
}

/* "pid 12 uid 0" for Unix peers, "tcp" for the TCP listener: who asked, for the logs. */
static const char *
admin_peer(const struct admin_conn *c, char *out, size_t outlen)
{
        if (c->is_tcp)
                snprintf(out, outlen, "tcp client %llu", (unsigned long long)c->id);
        else
                snprintf(out, outlen, "client %llu (pid %ld, uid %lu)", (unsigned long long)c->id,
                         (long)c->pid, (unsigned long)c->uid);
        return out;
}

/* --- commands ----------------------------------------------------------- */

static bool
admin_tok_is(const struct admin_tok *t, const char *word)
{
        return t->n == strlen(word) && memcmp(t->p, word, t->n) == 0;
}

static void admin_cmd_help(struct admin_conn *c, const struct admin_tok *args, int n_args);
static void admin_cmd_health(struct admin_conn *c, const struct admin_tok *args, int n_args);
static void admin_cmd_stats(struct admin_conn *c, const struct admin_tok *args, int n_args);
static void admin_cmd_clients(struct admin_conn *c, const struct admin_tok *args, int n_args);
static void admin_cmd_backends(struct admin_conn *c, const struct admin_tok *args, int n_args);
static void admin_cmd_config(struct admin_conn *c, const struct admin_tok *args, int n_args);
static void admin_cmd_metrics(struct admin_conn *c, const struct admin_tok *args, int n_args);
static void admin_cmd_flush(struct admin_conn *c, const struct admin_tok *args, int n_args);
static void admin_cmd_reset_stats(struct admin_conn *c, const struct admin_tok *args, int n_args);
static void admin_cmd_loglevel(struct admin_conn *c, const struct admin_tok *args, int n_args);
static void admin_cmd_quit(struct admin_conn *c, const struct admin_tok *args, int n_args);
static void admin_cmd_reload(struct admin_conn *c, const struct admin_tok *args, int n_args);

/* The commands, in the order `help` lists them. */
static const struct admin_cmd admin_cmds[] = {
        {"help", "help", 0, 0, true, admin_cmd_help},
        {"health", "health [live|ready]", 0, 1, true, admin_cmd_health},
        {"stats", "stats", 0, 0, true, admin_cmd_stats},
        {"clients", "clients", 0, 0, false, admin_cmd_clients},
        {"backends", "backends", 0, 0, false, admin_cmd_backends},
        {"config", "config", 0, 0, false, admin_cmd_config},
        {"metrics", "metrics", 0, 0, true, admin_cmd_metrics},
        {"reload", "reload", 0, 0, false, admin_cmd_reload},
        {"flush", "flush NAMESPACE", 1, 1, false, admin_cmd_flush},
        {"reset-stats", "reset-stats", 0, 0, false, admin_cmd_reset_stats},
        {"loglevel", "loglevel debug|info|warn|error", 1, 1, false, admin_cmd_loglevel},
        {"quit", "quit", 0, 0, true, admin_cmd_quit},
};

static void
admin_cmd_help(struct admin_conn *c, const struct admin_tok *args, int n_args)
{
        char line[768];
        size_t j = 0;
        bool first = true;

        j += (size_t)snprintf(line, sizeof(line), "commands:");
        for (size_t i = 0; i < ARRAY_SIZE(admin_cmds) && j < sizeof(line); i++) {
                if (c->is_tcp && !admin_cmds[i].tcp_ok)
                        continue;
                j += (size_t)snprintf(line + j, sizeof(line) - j, "%s %s", first ? "" : ",",
                                      admin_cmds[i].usage);
                first = false;
        }
        admin_reply(c, "%s; %s answer%s several lines, then a line \".\"", line,
                    c->is_tcp ? "metrics" : "config and metrics", c->is_tcp ? "s" : "");
}

/*
 * live: the process runs its loop (this answer proves it). ready: kcached
 * would serve a request now: the client socket is open, not draining, and
 * the backend says how healthy the Redis side is. With [health] fail_open,
 * no reachable Redis is only degraded: the application runs without cache.
 * 0 ok, 1 degraded, 2 down; the reason in why.
 */
static int
admin_health_ready(struct admin *adm, char *why, size_t whylen)
{
        struct server *srv = adm->srv;
        int r;

        if (srv->is_draining) {
                snprintf(why, whylen, "draining");
                return 2;
        }
        if (!srv->is_listening) {
                snprintf(why, whylen, "starting");
                return 2;
        }
        why[0] = '\0';
        r = backend_health(srv->be, why, whylen);
        why[whylen - 1] = '\0';
        admin_one_line(why);
        if (why[0] == '\0')
                snprintf(why, whylen, "unknown");
        if (r >= 2 && srv->cfg->fail_open)
                return 1;
        return r < 0 ? 2 : r > 2 ? 2 : r;
}

static void
admin_cmd_health(struct admin_conn *c, const struct admin_tok *args, int n_args)
{
        char why[256];

        if (n_args == 1 && admin_tok_is(&args[0], "live")) {
                admin_reply(c, "ok");
                return;
        }
        if (n_args == 1 && !admin_tok_is(&args[0], "ready")) {
                admin_reply(c, "error: usage: health [live|ready]");
                return;
        }
        switch (admin_health_ready(c->adm, why, sizeof(why))) {
        case 0:
                admin_reply(c, "ok");
                break;
        case 1:
                admin_reply(c, "degraded: %s", why);
                break;
        default:
                admin_reply(c, "down: %s", why);
                break;
        }
}

static void
admin_write_stats(struct admin_conn *c, struct json *j)
{
        struct server *srv = c->adm->srv;

        json_obj_begin(j);
        stats_write_json_members(j, ev_now(srv->loop) - srv->started);
        json_key(j, "cache");
        cache_write_json(j);
        json_obj_end(j);
}

static void
admin_cmd_stats(struct admin_conn *c, const struct admin_tok *args, int n_args)
{
        admin_reply_json(c, admin_write_stats);
}

static void
admin_write_clients(struct admin_conn *c, struct json *j)
{
        struct server *srv = c->adm->srv;
        ev_tstamp now = ev_now(srv->loop);
        unsigned n = 0;

        json_obj_begin(j);
        json_key(j, "n_clients");
        json_uint(j, srv->n_clients);
        json_key(j, "clients");
        json_arr_begin(j);
        for (const struct conn *k = srv->conns; k != NULL && n < ADMIN_CLIENTS_MAX;
             k = k->next, n++) {
                json_obj_begin(j);
                json_key(j, "id");
                json_uint(j, k->id);
                json_key(j, "pid");
                if (k->has_cred)
                        json_int(j, k->pid);
                else
                        json_null(j);
                json_key(j, "uid");
                if (k->has_cred)
                        json_uint(j, k->uid);
                else
                        json_null(j);
                json_key(j, "gid");
                if (k->has_cred)
                        json_uint(j, k->gid);
                else
                        json_null(j);
                json_key(j, "age_s");
                json_double(j, now - k->accepted);
                json_key(j, "requests");
                json_uint(j, k->n_requests);
                json_key(j, "inflight");
                json_uint(j, k->n_inflight);
                json_key(j, "in_bytes");
                json_uint(j, buf_size(&k->in));
                json_key(j, "out_bytes");
                json_uint(j, buf_size(&k->out));
                json_key(j, "throttled");
                json_bool(j, k->is_throttled);
                json_key(j, "closing");
                json_bool(j, k->is_closing);
                json_obj_end(j);
        }
        json_arr_end(j);
        json_key(j, "truncated");
        json_bool(j, n < srv->n_clients);
        json_obj_end(j);
}

static void
admin_cmd_clients(struct admin_conn *c, const struct admin_tok *args, int n_args)
{
        admin_reply_json(c, admin_write_clients);
}

static void
admin_write_backends(struct admin_conn *c, struct json *j)
{
        backend_write_json(c->adm->srv->be, j);
}

static void
admin_cmd_backends(struct admin_conn *c, const struct admin_tok *args, int n_args)
{
        admin_reply_json(c, admin_write_backends);
}

/* config_dump() writes to a FILE: give it memory, then copy. */
static int
admin_write_config(struct admin_conn *c, struct buf *body)
{
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        int r = -1;

        if (f == NULL)
                return -1;
        config_dump(c->adm->srv->cfg, f);
        if (fclose(f) == 0 && text != NULL)
                r = buf_append(body, text, len) == 0 ? 0 : -1;
        free(text);
        return r;
}

static void
admin_cmd_config(struct admin_conn *c, const struct admin_tok *args, int n_args)
{
        admin_reply_block(c, admin_write_config);
}

/* --- metrics ------------------------------------------------------------- */

#ifdef CACHE_HAVE_FOREACH_NS
/*
 * Per-namespace cache series: kcache_cache_<counter>_total{namespace="NS"}
 * for the first ADMIN_METRICS_NS namespaces (a scrape stays bounded whatever
 * max_tracked_namespaces allows), and {namespace="_other",tracked="false"}
 * for the rest and those past max_tracked_namespaces: the second label keeps
 * that series distinct from a real namespace called "_other".
 */
struct admin_ns_list {
        struct {
                const char *name; /* ref into cache.c, valid during this call */
                size_t len;
                const struct cache_counters *c;
        } ns[ADMIN_METRICS_NS];
        size_t n;
        struct cache_counters rest;
};

static void
admin_ns_collect(void *priv, const char *name, size_t len, const struct cache_counters *c)
{
        struct admin_ns_list *l = priv;

        if (name != NULL && l->n < ADMIN_METRICS_NS) {
                l->ns[l->n].name = name;
                l->ns[l->n].len = len;
                l->ns[l->n].c = c;
                l->n++;
                return;
        }
#define X(f) l->rest.f += c->f;
        CACHE_COUNTERS(X)
#undef X
}
#endif

static void
admin_write_cache_metrics(struct stats_prom *p)
{
        const struct cache_counters *tot = cache_totals();
        char name[128];
#ifdef CACHE_HAVE_FOREACH_NS
        static struct admin_ns_list l; /* large; the loop is single-threaded */
        char labels[1400];

        memset(&l, 0, sizeof(l));
        cache_foreach_ns(admin_ns_collect, &l);
#endif
        /*
         * One family per counter. The unlabelled sample is the total over
         * every namespace and plain keys; the labelled ones are its parts
         * (plain keys have none), so sum() over the family counts twice:
         * select namespace="" for the total.
         */
#define X(f)                                                                                       \
        snprintf(name, sizeof(name), "kcache_cache_%s_total", #f);                                 \
        stats_prom_family(p, name, "counter",                                                      \
                          "cache counter " #f ": unlabelled the total, with namespace its "        \
                          "share");                                                                \
        stats_prom_u64(p, name, "", tot->f);                                                       \
        ADMIN_NS_SERIES(f)
#ifdef CACHE_HAVE_FOREACH_NS
#define ADMIN_NS_SERIES(f)                                                                         \
        for (size_t i = 0; i < l.n; i++) {                                                         \
                labels[0] = '\0';                                                                  \
                stats_prom_label(labels, sizeof(labels), "namespace", l.ns[i].name, l.ns[i].len);  \
                stats_prom_u64(p, name, labels, l.ns[i].c->f);                                     \
        }                                                                                          \
        stats_prom_u64(p, name, "namespace=\"_other\",tracked=\"false\"", l.rest.f);
#else
#define ADMIN_NS_SERIES(f)
#endif
        CACHE_COUNTERS(X)
#undef ADMIN_NS_SERIES
#undef X
}

static void
admin_write_metrics(struct admin *adm, struct stats_prom *p)
{
        struct server *srv = adm->srv;

        stats_prom_family(p, "kcache_build_info", "gauge", "kcached's version, as a label");
        stats_prom_u64(p, "kcache_build_info", "version=\"" KCACHE_VERSION "\"", 1);
        stats_write_metrics(p, ev_now(srv->loop) - srv->started);
        admin_write_cache_metrics(p);
        backend_write_metrics(srv->be, p);
        stats_prom_family(p, "kcache_admin_connections", "gauge",
                          "admin connections open now, by listener");
        stats_prom_u64(p, "kcache_admin_connections", "listener=\"unix\"", adm->n_conns);
        stats_prom_u64(p, "kcache_admin_connections", "listener=\"tcp\"", adm->n_tcp);
}

static int
admin_metrics_body(struct admin_conn *c, struct buf *body)
{
        struct stats_prom p;

        stats_prom_init(&p, body);
        admin_write_metrics(c->adm, &p);
        return p.failed ? -1 : 0;
}

static void
admin_cmd_metrics(struct admin_conn *c, const struct admin_tok *args, int n_args)
{
        admin_reply_block(c, admin_metrics_body);
}

/* --- flush and reset-stats ------------------------------------------------ */

/*
 * The flush is answered. From a callback of its own, the conn goes on with
 * its buffered commands; from inside cache_flush_ns() (a completion at
 * once), admin_conn_process() is still running on this line and goes on by
 * itself: resuming here would run the same line again.
 */
static void
admin_flush_done(struct admin_conn *c)
{
        ev_timer_stop(c->adm->loop, &c->flush_timer);
        c->is_busy = false;
        if (!c->is_sending)
                admin_conn_resume(c);
}

static void
admin_on_flush_reply(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct admin_conn *c = priv;
        const char *why = NULL;
        char who[96];
        int64_t g = 0;

        if (!c->is_busy || c->is_dead)
                return; /* cannot happen: closing cancels the call */
        if (cache_flush_result(reply, err, &g, &why) == 0) {
                log_info("admin", "flush", "admin: %s: namespace flushed, generation %lld",
                         admin_peer(c, who, sizeof(who)), (long long)g);
                admin_reply(c, "ok generation=%lld", (long long)g);
        } else {
                log_warn("admin", "flush_failed", "admin: %s: flush: %s",
                         admin_peer(c, who, sizeof(who)), why);
                admin_reply(c, "error: %s", why);
        }
        admin_flush_done(c);
}

static void
admin_conn_on_flush_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct admin_conn *c = admin_conn_of(w, flush_timer);
        char who[96];

        backend_call_cancel(&c->flush_call);
        log_warn("admin", "flush_failed", "admin: %s: flush: no answer from Redis within %d ms",
                 admin_peer(c, who, sizeof(who)), c->adm->srv->cfg->command_timeout_ms);
        admin_reply(c,
                    "error: no answer from Redis within command_timeout_ms (%d ms); the "
                    "generation may or may not have moved",
                    c->adm->srv->cfg->command_timeout_ms);
        admin_flush_done(c);
}

static void
admin_cmd_flush(struct admin_conn *c, const struct admin_tok *args, int n_args)
{
        char esc[4 * ADMIN_ECHO_MAX + 4], who[96];
        const char *why = NULL;
        int r;

        admin_escape(&args[0], esc, sizeof(esc));
        log_info("admin", "flush", "admin: %s: flush namespace '%s'",
                 admin_peer(c, who, sizeof(who)), esc);
        /* Busy before the call: should the completion come at once, it finds us ready. */
        c->is_busy = true;
        c->is_sending = true;
        r = cache_flush_ns(args[0].p, args[0].n, &c->flush_call, admin_on_flush_reply, c, &why);
        c->is_sending = false;
        if (r < 0) {
                c->is_busy = false;
                admin_reply(c, "error: %s", why != NULL ? why : "cannot send");
                return;
        }
        if (!c->is_busy)
                return; /* answered already */
        ev_io_stop(c->adm->loop, &c->rio);
        ev_timer_set(&c->flush_timer, c->adm->srv->cfg->command_timeout_ms / 1000.0 + 0.05, 0.);
        ev_timer_start(c->adm->loop, &c->flush_timer);
}

static void
admin_cmd_reset_stats(struct admin_conn *c, const struct admin_tok *args, int n_args)
{
        char who[96];

        stats_reset();
        cache_reset_counters();
        log_info("admin", "reset_stats", "admin: %s: counters and latency histograms reset",
                 admin_peer(c, who, sizeof(who)));
        admin_reply(c, "ok");
}

static void
admin_cmd_loglevel(struct admin_conn *c, const struct admin_tok *args, int n_args)
{
        for (int level = LOG_DEBUG; level <= LOG_ERROR; level++) {
                if (!admin_tok_is(&args[0], log_level_name(level)))
                        continue;
                /* Logged before the change so that raising the level still leaves a trace. */
                log_info("admin", "loglevel", "admin: log level %s -> %s",
                         log_level_name(log_level_current), log_level_name(level));
                log_set_level(level);
                admin_reply(c, "ok");
                return;
        }
        admin_reply(c, "error: unknown level");
}

/* `ok <summary>` or `error: <why>` (the running configuration then stays). */
static void
admin_cmd_reload(struct admin_conn *c, const struct admin_tok *args, int n_args)
{
        char msg[1100];

        if (server_reload(c->adm->srv, msg, sizeof(msg)) < 0)
                admin_reply(c, "error: %s", msg);
        else
                admin_reply(c, "ok %s", msg);
}

static void admin_conn_close_after_flush(struct admin_conn *c);

static void
admin_cmd_quit(struct admin_conn *c, const struct admin_tok *args, int n_args)
{
        admin_conn_close_after_flush(c);
}

/* --- HTTP on the TCP listener --------------------------------------------------- */

/* One HTTP/1.0 response with a body, then close. */
static void
admin_http_reply(struct admin_conn *c, int status, const char *reason, const char *type,
                 const void *body, size_t len)
{
        size_t start = c->out.len;
        char head[256];
        int n = snprintf(head, sizeof(head),
                         "HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                         "Connection: close\r\n\r\n",
                         status, reason, type, len);

        if (buf_append(&c->out, head, (size_t)n) < 0 ||
            (!c->http_is_head && buf_append(&c->out, body, len) < 0))
                c->out.len = start; /* out of memory: close without an answer */
        admin_conn_mark_dirty(c);
        admin_conn_close_after_flush(c);
}

static void
admin_http_text(struct admin_conn *c, int status, const char *reason, const char *text)
{
        admin_http_reply(c, status, reason, "text/plain; charset=utf-8", text, strlen(text));
}

/* The blank line after the headers: answer what the request line asked. */
static void
admin_http_answer(struct admin_conn *c)
{
        const char *t = c->http_target;
        struct buf body = BUF_INIT;
        char why[256], text[300];
        int r;

        if (strcmp(t, "/metrics") == 0) {
                struct stats_prom p;
                stats_prom_init(&p, &body);
                admin_write_metrics(c->adm, &p);
                if (p.failed)
                        admin_http_text(c, 500, "Internal Server Error", "out of memory\n");
                else
                        admin_http_reply(c, 200, "OK", "text/plain; version=0.0.4; charset=utf-8",
                                         buf_head(&body), buf_size(&body));
        } else if (strcmp(t, "/stats") == 0) {
                struct json j;
                json_init(&j, &body);
                admin_write_stats(c, &j);
                if (j.failed || buf_append(&body, "\n", 1) < 0)
                        admin_http_text(c, 500, "Internal Server Error", "out of memory\n");
                else
                        admin_http_reply(c, 200, "OK", "application/json", buf_head(&body),
                                         buf_size(&body));
        } else if (strcmp(t, "/health") == 0 || strcmp(t, "/health/live") == 0) {
                admin_http_text(c, 200, "OK", "ok\n");
        } else if (strcmp(t, "/health/ready") == 0) {
                /* Degraded still serves: 200, so a probe does not restart a working pod. */
                r = admin_health_ready(c->adm, why, sizeof(why));
                snprintf(text, sizeof(text), "%s: %s\n", r == 1 ? "degraded" : "down", why);
                if (r == 0)
                        admin_http_text(c, 200, "OK", "ok\n");
                else if (r == 1)
                        admin_http_text(c, 200, "OK", text);
                else
                        admin_http_text(c, 503, "Service Unavailable", text);
        } else {
                admin_http_text(c, 404, "Not Found",
                                "not found; try /metrics, /stats, /health/live or /health/ready\n");
        }
        buf_deinit(&body);
}

/*
 * A TCP line in HTTP mode, or the first one if it is an HTTP request line
 * ("GET /metrics HTTP/1.1"). true if it was HTTP's.
 */
static bool
admin_http_line(struct admin_conn *c, const char *line, size_t len)
{
        const char *sp1, *sp2;
        size_t n;

        if (c->http == ADMIN_HTTP_HEADERS) {
                if (len == 0)
                        admin_http_answer(c);
                return true; /* a header: nothing here needs one */
        }
        sp1 = memchr(line, ' ', len);
        sp2 = sp1 != NULL ? memchr(sp1 + 1, ' ', len - (size_t)(sp1 + 1 - line)) : NULL;
        if (sp2 == NULL || (size_t)(line + len - sp2) != 9 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0)
                return false;
        c->http = ADMIN_HTTP_HEADERS;
        bool is_get = (size_t)(sp1 - line) == 3 && memcmp(line, "GET", 3) == 0;
        c->http_is_head = (size_t)(sp1 - line) == 4 && memcmp(line, "HEAD", 4) == 0;
        n = (size_t)(sp2 - sp1 - 1);
        if (n >= sizeof(c->http_target))
                n = sizeof(c->http_target) - 1;
        memcpy(c->http_target, sp1 + 1, n);
        c->http_target[n] = '\0';
        c->http_target[strcspn(c->http_target, "?")] = '\0'; /* a query string changes nothing */
        if (!is_get && !c->http_is_head)
                admin_http_text(c, 405, "Method Not Allowed", "only GET\n");
        return true;
}

/* --- line handling --------------------------------------------------------- */

/* One line, without its "\n"; len may exceed ADMIN_LINE_MAX (then it is refused). */
static void
admin_conn_line(struct admin_conn *c, const char *line, size_t len)
{
        struct admin_tok tok[ADMIN_MAX_ARGS + 2];
        size_t i = 0;
        int n = 0;

        if (len > 0 && line[len - 1] == '\r')
                len--;
        if (len > ADMIN_LINE_MAX) {
                admin_reply(c, "error: line too long");
                return;
        }
        if (c->is_tcp && (!c->has_lines || c->http != ADMIN_HTTP_NONE) &&
            admin_http_line(c, line, len))
                return;
        c->has_lines = true;
        while (i < len && n < (int)ARRAY_SIZE(tok)) {
                while (i < len && (line[i] == ' ' || line[i] == '\t'))
                        i++;
                if (i == len)
                        break;
                tok[n].p = line + i;
                while (i < len && line[i] != ' ' && line[i] != '\t')
                        i++;
                tok[n].n = (size_t)(line + i - tok[n].p);
                n++;
        }
        if (n == 0)
                return; /* empty line: nothing to answer */
        for (size_t k = 0; k < ARRAY_SIZE(admin_cmds); k++) {
                const struct admin_cmd *cmd = &admin_cmds[k];
                if (!admin_tok_is(&tok[0], cmd->name))
                        continue;
                if (c->is_tcp && !cmd->tcp_ok)
                        break;
                if (n - 1 < cmd->min_args || n - 1 > cmd->max_args) {
                        admin_reply(c, "error: usage: %s", cmd->usage);
                        return;
                }
                log_debug("admin", "command", "admin: client %llu: %s", (unsigned long long)c->id,
                          cmd->name);
                cmd->fn(c, tok + 1, n - 1);
                return;
        }
        if (c->is_tcp) {
                /* Known or not, the TCP listener names only what it serves (help). */
                admin_reply(c, "error: not allowed on the TCP listener");
                return;
        }
        char esc[4 * ADMIN_ECHO_MAX + 4];
        admin_escape(&tok[0], esc, sizeof(esc));
        admin_reply(c, "error: unknown command '%s'", esc);
}

/* --- connections -------------------------------------------------------- */

static void
admin_conn_close(struct admin_conn *c, const char *why)
{
        struct admin *adm = c->adm;

        if (c->is_dead)
                return;
        log_debug("admin", "close", "admin: client %llu: %s", (unsigned long long)c->id, why);
        c->is_dead = true;
        /* A flush in flight is forgotten: its completion must not find this conn. */
        backend_call_cancel(&c->flush_call);
        ev_timer_stop(adm->loop, &c->flush_timer);
        ev_io_stop(adm->loop, &c->rio);
        ev_io_stop(adm->loop, &c->wio);
        ev_timer_stop(adm->loop, &c->close_timer);
        ev_timer_stop(adm->loop, &c->idle_timer);
        close(c->fd);
        c->fd = -1;
        if (c->prev != NULL)
                c->prev->next = c->next;
        else
                adm->conns = c->next;
        if (c->next != NULL)
                c->next->prev = c->prev;
        c->prev = NULL;
        c->next = adm->dead;
        adm->dead = c;
        if (c->is_tcp)
                adm->n_tcp--;
        else
                adm->n_conns--;
}

static struct admin_conn *
admin_conn_free(struct admin_conn *c)
{
        if (c == NULL)
                return NULL;
        buf_deinit(&c->out);
        free(c);
        return NULL;
}

static void
admin_conn_close_after_flush(struct admin_conn *c)
{
        if (c->is_dead || c->is_closing)
                return;
        c->is_closing = true;
        ev_io_stop(c->adm->loop, &c->rio);
        /* A flush in flight still answers; the grace period starts after it. */
        if (!c->is_busy)
                ev_timer_start(c->adm->loop, &c->close_timer);
        admin_conn_mark_dirty(c);
}

static void
admin_conn_on_close_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
        admin_conn_close(admin_conn_of(w, close_timer), "peer did not read its last answers");
}

static void
admin_conn_on_idle_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct admin_conn *c = admin_conn_of(w, idle_timer);

        if (c->is_busy || c->is_closing)
                return;
        admin_conn_close(c, "idle");
}

/* Not paused, not busy any more: run the commands already buffered, then read again. */
static void
admin_conn_resume(struct admin_conn *c)
{
        if (c->is_dead || c->is_paused || c->is_busy)
                return;
        if (c->is_closing) {
                if (!ev_is_active(&c->close_timer))
                        ev_timer_start(c->adm->loop, &c->close_timer);
                admin_conn_mark_dirty(c);
                return;
        }
        admin_conn_process(c);
        if (!c->is_dead && !c->is_paused && !c->is_busy && !c->is_closing)
                ev_io_start(c->adm->loop, &c->rio);
}

/* Writes out; 0, or -1 if the connection was closed. */
static int
admin_conn_flush(struct admin_conn *c)
{
        if (c->is_dead)
                return -1;
        while (buf_size(&c->out) > 0) {
                ssize_t n = send(c->fd, buf_head(&c->out), buf_size(&c->out), MSG_NOSIGNAL);
                if (n == -1) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN) {
                                /* buf only rewinds when emptied: keep a slow reader's
                                 * buffer from creeping forward without bound. */
                                if (c->out.off > buf_size(&c->out))
                                        buf_compact(&c->out);
                                if (buf_size(&c->out) > ADMIN_OUT_MAX) {
                                        admin_conn_close(c, "peer does not read its answers");
                                        return -1;
                                }
                                ev_io_start(c->adm->loop, &c->wio);
                                return 0;
                        }
                        admin_conn_close(c, strerror(errno));
                        return -1;
                }
                buf_consume(&c->out, (size_t)n);
        }
        ev_io_stop(c->adm->loop, &c->wio);
        buf_shrink(&c->out, ADMIN_IDLE_KEEP);
        if (c->is_closing && !c->is_busy) {
                admin_conn_close(c, "closed after its last answer");
                return -1;
        }
        if (c->is_paused) {
                c->is_paused = false;
                admin_conn_resume(c);
        }
        return 0;
}

static void
admin_conn_on_write(struct ev_loop *loop, ev_io *w, int revents)
{
        (void)admin_conn_flush(admin_conn_of(w, wio));
}

/*
 * Runs every complete line in in[], unless answers pile up (then pauses with
 * the rest kept in in[]) or a command waits for Redis. Leaves in[] holding
 * the start of an unfinished line; a full in[] without a newline is an
 * over-long line.
 */
static void
admin_conn_process(struct admin_conn *c)
{
        size_t pos = 0;

        while (!c->is_dead && !c->is_closing && !c->is_busy && pos < c->in_len) {
                char *start = c->in + pos;
                char *nl = memchr(start, '\n', c->in_len - pos);

                if (buf_size(&c->out) >= ADMIN_OUT_PAUSE) {
                        c->is_paused = true;
                        ev_io_stop(c->adm->loop, &c->rio);
                        break;
                }
                if (c->is_discarding) {
                        if (nl == NULL) {
                                pos = c->in_len;
                                break;
                        }
                        c->is_discarding = false;
                        pos = (size_t)(nl - c->in) + 1;
                        continue;
                }
                if (nl == NULL) {
                        if (pos == 0 && c->in_len == sizeof(c->in)) {
                                /* Cannot be a line we accept: answer now, drop the rest. */
                                admin_reply(c, "error: line too long");
                                c->is_discarding = true;
                                pos = c->in_len;
                        }
                        break;
                }
                admin_conn_line(c, start, (size_t)(nl - start));
                pos = (size_t)(nl - c->in) + 1;
        }
        if (c->is_dead)
                return;
        if (c->is_closing) {
                c->in_len = 0; /* quit: whatever followed it is not run */
                return;
        }
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
}

static void
admin_conn_on_read(struct ev_loop *loop, ev_io *w, int revents)
{
        struct admin_conn *c = admin_conn_of(w, rio);
        ssize_t n;

        if (c->in_len == sizeof(c->in)) {
                /* Not expected (process leaves room), but recv(0) would read as EOF. */
                admin_conn_process(c);
                return;
        }
        n = recv(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len, 0);
        if (n == 0) {
                /* `printf stats | socat ...`: a last line without "\n" still counts. */
                if (c->in_len > 0 && !c->is_discarding)
                        admin_conn_line(c, c->in, c->in_len);
                c->in_len = 0;
                admin_conn_close_after_flush(c);
                return;
        }
        if (n == -1) {
                if (errno == EAGAIN || errno == EINTR)
                        return;
                admin_conn_close(c, strerror(errno));
                return;
        }
        if (c->is_tcp)
                ev_timer_again(loop, &c->idle_timer);
        c->in_len += (size_t)n;
        admin_conn_process(c);
}

/*
 * Whether a Unix peer may use the socket: root and kcached's own user always
 * (either could read kcached's memory anyway), then allowed_uids, then the
 * peer's primary group in allowed_gids. 0, or -1 with the reason in why.
 */
static int
admin_check_peer(struct admin *adm, int fd, int32_t *pid, uint32_t *uid, char *why, size_t whylen)
{
        const struct config *cfg = adm->srv->cfg;
        struct ucred cred;
        socklen_t len = sizeof(cred);

        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1 || len != sizeof(cred)) {
                snprintf(why, whylen, "peer credentials unknown (%s)", strerror(errno));
                return -1;
        }
        *pid = (int32_t)cred.pid;
        *uid = (uint32_t)cred.uid;
        if (cred.uid == 0 || cred.uid == geteuid())
                return 0;
        for (int i = 0; i < cfg->n_admin_uids; i++) {
                if ((uint32_t)cred.uid == cfg->admin_uids[i])
                        return 0;
        }
        for (int i = 0; i < cfg->n_admin_gids; i++) {
                if ((uint32_t)cred.gid == cfg->admin_gids[i])
                        return 0;
        }
        snprintf(why, whylen,
                 "pid %ld uid %lu gid %lu: not root, not kcached's user, not in [admin] "
                 "allowed_uids or allowed_gids",
                 (long)cred.pid, (unsigned long)cred.uid, (unsigned long)cred.gid);
        return -1;
}

static void
admin_accept_one(struct admin *adm, int fd, bool is_tcp)
{
        struct admin_conn *c;
        int32_t pid = 0;
        uint32_t uid = 0;
        char why[256];
        unsigned *n = is_tcp ? &adm->n_tcp : &adm->n_conns;

        /* Credentials first: a refused peer learns nothing, not even "too many". */
        if (!is_tcp && admin_check_peer(adm, fd, &pid, &uid, why, sizeof(why)) < 0) {
                stats.admin_refused++;
                close(fd);
                if (log_ratelimit(&admin_refuse_limit, 5))
                        log_warn("admin", "refused", "admin: refused a connection: %s", why);
                return;
        }
        if (*n >= ADMIN_MAX_CONNS) {
                static const char msg[] = "error: too many admin connections\n";
                /* A fresh socket's buffer is empty: this short write does not block. */
                (void)send(fd, msg, sizeof(msg) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
                close(fd);
                if (log_ratelimit(&admin_log_limit, 5))
                        log_warn("admin", "too_many", "admin: refused a %s connection: %u open",
                                 is_tcp ? "TCP" : "Unix", *n);
                return;
        }
        c = calloc(1, sizeof(*c));
        if (c == NULL) {
                close(fd);
                return;
        }
        c->adm = adm;
        c->fd = fd;
        c->id = ++adm->next_id;
        c->is_tcp = is_tcp;
        c->pid = pid;
        c->uid = uid;
        buf_init(&c->out);
        bcall_init(&c->flush_call);
        ev_io_init(&c->rio, admin_conn_on_read, fd, EV_READ);
        ev_io_init(&c->wio, admin_conn_on_write, fd, EV_WRITE);
        ev_timer_init(&c->close_timer, admin_conn_on_close_timer, ADMIN_CLOSE_WAIT, 0.);
        ev_timer_init(&c->idle_timer, admin_conn_on_idle_timer, 0., ADMIN_TCP_IDLE);
        ev_timer_init(&c->flush_timer, admin_conn_on_flush_timer, 0., 0.);
        ev_io_start(adm->loop, &c->rio);
        if (is_tcp)
                ev_timer_again(adm->loop, &c->idle_timer);
        c->next = adm->conns;
        if (adm->conns != NULL)
                adm->conns->prev = c;
        adm->conns = c;
        (*n)++;
        if (is_tcp)
                log_debug("admin", "accept", "admin: tcp client %llu connected",
                          (unsigned long long)c->id);
        else
                log_debug("admin", "accept", "admin: client %llu connected (pid %ld, uid %lu)",
                          (unsigned long long)c->id, (long)c->pid, (unsigned long)c->uid);
}

static void
admin_accept(struct admin *adm, int lfd, bool is_tcp)
{
        for (int i = 0; i < ADMIN_ACCEPT_BATCH; i++) {
                int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd == -1) {
                        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED &&
                            log_ratelimit(&admin_log_limit, 5))
                                log_warn("admin", "accept", "admin: accept: %s", strerror(errno));
                        return;
                }
                admin_accept_one(adm, fd, is_tcp);
        }
}

static void
admin_on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
        struct admin *adm = admin_of(w, lio);

        admin_accept(adm, adm->lfd, false);
}

static void
admin_on_accept_tcp(struct ev_loop *loop, ev_io *w, int revents)
{
        struct admin *adm = admin_of(w, tio);

        admin_accept(adm, adm->tfd, true);
}

/* Once per loop iteration, before blocking: write answers, free closed conns. */
static void
admin_on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
        struct admin *adm = admin_of(w, flush);

        /* A flush can unpause a conn and run its buffered commands: repeat until written. */
        while (adm->has_dirty) {
                struct admin_conn *c, *next;
                adm->has_dirty = false;
                for (c = adm->conns; c != NULL; c = next) {
                        next = c->next;
                        /* A conn waiting for EV_WRITE is flushed by that watcher. */
                        if ((buf_size(&c->out) > 0 || c->is_closing) && !ev_is_active(&c->wio))
                                (void)admin_conn_flush(c);
                }
        }
        while (adm->dead != NULL) {
                struct admin_conn *c = adm->dead;
                adm->dead = c->next;
                admin_conn_free(c);
        }
}

/* --- lifecycle ---------------------------------------------------------- */

/* The TCP listener on [admin] listen: a non-blocking socket, or -1 with err. */
static int
admin_listen_tcp(const struct config_addr *a, char *err, size_t errlen)
{
        struct sockaddr_storage ss = {0};
        socklen_t sslen;
        const char *what = "socket";
        char name[CONFIG_HOST_MAX + 16];
        int fd = -1, one = 1;

        config_addr_str(a, name, sizeof(name));
        if (strchr(a->host, ':') != NULL) {
                struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
                s6->sin6_family = AF_INET6;
                s6->sin6_port = htons((uint16_t)a->port);
                if (inet_pton(AF_INET6, a->host, &s6->sin6_addr) != 1)
                        goto bad_addr;
                sslen = sizeof(*s6);
        } else {
                struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
                s4->sin_family = AF_INET;
                s4->sin_port = htons((uint16_t)a->port);
                if (inet_pton(AF_INET, a->host, &s4->sin_addr) != 1)
                        goto bad_addr;
                sslen = sizeof(*s4);
        }
        fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd == -1)
                goto fail;
        /* A restart must not wait for the last run's TIME_WAIT connections. */
        (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        what = "bind";
        if (bind(fd, (struct sockaddr *)&ss, sslen) == -1)
                goto fail;
        what = "listen";
        if (listen(fd, 64) == -1)
                goto fail;
        return fd;
bad_addr:
        snprintf(err, errlen, "admin listen %s: not an IP address", name);
        return -1;
fail:
        snprintf(err, errlen, "admin listen %s: %s: %s", name, what, strerror(errno));
        if (fd != -1)
                close(fd);
        return -1;
}

int
admin_new(struct admin **out, struct server *srv, char *err, size_t errlen)
{
        const struct config *cfg = srv->cfg;
        bool has_unix = cfg->admin_socket != NULL && cfg->admin_socket[0] != '\0';
        struct admin *adm;

        if (!has_unix && !cfg->has_admin_listen) {
                *out = NULL;
                return 0;
        }
        if (has_unix &&
            strlen(cfg->admin_socket) >= sizeof(((struct sockaddr_un *)NULL)->sun_path)) {
                snprintf(err, errlen, "admin socket %s: path too long", cfg->admin_socket);
                return -1;
        }
        if (has_unix && strcmp(cfg->admin_socket, cfg->socket) == 0) {
                snprintf(err, errlen, "admin socket %s: must differ from [server] socket",
                         cfg->admin_socket);
                return -1;
        }
        adm = calloc(1, sizeof(*adm));
        if (adm == NULL || (has_unix && (adm->path = strdup(cfg->admin_socket)) == NULL)) {
                free(adm);
                snprintf(err, errlen, "out of memory");
                return -1;
        }
        adm->srv = srv;
        adm->loop = srv->loop;
        adm->lfd = -1;
        adm->tfd = -1;
        if (has_unix) {
                if (server_prepare_path(adm->path, err, errlen) < 0)
                        goto fail;
                adm->lfd = server_bind_unix(adm->path, cfg->admin_socket_mode, err, errlen);
                if (adm->lfd == -1)
                        goto fail;
                /* Still 0600-or-tighter until here, so nobody got in under the old group. */
                if (cfg->has_admin_gid &&
                    chown(adm->path, (uid_t)-1, (gid_t)cfg->admin_gid) == -1) {
                        snprintf(err, errlen, "admin socket %s: chown to group %s: %s", adm->path,
                                 cfg->admin_socket_group, strerror(errno));
                        goto fail;
                }
        }
        if (cfg->has_admin_listen) {
                adm->tfd = admin_listen_tcp(&cfg->admin_listen_addr, err, errlen);
                if (adm->tfd == -1)
                        goto fail;
        }
        ev_prepare_init(&adm->flush, admin_on_prepare);
        ev_prepare_start(adm->loop, &adm->flush);
        if (adm->lfd != -1) {
                ev_io_init(&adm->lio, admin_on_accept, adm->lfd, EV_READ);
                ev_io_start(adm->loop, &adm->lio);
                log_info("admin", "listening", "admin: listening on %s", adm->path);
        }
        if (adm->tfd != -1) {
                char name[CONFIG_HOST_MAX + 16];
                ev_io_init(&adm->tio, admin_on_accept_tcp, adm->tfd, EV_READ);
                ev_io_start(adm->loop, &adm->tio);
                log_info("admin", "listening",
                         "admin: listening on tcp %s (metrics, health, stats only)",
                         config_addr_str(&cfg->admin_listen_addr, name, sizeof(name)));
        }
        *out = adm;
        return 0;
fail:
        if (adm->lfd != -1) {
                close(adm->lfd);
                unlink(adm->path);
        }
        free(adm->path);
        free(adm);
        return -1;
}

struct admin *
admin_free(struct admin *adm)
{
        if (adm == NULL)
                return NULL;
        while (adm->conns != NULL)
                admin_conn_close(adm->conns, "shutting down");
        while (adm->dead != NULL) {
                struct admin_conn *c = adm->dead;
                adm->dead = c->next;
                admin_conn_free(c);
        }
        ev_prepare_stop(adm->loop, &adm->flush);
        if (adm->lfd != -1) {
                ev_io_stop(adm->loop, &adm->lio);
                close(adm->lfd);
                unlink(adm->path);
        }
        if (adm->tfd != -1) {
                ev_io_stop(adm->loop, &adm->tio);
                close(adm->tfd);
        }
        free(adm->path);
        free(adm);
        return NULL;
}
